#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian machine. Idempotent: it only
# calls apt-get when a tool is missing. Pass "clang" to also install the eBPF toolchain
# (needed only to regenerate redirect/'s committed objects).
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip || need+=(iproute2)
have tcpdump || need+=(tcpdump)
have nsenter || need+=(util-linux)
have nft || need+=(nftables) # the resilience tests partition a pod
if [[ "${1:-}" == "clang" ]]; then
  have clang || need+=(clang)
  have llvm-strip || need+=(llvm)
  [[ -f /usr/include/bpf/bpf_helpers.h ]] || need+=(libbpf-dev)
fi
if [[ "${1:-}" == "bench" ]]; then
  have iperf3 || need+=(iperf3)
  have socat || need+=(socat)
  have stunnel4 || need+=(stunnel4)
  # The L7 benchmark's hops (tests/bench -tests l7); both live in /usr/sbin.
  have nginx || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
  have haproxy || [[ -x /usr/sbin/haproxy ]] || need+=(haproxy)
fi

if ((${#need[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "missing packages: ${need[*]} (run as root, or install them with apt-get)" >&2
  exit 1
fi
echo "installing: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
