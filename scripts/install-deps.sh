#!/usr/bin/env bash
# Installs what stocklock needs on Debian/Ubuntu and is missing:
#   run:  redis-server (the embedded default and the tests start their own)
#   test: the same, redis-cli (redis-tools) to make the test clusters,
#         promtool (Debian's prometheus package) for the alert rules,
#         MariaDB (mariadb-server: mariadbd and mariadb-install-db) for the
#         binlog follower's tests, which start their own servers, and
#         python3 with venv for the Kubernetes manifest check and the Python
#         example (its gRPC packages come from PyPI, into a private venv), and
#         Node.js with npm for the contract's linters (buf and Redocly CLI,
#         pinned in scripts/tools, from the npm registry). Redocly needs
#         Node.js 20.19 or later: Debian 12's and Ubuntu 24.04's packaged
#         nodejs (18) is too old, so on those install Node.js 20 or 22 from
#         nodejs.org or NodeSource first; Debian 13 ships 20.19
# Rust itself comes from rustup; the proto is compiled in Rust (protox), so
# no protoc. Safe to run again.
set -euo pipefail

purpose="${1:-run}"
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "$purpose" = test ]; then
  command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
  command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
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
