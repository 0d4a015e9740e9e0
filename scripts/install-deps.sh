#!/usr/bin/env bash
# Installs what stocklock needs on Debian/Ubuntu and is missing:
#   run:  redis-server (the embedded default and the tests start their own) and protoc
#   test: the same, redis-cli (redis-tools) to make the test clusters, and
#         promtool (Debian's prometheus package) for the alert rules
# Rust itself comes from rustup. Safe to run again.
set -euo pipefail

purpose="${1:-run}"
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
if [ "$purpose" = test ]; then
  command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
echo "installing: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
