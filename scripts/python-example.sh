#!/usr/bin/env bash
# Runs examples/python/checkout.py against a real service: a redis-server and
# the stocklock binary on free ports, stubs generated from the proto with
# grpcio-tools in a private virtualenv (examples/python/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${STOCKLOCK_TOOLS:-target/tools}/python-example"
if ! "$venv/bin/python" -c 'import grpc_tools' >/dev/null 2>&1; then
  # python3 and its venv module come from scripts/install-deps.sh test.
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r examples/python/requirements.txt
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$venv/bin/python" -m grpc_tools.protoc -I proto --python_out="$work" --grpc_python_out="$work" proto/stocklock/v1/stocklock.proto
${CARGO:-cargo} build -q --bin stocklock

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
redis_port=$(free_port) grpc_port=$(free_port) http_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
target/debug/stocklock serve --redis-url "redis://127.0.0.1:$redis_port" --listen "127.0.0.1:$grpc_port" \
  --http-listen "127.0.0.1:$http_port" --min-ttl 1s >"$work/stocklock.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do
  if python3 -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:$http_port/readyz', timeout=1)" 2>/dev/null; then
    break
  fi
  sleep 0.05
done
if ! PYTHONPATH="$work" "$venv/bin/python" examples/python/checkout.py "127.0.0.1:$grpc_port"; then
  echo "python-example: failed; the service's log:" >&2
  tail -n 30 "$work/stocklock.log" >&2
  exit 1
fi
