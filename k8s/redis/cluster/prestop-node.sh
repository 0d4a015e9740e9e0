#!/bin/sh
# preStop of a cluster node: if it is a primary, have its replica take over
# now (CLUSTER FAILOVER, no writes lost) and wait up to 30 s for it, rather
# than leave the shard without a primary for cluster-node-timeout (5 s) and
# the election. A rolling update or a node drain then costs one planned
# failover per shard. Never fails: the pod stops either way.
cli=$(command -v redis-cli || command -v valkey-cli)
export REDISCLI_AUTH="$REDIS_PASSWORD"
role() { timeout 3 "$cli" role 2>/dev/null | head -n 1; }
[ "$(role)" = master ] || exit 0
me=$(timeout 3 "$cli" cluster myid) || exit 0
# A healthy replica of this node: field 4 of CLUSTER NODES is its primary's id.
replica=$(timeout 3 "$cli" cluster nodes | awk -v me="$me" '
  $4 == me && $3 !~ /fail/ { split($2, a, "@"); print a[1]; exit }')
[ -n "$replica" ] || exit 0
[ "$(timeout 5 "$cli" -h "${replica%:*}" -p "${replica##*:}" cluster failover 2>&1)" = OK ] || exit 0
i=0
while [ "$i" -lt 30 ] && [ "$(role)" = master ]; do
  sleep 1
  i=$((i + 1))
done
exit 0
