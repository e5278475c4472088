#!/usr/bin/env bash
# Builds the Go test tools, each from its own scratch module here (so none of them enters
# Ambit's go.mod), once, into a versioned cache outside the repository:
#   ${AMBIT_TOOLS_CACHE:-/var/cache/ambit-tools}/v1/<name>                  benchmark peers
#   ${AMBIT_TOOLS_CACHE:-/var/cache/ambit-tools}/v1/kube-1.37.2/kube-apiserver
#   ${AMBIT_TOOLS_CACHE:-/var/cache/ambit-tools}/v1/kube-1.37.2/etcd        (v3.7.3)
#   ${AMBIT_TOOLS_CACHE:-/var/cache/ambit-tools}/v1/helm-v3.22.0/helm
#   ${AMBIT_TOOLS_CACHE:-/var/cache/ambit-tools}/v1/spire-1.13.3/{spire-server,spire-agent}
#   ${AMBIT_TOOLS_CACHE:-/var/cache/ambit-tools}/v1/istio-echo/{server,client}   (waypoint backends)
# Usage: tests/tools/build.sh [fortio] [ghostunnel] [istio-hbone] [gorelay] [goreverseproxy] [kube] [helm] [spire] [istio-echo]
#   (no argument: the five benchmark peers; kube and spire cost ~20 CPU-minutes cold each,
#   so ask for them).
# A tool already in the cache is skipped; concurrent runs serialise on a lock per tool, so
# parallel test packages may all call this. Bump v1 (or the versions) when a version changes.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${AMBIT_TOOLS_CACHE:-/var/cache/ambit-tools}/v1"
mkdir -p "$cache"

kube_version=1.37.2   # must match kube/apiserver/go.mod (k8s.io/kubernetes v1.37.2)
helm_version=v3.22.0  # must match helm/go.mod (helm.sh/helm/v3 v3.22.0)
spire_version=1.13.3  # must match spire/go.mod (github.com/spiffe/spire v1.13.3)

# build <module dir> <package> <output> [go build flags...]
# -mod=mod: the scratch modules resolve their own dependencies (ghostunnel's vendor tree is
# not used); GOWORK=off keeps any workspace of the checkout out of it. Every tool uses
# -trimpath so they share one Go build cache.
build() {
  local dir="$1" pkg="$2" out="$3"
  shift 3
  if [[ -x "$out" ]]; then
    return
  fi
  mkdir -p "$(dirname "$out")"
  exec 9>"$out.lock"
  flock 9
  if [[ ! -x "$out" ]]; then # another run may have built it while we waited
    echo "building $pkg into $out"
    local start=$SECONDS
    (cd "$dir" && GOWORK=off GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath "$@" -o "$out.tmp.$$" "$pkg")
    mv -f "$out.tmp.$$" "$out"
    echo "built $out in $((SECONDS - start))s"
  fi
  exec 9>&-
}

(($# > 0)) || set -- fortio ghostunnel istio-hbone gorelay goreverseproxy
for name in "$@"; do
  case "$name" in
    fortio) build "$here/fortio" fortio.org/fortio "$cache/fortio" ;;                    # v1.66.0, see fortio/go.mod
    ghostunnel) build "$here/ghostunnel" github.com/ghostunnel/ghostunnel "$cache/ghostunnel" ;; # v1.8.4, see ghostunnel/go.mod
    istio-hbone) build "$here/istio-hbone" . "$cache/istio-hbone" ;;                     # tiny main over istio.io/istio/pkg/hbone
    gorelay) build "$here/gorelay" . "$cache/gorelay" ;;                                 # plain TCP relay, no dependencies
    goreverseproxy) build "$here/goreverseproxy" . "$cache/goreverseproxy" ;;            # httputil.ReverseProxy, no dependencies
    kube)
      # Without the version stamps the server reports v0.0.0-master.
      v=k8s.io/component-base/version
      build "$here/kube/apiserver" k8s.io/kubernetes/cmd/kube-apiserver "$cache/kube-$kube_version/kube-apiserver" \
        -ldflags "-s -w -X $v.gitVersion=v$kube_version -X $v.gitMajor=${kube_version%%.*} -X $v.gitMinor=$(cut -d. -f2 <<<"$kube_version") -X $v.gitTreeState=clean"
      build "$here/kube/etcd" go.etcd.io/etcd/server/v3 "$cache/kube-$kube_version/etcd" -ldflags "-s -w"
      ;;
    helm)
      build "$here/helm" helm.sh/helm/v3/cmd/helm "$cache/helm-$helm_version/helm" \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
      ;;
    spire)
      # cgo is required (the server's sqlite datastore; gcc is present). Without the tag stamp,
      # set as upstream's Makefile does, the binaries report 1.13.3-dev-unk.
      v="-s -w -X github.com/spiffe/spire/pkg/common/version.gittag=$spire_version"
      build "$here/spire" github.com/spiffe/spire/cmd/spire-server "$cache/spire-$spire_version/spire-server" -ldflags "$v"
      build "$here/spire" github.com/spiffe/spire/cmd/spire-agent "$cache/spire-$spire_version/spire-agent" -ldflags "$v"
      ;;
    istio-echo) # Istio's echo server and client (istio.io/istio/pkg/test/echo), same Istio as istio-hbone
      build "$here/istio-echo" istio.io/istio/pkg/test/echo/cmd/server "$cache/istio-echo/server" -ldflags "-s -w"
      build "$here/istio-echo" istio.io/istio/pkg/test/echo/cmd/client "$cache/istio-echo/client" -ldflags "-s -w"
      ;;
    *) echo "build.sh: unknown tool $name (want fortio, ghostunnel, istio-hbone, gorelay, goreverseproxy, kube, helm, spire or istio-echo)" >&2; exit 2 ;;
  esac
done
