# Helpers shared by the scripts in scripts/. Source it; do not run it.
# shellcheck shell=bash

# The database the PostgreSQL sink test uses unless VIGIL_TEST_DATABASE_URL is already set.
# scripts/setup-test-deps.sh installs and starts a local PostgreSQL and creates this role
# (password vigil) and database.
# shellcheck disable=SC2034 # used by the scripts that source this file
readonly VIGIL_DEFAULT_TEST_DATABASE_URL=postgres://vigil:vigil@127.0.0.1:5432/vigil_test

# Prints "<script>: <message>" on stderr.
say() { printf '%s: %s\n' "${SCRIPT_NAME:-vigil}" "$*" >&2; }

# Prints the header comment of script $1 (from line 2 to the first non-comment line).
print_usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$1"; }

# For scripts that take no arguments: `no_arguments SCRIPT "$@"` prints SCRIPT's usage and
# exits 0 on -h/--help, exits 2 on anything else.
no_arguments() {
  case "${2:-}" in
    -h | --help) print_usage "$1"; exit 0 ;;
    "") ;;
    *) say "unknown argument: $2 (see --help)"; exit 2 ;;
  esac
}

# Prints "HOST PORT" of a postgres://[user@]host[:port]/db URL (port defaults to 5432).
pg_host_port() {
  local hostport=${1#*://} host
  hostport=${hostport#*@}
  hostport=${hostport%%/*}
  host=${hostport%%:*}
  if [ "$hostport" = "$host" ]; then echo "$host 5432"; else echo "$host ${hostport##*:}"; fi
}

# Prints "USER PASSWORD DB" of a postgres://[user[:password]@]host[:port]/db[?...] URL, "-"
# for each part the URL leaves out (no percent-decoding).
pg_user_password_db() {
  local rest=${1#*://} userinfo="" user password db
  case "$rest" in *@*) userinfo=${rest%%@*}; rest=${rest#*@} ;; esac
  user=${userinfo%%:*}
  password=""
  case "$userinfo" in *:*) password=${userinfo#*:} ;; esac
  db=""
  case "$rest" in */*) db=${rest#*/}; db=${db%%\?*} ;; esac
  echo "${user:--} ${password:--} ${db:--}"
}

# Succeeds when something accepts connections on HOST PORT (pg_isready when installed,
# else a bare TCP connect).
pg_server_up() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -t 3 -h "$1" -p "$2"
  else
    timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
  fi
}

# Succeeds when a PostgreSQL server accepts a session for URL (postgres://user:pw@host:port/db).
# With psql installed this proves that the database and role exist too; without it, only
# that the server is up. On failure, psql's message is left in PG_ERROR.
pg_reachable() {
  local host port
  PG_ERROR=""
  if command -v psql >/dev/null 2>&1; then
    PG_ERROR=$(PGCONNECT_TIMEOUT=3 psql "$1" -Atqc 'select 1' 2>&1 >/dev/null) && return 0
    return 1
  fi
  read -r host port <<<"$(pg_host_port "$1")"
  pg_server_up "$host" "$port"
}
