#!/usr/bin/env bash
# A local Postgres for the tests and benchmarks: Debian's postgresql
# binaries, a data directory of its own, listening on 127.0.0.1 only,
# fsync on. Started once and reused, like the local control plane.
#
#   postgres.sh up      start (or reuse); prints the connection URL last
#   postgres.sh down    stop (fast shutdown)
#   postgres.sh kill    SIGKILL the server and its backends (chaos tests)
#
# HOOKRELAY_POSTGRES_DIR (default /var/tmp/hookrelay-postgres) and
# HOOKRELAY_POSTGRES_PORT (default 25432; below the kernel's ephemeral range, so
# no client connection holds it) select the instance. With
# HOOKRELAY_POSTGRES_OPTIONS adds server settings (`-c name=value …`; the
# benchmark loads pg_stat_statements). With
# HOOKRELAY_POSTGRES_TLS=DIR (server.crt and server.key in DIR) it also
# accepts TLS with that certificate. With HOOKRELAY_POSTGRES_LISTEN=IP it also
# listens on IP (a node's pods reach the host there: tests/e2e/node.sh), where
# clients must sign in with a password (scram-sha-256); loopback stays trust.
set -euo pipefail
dir="${HOOKRELAY_POSTGRES_DIR:-/var/tmp/hookrelay-postgres}"
port="${HOOKRELAY_POSTGRES_PORT:-25432}"
data="$dir/data"

bin=""
for candidate in "$(dirname "$(command -v initdb || echo /none/initdb)")" /usr/lib/postgresql/*/bin; do
  if [[ -x "$candidate/initdb" && -x "$candidate/pg_ctl" ]]; then bin="$candidate"; break; fi
done
if [[ -z "$bin" ]]; then
  echo "postgres.sh: initdb and pg_ctl not found; install Debian's postgresql package (apt-get install postgresql)" >&2
  exit 1
fi

# (The server must not inherit the lock's descriptor: `9>&-` below.)
# Postgres refuses to run as root; as root it runs as the postgres user.
as_owner() {
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

running() { [[ -f "$data/postmaster.pid" ]] && as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; }

up() {
  mkdir -p "$dir"
  [[ $(id -u) == 0 ]] && chown postgres: "$dir"
  if [[ ! -f "$data/PG_VERSION" ]]; then
    as_owner "$bin/initdb" -D "$data" -U hookrelay --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
  fi
  local tls="" listen=127.0.0.1
  if [[ -n "${HOOKRELAY_POSTGRES_LISTEN:-}" ]]; then
    listen="127.0.0.1,$HOOKRELAY_POSTGRES_LISTEN"
    local hba="host all all $HOOKRELAY_POSTGRES_LISTEN/0 scram-sha-256"
    grep -qxF "$hba" "$data/pg_hba.conf" || echo "$hba" >> "$data/pg_hba.conf"
  fi
  if [[ -n "${HOOKRELAY_POSTGRES_TLS:-}" ]]; then
    # The server reads its key only if no one else may (0600, its owner).
    install -m 600 "$HOOKRELAY_POSTGRES_TLS/server.crt" "$HOOKRELAY_POSTGRES_TLS/server.key" "$dir/"
    [[ $(id -u) == 0 ]] && chown postgres: "$dir/server.crt" "$dir/server.key"
    tls="-c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key"
  fi
  if ! running; then
    as_owner "$bin/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t 60 \
      -o "-c listen_addresses=$listen -c port=$port -c unix_socket_directories=$dir -c fsync=on -c max_connections=200 $tls ${HOOKRELAY_POSTGRES_OPTIONS:-}" \
      start >/dev/null 9>&- || { tail -20 "$dir/postgres.log" >&2; exit 1; }
  fi
  echo "postgres://hookrelay@127.0.0.1:$port/postgres"
}

down() {
  if running; then as_owner "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null; fi
}

kill_server() {
  local pid
  pid=$(head -1 "$data/postmaster.pid" 2>/dev/null || true)
  [[ -n "$pid" ]] || { echo "postgres.sh: not running" >&2; exit 1; }
  # Backends first (children of this postmaster only), then the postmaster.
  pkill -KILL -P "$pid" || true
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

# SIGSTOP / SIGCONT the postmaster and its backends: a server that stalls.
signal_server() {
  local pid
  pid=$(head -1 "$data/postmaster.pid" 2>/dev/null || true)
  [[ -n "$pid" ]] || { echo "postgres.sh: not running" >&2; exit 1; }
  kill "-$1" "$pid"
  pkill "-$1" -P "$pid" || true
}

exec 9>"${dir%/}.lock"
flock 9
case "${1:-}" in
  up) up ;;
  down) down ;;
  kill) kill_server ;;
  pause) signal_server STOP ;;
  resume) signal_server CONT ;;
  *) echo "usage: $0 up|down|kill|pause|resume" >&2; exit 2 ;;
esac
