# Ambit: see README.md. `make test` and `make demo` install what they need.
GO        ?= go
BIN       ?= bin
GOFLAGS   ?=
TEST_TIMEOUT ?= 40m
# The end-to-end suites, which `make test` runs a second time on the standard-library data
# path (ztunnel -datapath std: crypto/tls records, net package sockets).
E2E_PKGS  = ./tests/e2e/... ./tests/kubee2e/... ./tests/spiree2e/...

.PHONY: all build generate test test-unit demo lint deps tools clean bench bench-smoke bench-kube

all: build

deps:
	@./scripts/install-deps.sh

# kube-apiserver, etcd, helm and SPIRE for the tests on real components, built once from the Go module
# proxy into ${AMBIT_TOOLS_CACHE:-/var/cache/ambit-tools}/v1 (~20 CPU-minutes cold, then cached).
tools:
	@./tests/tools/build.sh kube helm spire

build:
	$(GO) build $(GOFLAGS) -o $(BIN)/ ./cmd/...

# Regenerates the eBPF objects (the only target that needs clang).
generate:
	@./scripts/install-deps.sh clang
	$(GO) generate ./redirect/...

# The whole suite, then the end-to-end suites again on the standard-library data path. As
# root (as in CI) the privileged end-to-end tests run in private network namespaces; as
# another user they skip themselves.
test: deps tools
	$(GO) vet ./...
	$(GO) test $(GOFLAGS) -count=1 -timeout $(TEST_TIMEOUT) ./...
	AMBIT_TEST_DATAPATH=std $(GO) test $(GOFLAGS) -count=1 -timeout $(TEST_TIMEOUT) $(E2E_PKGS)

# Unit tests only (no root needed).
test-unit:
	$(GO) test $(GOFLAGS) -count=1 -short ./...

demo: deps build
	@if [ "$$(id -u)" -ne 0 ]; then echo "make demo needs root (network namespaces and eBPF): run it with sudo" >&2; exit 1; fi
	$(GO) run ./tests/demo -bin $(BIN)

# Ambit against direct TCP, socat, ghostunnel, stunnel and Istio's Go HBONE, and the waypoint
# against nginx, haproxy and Go's httputil.ReverseProxy (L7), in the same run
# (root, ~19 min). Results: $(BIN)/bench.{json,svg,md}; see docs/performance.md.
bench: build
	@if [ "$$(id -u)" -ne 0 ]; then echo "make bench needs root (network namespaces and eBPF): run it with sudo" >&2; exit 1; fi
	@./scripts/install-deps.sh bench
	@./tests/tools/build.sh
	$(GO) run ./tests/bench -bin $(BIN) -json $(BIN)/bench.json -svg $(BIN)/bench.svg -md $(BIN)/bench.md

# One short repetition per path, so CI keeps the harness working (< 2 min once peers are built).
bench-smoke: build
	@if [ "$$(id -u)" -ne 0 ]; then echo "make bench-smoke needs root: run it with sudo" >&2; exit 1; fi
	@./scripts/install-deps.sh bench
	@./tests/tools/build.sh
	$(GO) run ./tests/bench -bin $(BIN) -smoke -json $(BIN)/bench-smoke.json

# Kubernetes scale budget: 10,000 pods and 1,000 services in a real API server; ztunnel's
# time to sync and memory (root, ~2 min once the API server is built).
bench-kube: build tools
	@if [ "$$(id -u)" -ne 0 ]; then echo "make bench-kube needs root: run it with sudo" >&2; exit 1; fi
	$(GO) run ./tests/kubescale -bin $(BIN)

lint:
	@out="$$(gofmt -l $$(git ls-files '*.go'))"; if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf $(BIN)
