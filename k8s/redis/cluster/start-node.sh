#!/bin/sh
# Entrypoint of a Redis Cluster node (StatefulSet stocklock-redis-cluster).
# The nodes start empty and alone; the Job stocklock-redis-cluster-create
# joins them into a cluster once (create-cluster.sh). After that each node
# finds the others through nodes.conf, on its volume.
set -eu
server=$(command -v redis-server || command -v valkey-server)   # redis:7.4 or valkey/valkey:8
self="$POD_NAME.stocklock-redis-cluster-headless.$POD_NAMESPACE.svc"

# nodes.conf records each peer's IP address, which changes when its pod
# restarts. A node that comes back finds a moved peer anyway as long as one
# node it knows is where it was (the moved peer reports its new address). If
# every pod restarted at once (a cluster-wide outage) none is: so before
# starting, each node looks up its peers' names (recorded next to the
# addresses, as cluster-announce-hostname makes them) and writes the IPs it
# finds. Names that do not resolve yet keep their old address.
nodes=/data/nodes.conf
if [ -s "$nodes" ]; then
  awk '
    # Field 2: ip:port@busport,hostname[,more]. Other lines pass unchanged.
    NF > 2 && split($2, part, ",") >= 2 && part[2] != "" {
      cmd = "getent hosts " part[2]
      ip = ""
      if ((cmd | getline found) > 0) { split(found, f, " "); ip = f[1] }
      close(cmd)
      at = index(part[1], "@")
      if (ip != "" && at > 0) {
        addr = substr(part[1], 1, at - 1)
        port = addr; sub(/.*:/, "", port)
        rest = substr($2, index($2, "@"))
        $2 = ip ":" port rest
      }
    }
    { print }
  ' "$nodes" > "$nodes.new"
  mv "$nodes.new" "$nodes"
fi

conf=/run/redis/redis.conf
umask 077
{
  echo "include /etc/redis/redis.conf"
  echo "cluster-announce-hostname $self"
  printf 'requirepass "%s"\nmasterauth "%s"\n' "$REDIS_PASSWORD" "$REDIS_PASSWORD"
} > "$conf"
exec "$server" "$conf"
