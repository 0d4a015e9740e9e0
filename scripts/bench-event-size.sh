#!/usr/bin/env bash
# Redis bytes per lifecycle event (MEMORY USAGE of the stream / entries) for
# today's event and for leaner encodings of the same Lock event, each with
# the load tool's strings (record "sku-000042|wh-1", holder "loadtest",
# order "lt-12345-<n>", an 8-hex nonce, a clock-derived 15-digit token).
# It answers "what would it take to bring an event under N bytes".
#
# Usage: scripts/bench-event-size.sh [events]   (default 20000)
#   today         the fields and names lib.lua's emit writes
#   rel-detail    expires_at as ms after the entry's own time (a ttl)
#   short         one-letter field names and action codes, rel-detail
#   short-int     short, and the nonce stored as an integer
#   no-derived    short-int without unit_scale, available_before, batch_id
#   no-state      no-derived without the record's figures after the change
set -euo pipefail
n=${1:-20000}
. "$(dirname "$0")/bench-redis.sh"
script=$(cat <<'EOF'
local n, variant = tonumber(ARGV[1]), ARGV[2]
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, n do
  local rec = 'sku-' .. string.format('%06d', i % 1000) .. '|wh-1'
  local token, nonce, order = 250000000000000 + i * 16, string.format('%08x', i * 7919 % 4294967296), 'lt-12345-' .. i
  local locked, version, before = 100 + i % 1000, 4000 + i, 999000 + i % 1000
  local e
  if variant == 'today' or variant == 'rel-detail' then
    e = { 'action', 'lock', 'record', rec, 'unit_scale', 0, 'physical', 1000000, 'reserved', 0, 'in_transit', 0,
      'locked', locked, 'version', version, 'available_before', before, 'token', token, 'nonce', nonce,
      'quantity', 1, 'holder', 'loadtest', 'order_id', order, 'batch_id', '',
      'detail', variant == 'today' and ms + 600000 or 600000 }
  elseif variant == 'short' or variant == 'short-int' then
    e = { 'a', 'L', 'r', rec, 's', 0, 'p', 1000000, 'rs', 0, 't', 0, 'l', locked, 'v', version, 'ab', before,
      'tk', token, 'n', variant == 'short' and nonce or tonumber(nonce, 16), 'q', 1, 'h', 'loadtest', 'o', order,
      'b', '', 'd', 600000 }
  elseif variant == 'no-derived' then
    e = { 'a', 'L', 'r', rec, 'p', 1000000, 'rs', 0, 't', 0, 'l', locked, 'v', version,
      'tk', token, 'n', tonumber(nonce, 16), 'q', 1, 'h', 'loadtest', 'o', order, 'd', 600000 }
  elseif variant == 'no-state' then
    e = { 'a', 'L', 'r', rec, 'v', version, 'tk', token, 'n', tonumber(nonce, 16), 'q', 1, 'h', 'loadtest',
      'o', order, 'd', 600000 }
  else
    return redis.error_reply('unknown variant ' .. variant)
  end
  redis.call('XADD', KEYS[1], '*', unpack(e))
end
return redis.call('MEMORY', 'USAGE', KEYS[1], 'SAMPLES', 0)
EOF
)
for variant in today rel-detail short short-int no-derived no-state; do
  redis-cli -p "$port" DEL events >/dev/null
  bytes=$(redis-cli -p "$port" EVAL "$script" 1 events "$n" "$variant")
  printf '%-11s %4d B per event\n' "$variant" $(( bytes / n ))
done
