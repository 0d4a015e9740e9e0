#!/bin/sh
# preStop of a redis-server pod: if it is the primary, have the sentinels
# promote a replica now, rather than notice the silence 5 s after it stops.
# A rolling update or a node drain then costs one quick, planned failover.
# Never fails: the pod stops either way.
cli=$(command -v redis-cli || command -v valkey-cli)
self="$POD_NAME.stocklock-redis-headless.$POD_NAMESPACE.svc"
rcli() { REDISCLI_AUTH="$REDIS_PASSWORD" timeout 3 "$cli" "$@" 2>/dev/null; }
scli() { timeout 5 "$cli" -h stocklock-redis-sentinel -p 26379 "$@" 2>&1; }
[ "$(rcli role | head -n 1)" = master ] || exit 0
[ "$(scli sentinel failover mymaster)" = OK ] || exit 0
# Once the sentinels name the new primary, follow it at once: the sentinels
# would demote this pod only some 10 s later, and writes it took meanwhile
# would be lost. Up to 30 s (terminationGracePeriodSeconds is 60).
i=0
while [ "$i" -lt 30 ]; do
  new=$(scli sentinel get-master-addr-by-name mymaster | head -n 1)
  case "$new" in
    "" | "$self" | *" "*) ;;
    *) rcli replicaof "$new" 6379 >/dev/null; exit 0 ;;
  esac
  sleep 1
  i=$((i + 1))
done
exit 0
