# Shared by scripts/run and scripts/test: a virtual environment with the pinned
# dependencies, and the local RabbitMQ and PostgreSQL started if they are not.
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

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {  # wait_port PORT SECONDS NAME
  local i
  for ((i = 0; i < $2 * 5; i++)); do port_open "$1" && return 0; sleep 0.2; done
  echo "$3 did not come up on port $1" >&2
  return 1
}

ensure_rabbitmq() {
  if ! port_open 5672; then
    log "starting RabbitMQ"
    rabbitmq-server -detached
    wait_port 5672 90 RabbitMQ
  fi
  rabbitmqctl await_startup >/dev/null 2>&1 || true
}

ensure_postgres() {
  if ! port_open 5432; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    wait_port 5432 60 PostgreSQL
  fi
}
