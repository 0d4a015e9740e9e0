#!/usr/bin/env bash
# redis-benchmark -c 50 of one lock script on a fresh Redis pinned to the
# last core (the benchmark on the first), every call a new Lock of one unit
# on one record, then Redis's own time per call (INFO commandstats).
#
# Usage: scripts/bench-lock-script.sh <layout6|layout5|layout4|layout3|minimal> <lua-dir> <calls>
#   layout6  lua/lib.lua and lua/lock.lua of <lua-dir> (this tree: .)
#   layout5  the same before candidate warehouses and batch policies (one
#            argument fewer, lines without a spec), e.g. git archive 8de4763 lua
#   layout4  the same before sessions (two keys and one argument fewer), e.g.
#            git archive 889d6ee lua | tar -x -C /tmp/l4
#   layout3  lib.lua and lock.lua of layout 3, e.g. from
#            git show 59d95ac:lua/lib.lua > /tmp/l3/lib.lua (and lock.lua)
#   minimal  TIME, HMGET, HINCRBY, HSET, ZADD: the floor of any lock script
set -euo pipefail
which=$1 dir=$2 n=$3
. "$(dirname "$0")/bench-redis.sh"
b='sl:{p0.0}'; rec="$b:BENCH:w:WH"; ret=86400000; gen=$(( $(date +%s%3N) / ret ))
redis-cli -p "$port" HSET "$rec:stock" physical 9000000000000000 reserved 0 in_transit 0 locked 0 unit_scale 0 version 1 source_version 1 fence 0 >/dev/null
redis-cli -p "$port" SET "$b:epoch" 1 >/dev/null
common=(0123456789abcdef 600000 86400000 bench order '' $ret $ret 0badc0de)
request=(__rand_int__ "$gen" $ret)
case $which in
  layout5|layout6)
    sha=$(redis-cli -p "$port" SCRIPT LOAD "$( { cat "$dir/lua/lib.lua"; printf '\n'; cat "$dir/lua/lock.lua"; } )")
    line=('BENCH|WH' 1 0)
    [ "$which" = layout6 ] && line=(A 1 1 0 'BENCH|WH')
    cmd=(EVALSHA "$sha" 14 "$b:idem:lock:g$gen:abc" "$b:due" "$b:events" "$b:audit" "$b:idem:lock:g$((gen - 1)):abc" "$b:unused" "$b:epoch"
      "$b:unused" "$b:unused" "$rec:stock" "$rec:locks:e" "$rec:exp:e" "$rec:ended:-" "$b:lockidx:e" "${common[@]}" "${request[@]}" 14 0 '' "${line[@]}") ;;
  layout4)
    sha=$(redis-cli -p "$port" SCRIPT LOAD "$( { cat "$dir/lua/lib.lua"; printf '\n'; cat "$dir/lua/lock.lua"; } )")
    cmd=(EVALSHA "$sha" 12 "$b:idem:lock:g$gen:abc" "$b:due" "$b:events" "$b:audit" "$b:idem:lock:g$((gen - 1)):abc" "$b:unused" "$b:epoch"
      "$rec:stock" "$rec:locks:e" "$rec:exp:e" "$rec:ended:-" "$b:lockidx:e" "${common[@]}" "${request[@]}" 14 0 'BENCH|WH' 1 0) ;;
  layout3)
    sha=$(redis-cli -p "$port" SCRIPT LOAD "$( { cat "$dir/lib.lua"; printf '\n'; cat "$dir/lock.lua"; } )")
    cmd=(EVALSHA "$sha" 11 "$b:idem:lock:g$gen:abc" "$b:due" "$b:events" "$b:audit" "$b:lockidx" "$b:idem:lock:g$((gen - 1)):abc" "$b:unused"
      "$rec:stock" "$rec:locks" "$rec:exp" "$rec:ended:-" "${common[@]}" 0 "${request[@]}" 'BENCH|WH' 1 0) ;;
  minimal)
    sha=$(redis-cli -p "$port" SCRIPT LOAD "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local s = redis.call('HMGET', KEYS[1], 'physical', 'locked')
redis.call('HINCRBY', KEYS[1], 'locked', 1)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], now + 60000, ARGV[1])
return s")
    cmd=(EVALSHA "$sha" 3 "$rec:stock" "$rec:locks" "$rec:exp" __rand_int__ "1|1733000000000|1733086400000|60000|redis-benchmark|bench|0badc0de|") ;;
esac
out=$(taskset -c 0 redis-benchmark -p "$port" -c 50 -n "$n" -r 1000000000 -q "${cmd[@]}" | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1)
redis-cli -p "$port" INFO commandstats | grep -E "cmdstat_" | sed -E "s/cmdstat_([a-z]+):calls=([0-9]+),usec=([0-9]+),usec_per_call=([0-9.]+).*/  \1 calls=\2 usec_per_call=\4/" | grep -Ev "cmdstat_|calls=1 " | tr "\n" " "; echo
echo "$which: $out; locks $(redis-cli -p "$port" HGET "$rec:stock" live) live, fence $(redis-cli -p "$port" HGET "$rec:stock" fence)"
