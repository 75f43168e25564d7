#!/usr/bin/env bash
# One command to run the whole system on this machine (make run):
#   Temporal dev server (durable SQLite file, Web UI), NATS with JetStream (its store on
#   disk: the choreographed saga's events), the worker (both saga styles), the API.
# SAGA_STYLE=choreography runs new orders as events between the services instead of as a
# Temporal workflow; orders of either style keep running whatever the style of the next run.
# A part that exits unexpectedly (a crash, kill -9, a worker that gave up while Temporal was
# down) is started again: after 1 s, then 2, 4, ... up to 30 s while it keeps exiting.
# Ctrl-C stops everything cleanly. Running it again keeps every order and resumes every
# saga that was waiting, because Temporal, NATS and the service database live in $DATA_DIR.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
DATA_DIR=${DATA_DIR:-data}
TEMPORAL_PORT=${TEMPORAL_PORT:-7233}
TEMPORAL_UI_PORT=${TEMPORAL_UI_PORT:-8233}
API_PORT=${API_PORT:-8000}
# Our own NATS, not a system one that may run on 4222.
NATS_PORT=${NATS_PORT:-14222}
HOST=${HOST:-127.0.0.1}

export TEMPORAL_ADDRESS=${TEMPORAL_ADDRESS:-$HOST:$TEMPORAL_PORT}
export TEMPORAL_UI_URL=${TEMPORAL_UI_URL:-http://$HOST:$TEMPORAL_UI_PORT}
export DATABASE_URL=${DATABASE_URL:-sqlite:///$DATA_DIR/orders.db}
export SAGA_STYLE=${SAGA_STYLE:-orchestration}
# NATS_URL set: that NATS is used and none is started here.
OWN_NATS=
if [[ -z ${NATS_URL:-} ]]; then
  OWN_NATS=1
  export NATS_URL=nats://$HOST:$NATS_PORT
fi
# A development run: no API keys or customer tokens unless you set AUTH_MODE otherwise.
export AUTH_MODE=${AUTH_MODE:-dev}
# The saga's build (a hash of workflows/ and domain/): the workers run as its Worker Deployment
# Version, made current at every start, and each saga stays on the build it started on. The
# code of each build is kept under $DATA_DIR/builds/: after a change to the saga, the older
# builds' workers run from there beside the new ones until their last saga ends.
BUILD_ID=$("$VENV/bin/python" versions.py build-id)
export WORKER_BUILD_ID=$BUILD_ID WORKER_PROMOTE=always
BUILDS_DIR=$DATA_DIR/builds

mkdir -p "$DATA_DIR/logs"
# "<pid> <name>" of each part running now, in the order to stop them; rewritten on every
# (re)start, so a later run can stop what this one leaves behind if it is killed with kill -9.
PIDS_FILE="$DATA_DIR/run.pids"
# Where this run's parts are, for the command line (ordersaga demo, builds) in another shell;
# no secret goes in it. Removed when the run stops.
SYSTEM_FILE="$DATA_DIR/system.env"

if [[ -t 1 ]]; then
  say() { printf '\033[1m[run]\033[0m %s\n' "$*"; }
else
  say() { printf '[run] %s\n' "$*"; }
fi

terminate() { # pid, seconds: SIGTERM, then SIGKILL if it is still running after that long
  local pid=$1 seconds=$2 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < seconds * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    [[ -z ${hurry:-} ]] || break # a second Ctrl-C: no more waiting
    sleep 0.1 || true
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# The program each part runs (a word of its command line), to recognise a leftover part.
declare -A PROGRAM=([temporal]=temporal [nats]=nats-server [worker]=worker.py [api]=uvicorn)
program_of() { # name: an older build's workers ("drain-<build>") run worker.py too
  [[ $1 != drain-* ]] && echo "${PROGRAM[$1]:-}" || echo worker.py
}

is_part() { # pid, name: whether pid is still that part, run from this checkout
  local pid=$1 program word
  program=$(program_of "$2")
  [[ -n $program && "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$(pwd)" ]] || return 1
  # A part that died leaves its pid free for any process (pids wrap quickly, at 32768 on
  # many machines), maybe one from this checkout too: a shell, a test run. The command line
  # tells them apart.
  while IFS= read -r -d '' word; do
    [[ $word != "$program" && $word != */"$program" ]] || return 0
  done 2>/dev/null <"/proc/$pid/cmdline"
  return 1
}

# A previous run stopped with kill -9 may have left its parts behind: stop them.
if [[ -f "$PIDS_FILE" ]]; then
  while read -r pid name; do
    # Only our own leftovers: alive, running from this checkout, and still that part.
    if is_part "$pid" "$name"; then
      say "stopping $name (process $pid) left behind by a previous run"
      terminate "$pid" 15
    fi
  done <"$PIDS_FILE"
  rm -f "$PIDS_FILE"
fi

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
PORTS=("$TEMPORAL_PORT" "$TEMPORAL_UI_PORT" "$API_PORT")
[[ -z $OWN_NATS ]] || PORTS+=("$NATS_PORT")
for port in "${PORTS[@]}"; do
  if port_busy "$port"; then
    say "port $port on $HOST is already in use: stop what uses it, or set TEMPORAL_PORT / TEMPORAL_UI_PORT / API_PORT / NATS_PORT"
    exit 1
  fi
done

# The parts, in start order; they are stopped in reverse (API, worker, NATS, Temporal). Each
# runs in its own session (setsid): Ctrl-C reaches only this script, which stops them in order.
# `exec` keeps one process per part, so $! is the part's own pid.
PARTS=(temporal)
[[ -z $OWN_NATS ]] || PARTS+=(nats)
PARTS+=(worker api)
# This build's code, kept while it has sagas; each older build's kept code runs as a part
# "drain-<build>" that stops, and is removed, once no saga is pinned to it any more.
[[ -d "$BUILDS_DIR/$BUILD_ID" ]] || "$VENV/bin/python" versions.py snapshot "$BUILDS_DIR/$BUILD_ID"
OLD_BUILDS=()
for dir in "$BUILDS_DIR"/*/; do
  build=$(basename "$dir")
  [[ $build == "$BUILD_ID" ]] || OLD_BUILDS+=("$build")
done
for build in "${OLD_BUILDS[@]}"; do PARTS+=("drain-$build"); done
# The dev server's one history shard polls its queues 20 times a second by default, so every
# workflow task waits ~40 ms before a worker sees it; at 500/s an order reaches IN_TRANSIT in
# ~100-150 ms instead of ~400 (docs/performance.md). For one person trying the system the fast
# saga is what counts. `make bench` polls at 100/s (--poll-rps): under load that evens out the
# stack's work as well as 500 does, for less server CPU.
POLL_RATES=()
for queue in transfer timer visibility; do
  POLL_RATES+=(--dynamic-config-value "history.${queue}ProcessorMaxPollRPS=500")
done
run_temporal() {
  exec setsid "$VENV/bin/temporal" server start-dev \
    --ip "$HOST" --port "$TEMPORAL_PORT" --ui-port "$TEMPORAL_UI_PORT" \
    --db-filename "$DATA_DIR/temporal.db" \
    --sqlite-pragma journal_mode=wal --sqlite-pragma synchronous=normal \
    --search-attribute OrderStatus=Keyword \
    --ui-codec-endpoint "http://$HOST:$API_PORT/codec" \
    "${POLL_RATES[@]}" --log-level warn
}
run_nats() {
  # JetStream on, its streams (the events, the dead letters) stored under $DATA_DIR/nats.
  exec setsid "$VENV/bin/nats-server" -a "$HOST" -p "$NATS_PORT" -js -sd "$DATA_DIR/nats"
}
run_worker() { exec setsid "$VENV/bin/python" worker.py; }
run_drain() { # build: its workers from its kept code (imported first, as the script's folder)
  WORKER_BUILD_ID=$1 WORKER_PROMOTE=never exec setsid \
    "$VENV/bin/python" "$BUILDS_DIR/$1/worker.py" --drain
}
run_api() {
  exec setsid "$VENV/bin/uvicorn" api.app:create_app --factory --host "$HOST" --port "$API_PORT"
}

declare -A part_pid=()     # name -> pid of the running part; unset while it waits to restart
declare -A started_at=()   # name -> $SECONDS when it was last started
declare -A restart_at=()   # name -> $SECONDS when to start it again (while part_pid is unset)
declare -A delay=()        # name -> seconds waited before its last restart
declare -A restarts=()     # name -> how many times it was restarted

write_pids() {
  local i name
  for ((i = ${#PARTS[@]} - 1; i >= 0; i--)); do
    name=${PARTS[i]}
    [[ -z ${part_pid[$name]:-} ]] || echo "${part_pid[$name]} $name"
  done >"$PIDS_FILE.new"
  mv -f "$PIDS_FILE.new" "$PIDS_FILE"
}

start() { # name
  if [[ $1 == drain-* ]]; then
    run_drain "${1#drain-}" >>"$DATA_DIR/logs/$1.log" 2>&1 &
  else
    "run_$1" >>"$DATA_DIR/logs/$1.log" 2>&1 &
  fi
  part_pid[$1]=$!
  started_at[$1]=$SECONDS
  write_pids
}

# Signals only raise a flag, checked between steps: a signal handled in the middle of start()
# could otherwise lose a pid that was just started, and leave that process running.
# SIGHUP too: closing the terminal stops everything rather than leave the parts running.
stopping=
trap 'stopping=1' INT TERM HUP
stop_if_asked() { [[ -z $stopping ]] || exit 0; }

stop_all() {
  set +e # best effort from here: one failing step (a closed terminal) must not skip the rest
  trap 'hurry=1' INT TERM HUP
  trap - EXIT
  say "stopping..."
  local i name
  # API first, then the worker (up to 10 s to finish in-flight activities), then NATS and
  # Temporal.
  for ((i = ${#PARTS[@]} - 1; i >= 0; i--)); do
    name=${PARTS[i]}
    [[ -n ${part_pid[$name]:-} ]] || continue
    terminate "${part_pid[$name]}" 15
    wait "${part_pid[$name]}" 2>/dev/null || true
    unset "part_pid[$name]"
    write_pids
  done
  rm -f "$PIDS_FILE" "$SYSTEM_FILE"
  say "stopped. Data kept in $DATA_DIR/ (delete it to start from scratch)."
  # Asked to stop (Ctrl-C, SIGTERM): that is success, even if a step was interrupted.
  [[ -z $stopping ]] || exit 0
}
trap stop_all EXIT

wait_until() { # description, seconds, command...
  local what=$1 seconds=$2 i pid
  shift 2
  for ((i = 0; i < seconds * 10; i++)); do
    stop_if_asked
    if "$@" >/dev/null 2>&1; then return 0; fi
    for pid in "${part_pid[@]}"; do
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

# One pass of the supervision: notice each part that exited, start it again once its delay
# is over. A single loop in this script, rather than one supervisor process per part: every
# part is a child of this script (so `wait` gives its exit status), one process owns the pid
# file, nothing restarts a part once stopping has begun (the loop is left first), and kill -9
# of this script leaves no supervisor behind to restart what the next run stops.
retire() { # name of a drained build's part
  local build=${1#drain-} kept=() part
  for part in "${PARTS[@]}"; do [[ $part == "$1" ]] || kept+=("$part"); done
  PARTS=("${kept[@]}")
  rm -rf "${BUILDS_DIR:?}/$build"
  say "build $build has no open saga left: its workers stopped"
}

supervise() {
  local name status message
  for name in "${PARTS[@]}"; do
    stop_if_asked
    if [[ -n ${part_pid[$name]:-} ]]; then
      # This shell reaps its children as they exit, so a dead part fails kill -0.
      ! kill -0 "${part_pid[$name]}" 2>/dev/null || continue
      status=0
      wait "${part_pid[$name]}" || status=$?
      unset "part_pid[$name]"
      write_pids
      if [[ $name == drain-* && $status == 0 ]]; then
        # Its last saga ended: the build's workers are done, and so is its kept code.
        retire "$name"
        continue
      fi
      if ((SECONDS - started_at[$name] >= 60)); then
        delay[$name]=1 # it ran for a while: this is a new failure, not the same one again
      else
        delay[$name]=$((${delay[$name]:-0} * 2))
        ((delay[$name] >= 1)) || delay[$name]=1
        ((delay[$name] <= 30)) || delay[$name]=30
      fi
      restarts[$name]=$((${restarts[$name]:-0} + 1))
      restart_at[$name]=$((SECONDS + delay[$name]))
      message="$name exited (status $status); restarting in ${delay[$name]}s (restart ${restarts[$name]})"
      say "$message"
      echo "[run] $message" >>"$DATA_DIR/logs/$name.log"
    elif ((SECONDS >= ${restart_at[$name]:-0})); then
      start "$name"
    fi
  done
}

say "starting Temporal dev server (data: $DATA_DIR/temporal.db)"
start temporal
wait_until "Temporal" 60 "$VENV/bin/temporal" operator cluster health --address "$TEMPORAL_ADDRESS"

if [[ -n $OWN_NATS ]]; then
  say "starting NATS with JetStream (data: $DATA_DIR/nats)"
  start nats
  wait_until "NATS" 30 port_busy "$NATS_PORT"
fi

# Migrates the schema (alembic upgrade head) before seeding; the worker and the API migrate too
# at startup, which is then a no-op.
say "migrating the database and adding demo dealers ($DATABASE_URL)"
"$VENV/bin/python" -m store seed
stop_if_asked

say "starting the worker (build $BUILD_ID; new orders run as: $SAGA_STYLE)"
start worker
for build in "${OLD_BUILDS[@]}"; do
  say "starting build $build's workers for the sagas still pinned to it"
  start "drain-$build"
done

if [[ $AUTH_MODE == dev ]]; then
  say "auth is off (AUTH_MODE=dev): a development run on $HOST; production needs OPERATOR_API_KEYS and/or CUSTOMER_TOKEN_SECRETS, and ORDER_ID_SECRET (docs/configuration.md)"
  [[ -n ${PAYLOAD_KEYS:-} ]] || say "Temporal payloads are encrypted with the public development key; production needs PAYLOAD_KEYS"
fi
say "starting the API"
start api
wait_until "the API" 60 "$VENV/bin/python" -c \
  "import urllib.request; urllib.request.urlopen('http://$HOST:$API_PORT/healthz', timeout=1)"

(
  umask 077
  cat >"$SYSTEM_FILE" <<ENV
TEMPORAL_ADDRESS='$TEMPORAL_ADDRESS'
TEMPORAL_UI_URL='$TEMPORAL_UI_URL'
DATABASE_URL='$DATABASE_URL'
NATS_URL='$NATS_URL'
SAGA_STYLE='$SAGA_STYLE'
AUTH_MODE='$AUTH_MODE'
WORKER_BUILD_ID='$BUILD_ID'
ENV
)

cat <<MSG

  Order saga is running.
    API docs        http://$HOST:$API_PORT/docs
    Temporal Web UI $TEMPORAL_UI_URL/namespaces/default/workflows (payloads in clear through
                    the API's codec server, http://$HOST:$API_PORT/codec)
    NATS JetStream  $NATS_URL
    Saga style      $SAGA_STYLE (of new orders; GET /orders/<order_id> shows each one's)
    Logs            $DATA_DIR/logs/{temporal,nats,worker,api}.log
    Command line    ordersaga demo, ordersaga orders, ... (this run: $SYSTEM_FILE)

  Try it:
    curl -s -X POST http://$HOST:$API_PORT/orders -H 'Content-Type: application/json' \\
      -d '{"customer_id":"c1","items":[{"product_id":"book","quantity":2,"unit_price":"12.50"}],"province":"Tehran","city":"Tehran"}'
    curl -s -X POST http://$HOST:$API_PORT/payments/<payment_id>/confirm
    curl -s http://$HOST:$API_PORT/orders/<order_id>

  Press Ctrl-C to stop.
MSG

# Until Ctrl-C or SIGTERM (then the EXIT trap stops everything). This shell's stderr goes to
# run.log here: bash reports there each child killed by a signal ("Killed ..."), which the
# restart line already says.
while true; do
  supervise
  sleep 0.5
done 2>>"$DATA_DIR/logs/run.log"
