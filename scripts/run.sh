#!/usr/bin/env bash
# One command to run the whole system on this machine (make run):
#   Temporal dev server (durable SQLite file, Web UI), the worker, the API.
# Ctrl-C stops everything cleanly. Running it again keeps every order and resumes every
# saga that was waiting, because Temporal and the service database live in $DATA_DIR.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
DATA_DIR=${DATA_DIR:-data}
TEMPORAL_PORT=${TEMPORAL_PORT:-7233}
TEMPORAL_UI_PORT=${TEMPORAL_UI_PORT:-8233}
API_PORT=${API_PORT:-8000}
HOST=${HOST:-127.0.0.1}

export TEMPORAL_ADDRESS=${TEMPORAL_ADDRESS:-$HOST:$TEMPORAL_PORT}
export TEMPORAL_UI_URL=${TEMPORAL_UI_URL:-http://$HOST:$TEMPORAL_UI_PORT}
export DATABASE_URL=${DATABASE_URL:-sqlite:///$DATA_DIR/orders.db}

mkdir -p "$DATA_DIR/logs"
PIDS_FILE="$DATA_DIR/run.pids"

say() { printf '\033[1m[run]\033[0m %s\n' "$*"; }

# A previous run stopped with kill -9 may have left its children behind: stop them.
if [[ -f "$PIDS_FILE" ]]; then
  while read -r pid; do
    # Only our own leftovers: alive and running from this checkout.
    if [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$(pwd)" ]]; then
      say "stopping process $pid left behind by a previous run"
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done <"$PIDS_FILE"
  rm -f "$PIDS_FILE"
fi

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
for port in "$TEMPORAL_PORT" "$TEMPORAL_UI_PORT" "$API_PORT"; do
  if port_busy "$port"; then
    say "port $port on $HOST is already in use: stop what uses it, or set TEMPORAL_PORT / TEMPORAL_UI_PORT / API_PORT"
    exit 1
  fi
done

children=()
stop_all() {
  trap - INT TERM EXIT
  say "stopping..."
  # API first, then the worker (it finishes in-flight activities), then Temporal.
  for ((i = ${#children[@]} - 1; i >= 0; i--)); do
    kill -TERM "${children[i]}" 2>/dev/null || true
    wait "${children[i]}" 2>/dev/null || true
  done
  rm -f "$PIDS_FILE"
  say "stopped. Data kept in $DATA_DIR/ (delete it to start from scratch)."
}
trap 'interrupted=1; exit 0' INT TERM
trap stop_all EXIT

start() { # name, command...
  local name=$1
  shift
  # Its own session: Ctrl-C reaches only this script, which stops the parts in order.
  setsid "$@" >>"$DATA_DIR/logs/$name.log" 2>&1 &
  children+=($!)
  echo $! >>"$PIDS_FILE"
}

wait_until() { # description, seconds, command...
  local what=$1 seconds=$2
  shift 2
  for ((i = 0; i < seconds * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    for pid in "${children[@]}"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        say "a process died while waiting for $what; see $DATA_DIR/logs/"
        tail -n 20 "$DATA_DIR"/logs/*.log
        exit 1
      fi
    done
    sleep 0.1
  done
  say "$what did not come up within ${seconds}s; see $DATA_DIR/logs/"
  exit 1
}

say "starting Temporal dev server (data: $DATA_DIR/temporal.db)"
start temporal "$VENV/bin/temporal" server start-dev \
  --ip "$HOST" --port "$TEMPORAL_PORT" --ui-port "$TEMPORAL_UI_PORT" \
  --db-filename "$DATA_DIR/temporal.db" \
  --sqlite-pragma journal_mode=wal --sqlite-pragma synchronous=normal \
  --search-attribute OrderStatus=Keyword --search-attribute CustomerId=Keyword \
  --log-level warn
wait_until "Temporal" 60 "$VENV/bin/temporal" operator cluster health --address "$TEMPORAL_ADDRESS"

# Migrates the schema (alembic upgrade head) before seeding; the worker and the API migrate too
# at startup, which is then a no-op.
say "migrating the database and adding demo dealers ($DATABASE_URL)"
"$VENV/bin/python" -m store seed

say "starting the worker"
start worker "$VENV/bin/python" worker.py

say "starting the API"
start api "$VENV/bin/uvicorn" api.app:create_app --factory --host "$HOST" --port "$API_PORT"
wait_until "the API" 60 "$VENV/bin/python" -c \
  "import urllib.request; urllib.request.urlopen('http://$HOST:$API_PORT/healthz', timeout=1)"

cat <<MSG

  Order saga is running.
    API docs        http://$HOST:$API_PORT/docs
    Temporal Web UI $TEMPORAL_UI_URL/namespaces/default/workflows
    Logs            $DATA_DIR/logs/{temporal,worker,api}.log

  Try it:
    curl -s -X POST http://$HOST:$API_PORT/orders -H 'Content-Type: application/json' \\
      -d '{"customer_id":"c1","items":[{"product_id":"book","quantity":2,"unit_price":"12.50"}],"province":"Tehran","city":"Tehran"}'
    curl -s -X POST http://$HOST:$API_PORT/payments/<payment_id>/confirm
    curl -s http://$HOST:$API_PORT/orders/<order_id>

  Press Ctrl-C to stop.
MSG

# Stop everything as soon as any part dies, rather than run half a system.
wait -n "${children[@]}" || true
[[ -n ${interrupted:-} ]] || say "a process exited unexpectedly; see $DATA_DIR/logs/"
exit 1
