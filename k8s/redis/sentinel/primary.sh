# Sourced by start-redis.sh and start-sentinel.sh: the one way both find the
# current primary, so a redis pod and a sentinel that restart can never
# disagree about it.
#
# find_primary TAG SKIP sets $master to the primary's host name. It asks the
# sentinels first (the Service routes to ready ones, and they know the
# primary after a failover), then the redis pods other than ordinal SKIP (in
# case every sentinel is down too); only when nobody answers (a fresh
# install) is ordinal 0 the primary. TAG prefixes what it logs. It needs
# $cli, $REDIS_PASSWORD and $POD_NAMESPACE.
find_primary() {
  tag=$1 skip=$2
  replicas=3            # spec.replicas of the StatefulSet stocklock-redis
  redis_domain="stocklock-redis-headless.$POD_NAMESPACE.svc"
  master=$(timeout 3 "$cli" -h stocklock-redis-sentinel -p 26379 \
    sentinel get-master-addr-by-name mymaster 2>/dev/null | head -n 1) || master=""
  case "$master" in *" "*) master="" ;; esac   # an error message, not a name
  if [ -n "$master" ]; then
    echo "$tag: the sentinels name $master as the primary"
    return
  fi
  i=0
  while [ "$i" -lt "$replicas" ]; do
    peer="stocklock-redis-$i.$redis_domain"
    if [ "$i" != "$skip" ] && [ "$(primary_role_of "$peer")" = master ]; then
      master=$peer
      echo "$tag: no sentinel answers; $peer is a primary"
      return
    fi
    i=$((i + 1))
  done
  master="stocklock-redis-0.$redis_domain"
  echo "$tag: nobody answers (a fresh install): $master is the primary"
}

primary_role_of() {
  REDISCLI_AUTH="$REDIS_PASSWORD" timeout 3 "$cli" -h "$1" -p 6379 role 2>/dev/null | head -n 1
}
