#!/bin/sh
# The Job stocklock-redis-cluster-create: waits until the six nodes answer,
# then makes them one cluster, three primaries with a replica each
# (redis-cli --cluster create --cluster-replicas 1): 16384 slots in three
# equal ranges, so stocklock's 16 partitions spread evenly.
#
# Runs again safely (a re-applied Job, or its retries): when any node already
# knows another, the cluster exists and this only checks it. Creating it a
# second time would fail, or join half-created pieces wrongly.
set -eu
cli=$(command -v redis-cli || command -v valkey-cli)   # redis:7.4 or valkey/valkey:8
export REDISCLI_AUTH="$REDIS_PASSWORD"
nodes=6                 # spec.replicas of the StatefulSet
domain="stocklock-redis-cluster-headless.$POD_NAMESPACE.svc"

hosts=""
i=0
while [ "$i" -lt "$nodes" ]; do
  hosts="$hosts stocklock-redis-cluster-$i.$domain"
  i=$((i + 1))
done

for h in $hosts; do
  until [ "$(timeout 3 "$cli" -h "$h" ping 2>/dev/null)" = PONG ]; do
    echo "create-cluster: waiting for $h"
    sleep 2
  done
done

for h in $hosts; do
  known=$(timeout 3 "$cli" -h "$h" cluster info | sed -n 's/^cluster_known_nodes:\([0-9]*\).*/\1/p')
  if [ "${known:-1}" -gt 1 ]; then
    echo "create-cluster: $h knows $known nodes, so the cluster exists; checking it"
    exec "$cli" --cluster check "$h:6379"
  fi
done

# CLUSTER MEET (which --cluster create sends) takes IP addresses, not names.
addrs=""
for h in $hosts; do
  ip=$(getent hosts "$h" | awk '{ print $1; exit }')
  addrs="$addrs $ip:6379"
done
echo "create-cluster: creating the cluster of$addrs"
# shellcheck disable=SC2086 # one word per node
"$cli" --cluster create $addrs --cluster-replicas 1 --cluster-yes

# Done when every node sees every slot served and every replica in place
# (the replicas are assigned after the slots, and the news takes a moment).
replicas() { timeout 3 "$cli" -h "$1" cluster nodes | awk '$3 ~ /slave/' | wc -l; }
for h in $hosts; do
  until timeout 3 "$cli" -h "$h" cluster info | grep -q '^cluster_state:ok' &&
    [ "$(replicas "$h")" -eq $((nodes / 2)) ]; do
    echo "create-cluster: waiting for $h to see the whole cluster"
    sleep 2
  done
done
echo "create-cluster: the cluster is up"
