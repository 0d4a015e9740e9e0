#!/bin/sh
# Entrypoint of a sentinel pod (StatefulSet stocklock-redis-sentinel). It
# finds the current primary, writes sentinel.conf and runs the sentinel.
#
# A sentinel that restarts with a fresh config must not monitor
# stocklock-redis-0 blindly: after a failover that is a replica. So it asks
# the other sentinels first (the Service routes to ready ones, never to this
# pod, which is not ready yet), then the redis pods; only on a fresh install,
# when nobody answers, is ordinal 0 the primary.
set -eu
cli=$(command -v redis-cli || command -v valkey-cli)   # redis:7.4 or valkey/valkey:8
server=$(command -v redis-server || command -v valkey-server)
self="$POD_NAME.stocklock-redis-sentinel-headless.$POD_NAMESPACE.svc"

. /etc/redis/primary.sh
find_primary start-sentinel ""
# With resolve-hostnames, a sentinel refuses to start on a name that does not
# resolve yet (the redis pod is not scheduled): wait for it rather than crash.
until getent hosts "$master" >/dev/null; do
  echo "start-sentinel: waiting for $master to resolve"
  sleep 2
done

conf=/run/sentinel/sentinel.conf
umask 077
{
  cat /etc/redis/sentinel.conf
  echo "sentinel announce-ip $self"
  # Quorum 2: two of the three sentinels must agree that the primary is down.
  echo "sentinel monitor mymaster $master 6379 2"
  printf 'sentinel auth-pass mymaster "%s"\n' "$REDIS_PASSWORD"
  # Failover after 5 s of silence; stocklock follows it by itself (it asks
  # the sentinels every --redis-failover-poll and after a failed call).
  echo "sentinel down-after-milliseconds mymaster 5000"
  echo "sentinel failover-timeout mymaster 60000"
  # One replica resyncs from a new primary at a time; the other stays usable.
  echo "sentinel parallel-syncs mymaster 1"
} > "$conf"
exec "$server" "$conf" --sentinel
