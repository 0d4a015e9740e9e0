#!/usr/bin/env bash
# The soak: the realistic order mix for SOAK_DURATION (default 10m) against a
# release build on its own redis-server (AOF on), with a fault every
# SOAK_FAULT_EVERY (default 60s), in turn:
#   pause   SIGSTOP Redis for 2 s (longer than the store timeout), then SIGCONT
#   flush   SCRIPT FLUSH
#   kill    kill -9 Redis, restart it from its AOF on the same port
#   busy    a 1.5 s read-only script from another client, then SCRIPT KILL
# At the end it waits for every lock to expire and be swept, then reports
# calls and errors by reason (from the load tool), the invariant auditor's
# passes and findings, lock keys and the due index back to zero, and Redis
# and service memory before and after. Exit status 0 only if the auditor
# found nothing and no lock key is left.
#
#   ./scripts/soak.sh                                   # 10 minutes
#   SOAK_DURATION=30m SOAK_RATE=2000 ./scripts/soak.sh
#
# Needs redis-server and redis-cli, and builds the release binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${SOAK_DURATION:-10m}"
rate="${SOAK_RATE:-1000}"
fault_every="${SOAK_FAULT_EVERY:-60}"
work=$(mktemp -d)
redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
grpc_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
http_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cli() { redis-cli -p "$redis_port" "$@"; }

cargo build --release --workspace --quiet

start_redis() {
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work" --appendonly yes --appendfsync everysec \
    --save "" --maxmemory-policy noeviction --daemonize no >"$work/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 100); do cli ping >/dev/null 2>&1 && return; sleep 0.05; done
  echo "soak: redis-server did not start" >&2; exit 1
}
cleanup() {
  kill "${loadtest_pid:-}" "${service_pid:-}" 2>/dev/null || true
  kill -CONT "${redis_pid:-}" 2>/dev/null || true
  kill "${redis_pid:-}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start_redis
./target/release/stocklock serve --redis-url "redis://127.0.0.1:$redis_port/" \
  --listen "127.0.0.1:$grpc_port" --http-listen "127.0.0.1:$http_port" \
  --store-timeout 250ms --invariant-check-interval 15s >"$work/service.log" 2>&1 &
service_pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$http_port/readyz" >/dev/null && break; sleep 0.1; done

metric() { curl -sf "http://127.0.0.1:$http_port/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
rss_kib() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }
redis_mem() { cli info memory | awk -F: '/^used_memory:/ { print $2 }' | tr -d '\r'; }
keys_like() { cli --scan --pattern "$1" | wc -l; }

mem_before=$(redis_mem); rss_before=$(rss_kib "$service_pid")
echo "soak: $duration of the order mix at $rate/s, a fault every ${fault_every}s (redis :$redis_port, service :$grpc_port)"

./target/release/loadtest run --target "http://127.0.0.1:$grpc_port" --redis-port "$redis_port" \
  --scenario order --rate "$rate" --duration "$duration" --warmup 5s --quiet --json "$work/soak.json" \
  >"$work/loadtest.txt" 2>&1 &
loadtest_pid=$!

faults=(pause flush kill busy)
declare -A injected=()
n=0
while kill -0 "$loadtest_pid" 2>/dev/null; do
  for _ in $(seq "$fault_every"); do
    sleep 1
    kill -0 "$loadtest_pid" 2>/dev/null || break 2
  done
  fault=${faults[$((n % ${#faults[@]}))]}; n=$((n + 1))
  echo "soak: $(date +%T) fault: $fault"
  case $fault in
    pause) kill -STOP "$redis_pid"; sleep 2; kill -CONT "$redis_pid" ;;
    flush) cli script flush >/dev/null ;;
    kill)
      kill -9 "$redis_pid"; wait "$redis_pid" 2>/dev/null || true
      sleep 1; start_redis ;;
    busy)
      cli eval "local t = redis.call('TIME') local e = t[1] * 1000000 + t[2] + 1500000 \
        while true do local n = redis.call('TIME') if n[1] * 1000000 + n[2] > e then break end end return 1" 0 \
        >/dev/null 2>&1 &
      sleep 0.5; cli script kill >/dev/null 2>&1 || true; wait $! 2>/dev/null || true ;;
  esac
  injected[$fault]=$(( ${injected[$fault]:-0} + 1 ))
done
wait "$loadtest_pid" && loadtest_status=0 || loadtest_status=$?

# Orders that lost their release to a fault hold locks until their TTL: let
# them all expire and be swept, then let the auditor look once more.
echo "soak: waiting for every lock to expire and be swept"
for _ in $(seq 120); do
  [ "$(keys_like 'sl:*:locks')" -eq 0 ] && [ "$(cli zcard 'sl:{p0.0}:due')" -eq 0 ] && break
  sleep 1
done
passes_before=$(metric stocklock_invariant_passes_total)
for _ in $(seq 40); do
  [ "$(metric stocklock_invariant_passes_total)" != "$passes_before" ] && break
  sleep 1
done

lock_keys=$(keys_like 'sl:*:locks'); exp_keys=$(keys_like 'sl:*:exp'); due=$(cli zcard 'sl:{p0.0}:due')
violations=0
echo
echo "== soak report ($(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)) =="
sed -n '1,/^machine/p' "$work/loadtest.txt"
echo "faults injected: $(for f in "${!injected[@]}"; do printf '%s=%s ' "$f" "${injected[$f]}"; done)"
echo "invariant auditor: $(metric stocklock_invariant_passes_total) passes over $(metric stocklock_invariant_records) records"
for kind in locked_drift broken_expiry_index late_expiry oversold; do
  v=$(metric "stocklock_invariant_violations{kind=\"$kind\"}"); echo "  $kind: $v"
  [ "${v:-0}" = "0" ] || violations=$((violations + 1))
done
echo "after expiry: lock hashes $lock_keys, expiry sets $exp_keys, due index $due (all should be 0)"
echo "keys now: $(cli dbsize) (idempotency records and tombstones stay for --idempotency-retention)"
echo "redis used_memory: $mem_before -> $(redis_mem) bytes; service RSS: $rss_before -> $(rss_kib "$service_pid") KiB"
echo "service log lines at ERROR (or panics), by message:"
grep -E "ERROR|panicked" "$work/service.log" | sed -E 's/^[^ ]+ +//; s/\x1b\[[0-9;]*m//g' | cut -c1-120 | sort | uniq -c | sort -rn | head -5 || true
if [ "$violations" -ne 0 ] || [ "$lock_keys" -ne 0 ] || [ "$due" -ne 0 ]; then
  echo "soak: FAILED"; exit 1
fi
echo "soak: passed (load tool exit status $loadtest_status: its own stock check runs before the TTLs pass)"
