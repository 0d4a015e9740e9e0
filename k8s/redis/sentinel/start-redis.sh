#!/bin/sh
# Entrypoint of a redis-server pod of the Sentinel setup (StatefulSet
# stocklock-redis). It decides whether this pod starts as the primary or as a
# replica, writes its config and runs redis-server.
#
# On a fresh install ordinal 0 is the primary and the others start with
# --replicaof stocklock-redis-0. After a failover the primary can be any pod,
# so a pod that restarts asks first: the sentinels (they know the current
# primary), then its peers (in case every sentinel is down too). Only when
# nobody answers does the ordinal decide. A pod that came back as a second
# primary would take writes that the next failover throws away.
set -eu
cli=$(command -v redis-cli || command -v valkey-cli)   # redis:7.4 or valkey/valkey:8
server=$(command -v redis-server || command -v valkey-server)
port=6379
domain="stocklock-redis-headless.$POD_NAMESPACE.svc"
self="$POD_NAME.$domain"
ordinal=${POD_NAME##*-}

. /etc/redis/primary.sh
find_primary start-redis "$ordinal"

# The password goes in the file (mode 600, an emptyDir), not on the command
# line where ps shows it. Sentinel rewrites this file (CONFIG REWRITE) when
# it turns this pod into a primary or a replica; it is made anew at each start.
conf=/run/redis/redis.conf
umask 077
{
  echo "include /etc/redis/redis.conf"
  # Replicas are listed (in the primary's INFO, so by the sentinels) under
  # this name, which survives a restart; the pod's IP does not.
  echo "replica-announce-ip $self"
  printf 'requirepass "%s"\nmasterauth "%s"\n' "$REDIS_PASSWORD" "$REDIS_PASSWORD"
} > "$conf"

if [ "$master" = "$self" ]; then
  exec "$server" "$conf"
fi
exec "$server" "$conf" --replicaof "$master" "$port"
