#!/usr/bin/env bash
# The binlog follower's throughput: a fresh MariaDB and redis-server of
# their own, the release service following them, and three measurements:
#   1. the first start's read of a ROWS-row stock table,
#   2. one UPDATE of every row of it (one transaction),
#   3. ROWS movements in one INSERT (movement mode, 10 per record).
# Each prints how long the follower took to be caught up (its checkpoint at
# the server's position). Usage: scripts/bench-binlog.sh [ROWS] (100000).
# Needs mariadb-server (scripts/install-deps.sh test) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
rows="${1:-100000}"
bin=target/release/stocklock
[ -x "$bin" ] || cargo build --release -p stocklock
dir=$(mktemp -d)
mariadbd=$(command -v mariadbd || echo /usr/sbin/mariadbd)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
db_port=$(port); redis_port=$(port); grpc_port=$(port); http_port=$(port)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

mariadb-install-db --no-defaults --user=root --auth-root-authentication-method=normal --skip-test-db \
  --datadir="$dir/data" --innodb-log-file-size=64M >/dev/null
"$mariadbd" --no-defaults --user=root --bind-address=127.0.0.1 --skip-name-resolve --datadir="$dir/data" \
  --port="$db_port" --socket="$dir/sock" --pid-file="$dir/pid" --log-error="$dir/error.log" \
  --log-bin="$dir/data/binlog" --server-id=1 --binlog-format=ROW --binlog-row-image=FULL --binlog-row-metadata=FULL \
  --innodb-log-file-size=64M --max-binlog-size=1G &
pids+=($!)
redis-server --port "$redis_port" --save '' --appendonly no >/dev/null &
pids+=($!)
sql() { mariadb --no-defaults -S "$dir/sock" -uroot -N warehouse -e "$1"; }
for _ in $(seq 200); do mariadb --no-defaults -S "$dir/sock" -uroot -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.05; done
mariadb --no-defaults -S "$dir/sock" -uroot -e "CREATE DATABASE warehouse;
  CREATE USER 'stocklock'@'%' IDENTIFIED BY 'bench'; GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'stocklock'@'%';
  GRANT SELECT ON warehouse.* TO 'stocklock'@'%'"
sql "CREATE TABLE stock (sku VARCHAR(32), warehouse_id VARCHAR(32), physical INT, PRIMARY KEY (sku, warehouse_id));
  CREATE TABLE movements (id BIGINT PRIMARY KEY, sku VARCHAR(32), warehouse_id VARCHAR(32), quantity INT);
  INSERT INTO stock SELECT CONCAT('S', seq DIV 10), CONCAT('W', seq MOD 10), 100 FROM seq_0_to_$((rows - 1))"

serve() {
  "$bin" serve --redis-url "redis://127.0.0.1:$redis_port" --listen "127.0.0.1:$grpc_port" \
    --http-listen "127.0.0.1:$http_port" --no-ingest \
    --cdc-mysql-url "mysql://stocklock:bench@127.0.0.1:$db_port/warehouse" "$@" >"$dir/service.log" 2>&1 &
  pids+=($!)
}
# Seconds from now until follower $1's checkpoint reaches the server's position.
caught_up() {
  local target start saved
  target=$(sql "SHOW MASTER STATUS" | awk '{print $1":"$2}')
  start=$(date +%s.%N)
  while true; do
    saved=$(redis-cli -p "$redis_port" GET "{sl:binlog}:checkpoint:$1" | cut -d@ -f1)
    if [ -n "$saved" ] && { [[ "${saved%%:*}" > "${target%%:*}" ]] ||
      { [ "${saved%%:*}" = "${target%%:*}" ] && [ "${saved##*:}" -ge "${target##*:}" ]; }; }; then
      break
    fi
    sleep 0.02
  done
  echo "$(date +%s.%N) - $start" | bc
}
rate() { echo "scale=0; $rows / $1" | bc; }

start=$(date +%s.%N)
serve --cdc-table stock
secs=$(caught_up warehouse.stock)
secs=$(echo "$(date +%s.%N) - $start" | bc)
echo "1. first read of $rows rows (start-up included): ${secs} s, $(rate "$secs") rows/s"
sql "UPDATE stock SET physical = physical + 1"
secs=$(caught_up warehouse.stock)
echo "2. one UPDATE of $rows rows: ${secs} s after its commit, $(rate "$secs") rows/s"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

serve --cdc-table movements --cdc-mode movement --cdc-columns physical=quantity
caught_up warehouse.movements >/dev/null
sql "INSERT INTO movements SELECT seq, CONCAT('S', seq MOD $((rows / 100))), CONCAT('W', (seq DIV $((rows / 100))) MOD 10), 1
  FROM seq_1_to_$rows"
secs=$(caught_up warehouse.movements)
echo "3. one INSERT of $rows movements: ${secs} s after its commit, $(rate "$secs") rows/s"
echo "   S5|W3 physical (100 + 1 + 10 expected): $(curl -s "127.0.0.1:$http_port/stock/available?sku=S5&warehouse_id=W3" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["results"][0]["records"][0]["physical"])')"
