#!/bin/sh
# Probes of the cluster nodes: probe.sh ready|live
#   ready: answers PING with PONG (a replica still loading its data does not);
#   live:  answers at all. LOADING (a long AOF replay at start) and BUSY (a
#          long script) are answers: restarting Redis for them would only
#          start the replay again.
cli=$(command -v redis-cli || command -v valkey-cli)
port=${2:-6379}
if [ "$port" = 6379 ]; then export REDISCLI_AUTH="$REDIS_PASSWORD"; fi
reply=$(timeout 4 "$cli" -p "$port" ping 2>&1)
case "$1:$reply" in
  ready:PONG) exit 0 ;;
  live:*PONG*|live:*LOADING*|live:*BUSY*|live:*MASTERDOWN*) exit 0 ;;
esac
echo "$reply"
exit 1
