#!/usr/bin/env bash
# Fills one record with N locks through lua/lock.lua on a pinned Redis, from
# 16 redis-benchmark processes at once, either spread over the 16 lock shards
# (as Locks with random nonces are) or all in one shard (the dictionaries a
# one-piece record had), and prints Redis's slow log over the fill.
# A table that outgrows its size is reallocated inside one call, so the
# slowest calls show whether a record's structures grow in one piece.
# Usage: scripts/bench-fill-record.sh <repo> <spread|one> <locks> <slowlog-us>
set -euo pipefail
repo=$1 mode=$2 n=$3 slow=$4
. "$(dirname "$0")/bench-redis.sh"
script=$( { cat "$repo/lua/lib.lua"; printf '\n'; cat "$repo/lua/lock.lua"; } )
sha=$(redis-cli -p "$port" SCRIPT LOAD "$script")
b='sl:{p0.0}'; rec="$b:BENCH:w:WH"
redis-cli -p "$port" HSET "$rec:stock" physical 9000000000000000 reserved 0 in_transit 0 locked 0 unit_scale 0 version 1 source_version 1 fence 0 >/dev/null
ret=86400000
gen=$(( $(date +%s%3N) / ret ))
redis-cli -p "$port" SET "$b:epoch" 1 >/dev/null
redis-cli -p "$port" CONFIG SET slowlog-log-slower-than "$slow" >/dev/null
redis-cli -p "$port" CONFIG SET slowlog-max-len 10000 >/dev/null
redis-cli -p "$port" SLOWLOG RESET >/dev/null
start=$(date +%s.%N)
for s in $(seq 0 15); do
  shard=$s; [ "$mode" = one ] && shard=0
  h=$(printf '%x' "$shard")
  taskset -c 0 redis-benchmark -p "$port" -c 2 -n $((n / 16)) -r 1000000000 -q \
    EVALSHA "$sha" 12 "$b:idem:lock:g$gen:abc" "$b:due" "$b:events" "$b:audit" "$b:idem:lock:g$((gen - 1)):abc" "$b:unused" "$b:epoch" \
    "$rec:stock" "$rec:locks:$h" "$rec:exp:$h" "$rec:ended:-" "$b:lockidx:$h" \
    0123456789abcdef 600000 86400000 bench order '' $ret $ret "0badc0d$h" __rand_int__ "$gen" $ret "$shard" 0 'BENCH|WH' 1 0 >/dev/null &
done
wait
end=$(date +%s.%N)
fence=$(redis-cli -p "$port" HGET "$rec:stock" fence)
live=$(redis-cli -p "$port" HGET "$rec:stock" live)
echo "mode=$mode locks=$live (fence $fence) in $(echo "$end - $start" | bc) s; slowlog over ${slow}us: $(redis-cli -p "$port" SLOWLOG LEN) entries"
# The five slowest calls (us): the third field of each slow-log entry.
redis-cli -p "$port" --no-raw SLOWLOG GET 10000 | grep -E '^ +3\) \(integer\)' | awk '{print $3}' | sort -n | tail -5 | tr '\n' ' '; echo
