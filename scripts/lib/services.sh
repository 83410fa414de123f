# shellcheck shell=bash
# Finding or starting the services rowpipe needs, shared by scripts/test and
# scripts/demo. Order of preference for each service:
#   1. the URL in the environment, if set;
#   2. a server already listening on the default local port;
#   3. a server this script starts from binaries on PATH (installed with apt
#      when running as root on Debian/Ubuntu), stopped again on exit;
#   4. otherwise: a clear message saying what to install.

RP_ROOT=${RP_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
RP_STATE=${RP_STATE:-$RP_ROOT/.rowpipe/services}
RP_STARTED=()

log() { printf '\033[1m[rowpipe]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

port_open() {
  # bash's /dev/tcp: no client tools needed.
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$(( 20000 + RANDOM % 30000 ))
    port_open "$p" || { echo "$p"; return 0; }
  done
  die "no free TCP port found"
}

wait_port() {
  local port=$1 what=$2
  for _ in $(seq 1 150); do
    port_open "$port" && return 0
    sleep 0.2
  done
  die "$what did not start listening on port $port (see $RP_STATE)"
}

apt_updated=0
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    if [ $apt_updated = 0 ]; then apt-get update -qq >/dev/null 2>&1 || true; apt_updated=1; fi
    log "installing $* with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  else
    return 1
  fi
}

stop_started() {
  local item
  for item in "${RP_STARTED[@]:-}"; do
    [ -n "$item" ] || continue
    eval "$item" >/dev/null 2>&1 || true
  done
}
trap stop_started EXIT

ensure_redis() {
  if [ -n "${REDIS_URL:-}" ]; then log "Redis: $REDIS_URL (from REDIS_URL)"; return; fi
  if port_open 6379; then export REDIS_URL=redis://127.0.0.1:6379; log "Redis: running on 6379"; return; fi
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server || \
    die "Redis is needed: install redis-server (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) or set REDIS_URL"
  local port dir
  port=$(free_port); dir=$RP_STATE/redis-$port; mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
  wait_port "$port" redis-server
  RP_STARTED+=("kill \$(cat '$dir/redis.pid')")
  export REDIS_URL=redis://127.0.0.1:$port
  log "Redis: started on $port"
}

pg_bin() {
  local name=$1 d
  command -v "$name" 2>/dev/null && return 0
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/$name" ] && { echo "$d/$name"; return 0; }
  done
  return 1
}

ensure_postgres() {
  if [ -n "${ROWPIPE_TEST_POSTGRES_URL:-}" ]; then log "PostgreSQL: from ROWPIPE_TEST_POSTGRES_URL"; return; fi
  if port_open 5432; then
    export ROWPIPE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres
    log "PostgreSQL: running on 5432"; return
  fi
  pg_bin initdb >/dev/null || apt_install postgresql || \
    die "PostgreSQL is needed: install postgresql (apt-get install postgresql) or set ROWPIPE_TEST_POSTGRES_URL"
  local initdb pg_ctl port dir as=()
  initdb=$(pg_bin initdb); pg_ctl=$(pg_bin pg_ctl)
  port=$(free_port); dir=$RP_STATE/postgres-$port; mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    # PostgreSQL refuses to run as root.
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown -R postgres "$dir"; as=(runuser -u postgres --)
  fi
  "${as[@]}" "$initdb" -D "$dir/data" -U postgres --auth=trust >"$dir/initdb.log" 2>&1 || die "initdb failed: $dir/initdb.log"
  "${as[@]}" "$pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $dir -c max_connections=300 -c fsync=off" start >/dev/null
  RP_STARTED+=("${as[*]} $pg_ctl -D '$dir/data' -m immediate stop")
  export ROWPIPE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:$port/postgres
  log "PostgreSQL: started on $port"
}

ensure_mysql() {
  if [ -n "${ROWPIPE_TEST_MYSQL_URL:-}" ]; then log "MariaDB/MySQL: from ROWPIPE_TEST_MYSQL_URL"; return; fi
  if port_open 3306; then
    export ROWPIPE_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/mysql
    log "MariaDB/MySQL: running on 3306"; return
  fi
  command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || apt_install mariadb-server || \
    die "MariaDB is needed: install mariadb-server (apt-get install mariadb-server) or set ROWPIPE_TEST_MYSQL_URL"
  local mariadbd install_db port dir
  mariadbd=$(command -v mariadbd || echo /usr/sbin/mariadbd)
  install_db=$(command -v mariadb-install-db || command -v mysql_install_db) || die "mariadb-install-db not found"
  port=$(free_port); dir=$RP_STATE/mariadb-$port; mkdir -p "$dir"
  "$install_db" --no-defaults --datadir="$dir/data" --user="$(id -un)" --auth-root-authentication-method=normal \
    >"$dir/install.log" 2>&1 || die "mariadb-install-db failed: $dir/install.log"
  "$mariadbd" --no-defaults --datadir="$dir/data" --port="$port" --bind-address=127.0.0.1 \
    --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" --user="$(id -un)" \
    --skip-grant-tables --max-connections=500 --innodb-flush-log-at-trx-commit=2 \
    >"$dir/mariadb.log" 2>&1 &
  RP_STARTED+=("kill $!")
  wait_port "$port" mariadbd
  export ROWPIPE_TEST_MYSQL_URL=mysql://root@127.0.0.1:$port/mysql
  log "MariaDB: started on $port"
}
