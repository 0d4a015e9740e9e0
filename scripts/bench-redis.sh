# Sourced by the bench-*.sh scripts: a fresh, empty redis-server on a free
# port, pinned to the last core (the benchmark clients run on the first),
# stopped and removed when the script exits. Sets $port and $redis_dir.
redis_dir=$(mktemp -d)
port=$((20000 + RANDOM % 10000))
taskset -c "$(( $(nproc) - 1 ))" redis-server --port "$port" --save '' --appendonly no \
  --dir "$redis_dir" --daemonize yes --logfile "$redis_dir/log" >/dev/null
trap 'redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true; rm -rf "$redis_dir"' EXIT
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
