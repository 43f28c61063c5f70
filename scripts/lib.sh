# Shared by scripts/run and scripts/test: a virtual environment with the pinned
# dependencies, and RabbitMQ and PostgreSQL where AMQP_URI and the
# DATABASE_URL variables say: this machine's default ones are started if they
# are not running, any other is waited for.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

log() { printf '==> %s\n' "$*" >&2; }

ensure_venv() {  # ensure_venv [extra]  e.g. ensure_venv test
  local extra="${1:-}" py="${PYTHON:-python3}" spec="$ROOT" stamp
  if ! "$py" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)' 2>/dev/null; then
    echo "Warmi needs Python 3.11 or 3.12 (set PYTHON=/path/to/python3.11)" >&2
    exit 1
  fi
  [ -n "$extra" ] && spec="$ROOT[$extra]"
  local hash
  hash="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -c1-16)"
  stamp="$VENV/.installed-$hash-${extra:-base}"
  # an environment with the test extras holds everything the product needs
  if [ -z "$extra" ] && [ -f "$VENV/.installed-$hash-test" ]; then stamp="$VENV/.installed-$hash-test"; fi
  if [ ! -f "$stamp" ]; then
    log "installing pinned dependencies into .venv"
    [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$ROOT/constraints.txt" -e "$spec"
    rm -f "$VENV"/.installed-*
    touch "$stamp"
  fi
}

port_open() {  # port_open [HOST] PORT
  local host=127.0.0.1 port="$1"
  if [ $# -ge 2 ]; then host="$1" port="$2"; fi
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

wait_port() {  # wait_port [HOST] PORT SECONDS NAME
  local host=127.0.0.1 i
  if [ $# -ge 4 ]; then host="$1"; shift; fi
  for ((i = 0; i < $2 * 5; i++)); do port_open "$host" "$1" && return 0; sleep 0.2; done
  echo "$3 did not come up on $host:$1" >&2
  return 1
}

url_host_port() {  # url_host_port URL DEFAULT_PORT  ->  "HOST PORT"
  local rest="${1#*://}" host port
  rest="${rest%%/*}"
  rest="${rest%%\?*}"
  rest="${rest##*@}"  # user:password@
  if [[ "$rest" == \[* ]]; then  # [IPv6]:port
    host="${rest%%]*}" host="${host#[}" port="${rest#*]}" port="${port#:}"
  else
    host="${rest%%:*}" port=""
    [[ "$rest" == *:* ]] && port="${rest##*:}"
  fi
  printf '%s %s\n' "${host:-127.0.0.1}" "${port:-$2}"
}

is_this_machine() { case "$1" in 127.0.0.1 | localhost | ::1) return 0 ;; *) return 1 ;; esac; }

ensure_rabbitmq() {  # ensure_rabbitmq [URL]  (default: AMQP_URI)
  local url="${1:-${AMQP_URI:-amqp://guest:guest@127.0.0.1:5672/}}" host port
  read -r host port <<<"$(url_host_port "$url" 5672)"
  if is_this_machine "$host" && [ "$port" = 5672 ]; then
    if ! port_open "$host" "$port"; then
      log "starting RabbitMQ"
      rabbitmq-server -detached
      wait_port "$host" "$port" 90 RabbitMQ || exit 1
    fi
    rabbitmqctl await_startup >/dev/null 2>&1 || true
  elif ! port_open "$host" "$port"; then
    # not this machine's default broker: not ours to start, only to wait for
    log "waiting for RabbitMQ at $host:$port"
    wait_port "$host" "$port" 90 "RabbitMQ (from AMQP_URI)" || {
      echo "start that RabbitMQ, or set AMQP_URI to one that runs" >&2; exit 1; }
  fi
}

ensure_postgres() {  # ensure_postgres [URL...]  (default: DATABASE_URL and every <SERVICE>_DATABASE_URL)
  local urls=("$@") url host port seen=" "
  if [ ${#urls[@]} -eq 0 ]; then
    urls=("${DATABASE_URL:-}" "${CASES_DATABASE_URL:-}" "${NOTIFICATIONS_DATABASE_URL:-}"
          "${REFERRALS_DATABASE_URL:-}" "${IDENTITY_DATABASE_URL:-}")
  fi
  for url in "${urls[@]}"; do
    case "$url" in postgres*) ;; *) continue ;; esac
    read -r host port <<<"$(url_host_port "$url" 5432)"
    case "$seen" in *" $host:$port "*) continue ;; esac
    seen="$seen$host:$port "
    if is_this_machine "$host" && [ "$port" = 5432 ]; then
      if ! port_open "$host" "$port"; then
        log "starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
        wait_port "$host" "$port" 60 PostgreSQL || exit 1
      fi
    elif ! port_open "$host" "$port"; then
      log "waiting for PostgreSQL at $host:$port"
      wait_port "$host" "$port" 60 "PostgreSQL (from a DATABASE_URL)" || {
        echo "start that PostgreSQL server, or set the DATABASE_URL variables to one that runs" >&2; exit 1; }
    fi
  done
}
