#!/usr/bin/env bash
# Quickstart: a real local Apache Flink 2.3.0 session cluster with two demo jobs (demo-orders and
# demo-payments), and savepointd taking a savepoint of each every 15 seconds, keeping the newest three.
#
#   scripts/quickstart.sh                 # build, install Flink, start the cluster and jobs, run savepointd
#   scripts/quickstart.sh --cluster-only  # the cluster and jobs only, until stopped
#
# Needs cargo, python3 and a JDK 11 or newer (javac and jar; 17 is what CI uses). The first run builds
# savepointd in release mode (several minutes on two cores; cargo shows its progress) and downloads Flink
# from PyPI (~330 MB) into .cache/flink. Ctrl-C, or SIGTERM/SIGINT to this script's PID, stops everything
# it started; if the script itself is killed hard, a watcher stops the daemon and the cluster.
#
# Environment:
#   PYTHON                      python interpreter (default python3)
#   SAVEPOINTD_BIN              a savepointd binary to use instead of building the release one
#   SAVEPOINTD_FLINK_CACHE      Flink venv + job jar cache (default .cache/flink)
#   SAVEPOINTD_QUICKSTART_DIR   cluster config, logs, savepoints and the demo config (default .cache/quickstart)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
HARNESS=("$PYTHON" "$REPO/scripts/flink_harness.py")
QS_DIR="${SAVEPOINTD_QUICKSTART_DIR:-$REPO/.cache/quickstart}"
TEMPLATE="$REPO/config/demo.yaml"
CLUSTER_ONLY=0

for arg in "$@"; do
  case "$arg" in
    --cluster-only) CLUSTER_ONLY=1 ;;
    # The comment block at the top, and nothing after it.
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "quickstart: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

say() {
  if [ -t 2 ] && [ -z "${NO_COLOR:-}" ]; then printf '\033[1m[quickstart]\033[0m %s\n' "$*" >&2
  else printf '[quickstart] %s\n' "$*" >&2; fi
}
json_get() { "$PYTHON" -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
# A loopback port for /metrics: 9090 unless it is taken (Prometheus's own default), else a free one.
metrics_port() {
  "$PYTHON" - <<'EOF'
import socket
s = socket.socket()
try:
    s.bind(("127.0.0.1", 9090))
except OSError:
    s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
EOF
}

CLUSTER_STARTED=0
DAEMON_PID=
WATCHER_PID=
SLEEP_PID=
STOPPED=()
cleanup() {
  local rc=$?
  trap - EXIT
  trap '' INT TERM  # a second Ctrl-C must not interrupt the cleanup
  if [ -n "$SLEEP_PID" ]; then kill "$SLEEP_PID" 2>/dev/null || true; fi
  if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    say "stopping savepointd (pid $DAEMON_PID): in-flight savepoints get its shutdown grace"
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
    STOPPED+=("savepointd (pid $DAEMON_PID)")
  fi
  if [ "$CLUSTER_STARTED" = 1 ]; then
    say "stopping the Flink cluster in $QS_DIR"
    "${HARNESS[@]}" stop --dir "$QS_DIR" >/dev/null || say "warning: harness stop failed"
    STOPPED+=("the Flink cluster (logs in $QS_DIR/log)")
  fi
  if [ -n "$WATCHER_PID" ]; then kill "$WATCHER_PID" 2>/dev/null || true; fi
  rm -f "$QS_DIR/savepointd.pid"
  if [ "${#STOPPED[@]}" -gt 0 ]; then
    say "stopped: $(IFS=,; echo "${STOPPED[*]}" | sed 's/,/, /g')"
    say "savepoints are kept in ${SAVEPOINTS:-$QS_DIR/savepoints}"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -n "${SAVEPOINTD_BIN:-}" ]; then
  BIN="$SAVEPOINTD_BIN"
elif [ "$CLUSTER_ONLY" = 0 ]; then
  say "building savepointd (release; the first build takes several minutes)"
  (cd "$REPO" && cargo build --release --locked)
  BIN="$REPO/target/release/savepointd"
fi

say "installing Flink 2.3.0 and building the demo job (cached after the first run)"
"${HARNESS[@]}" install >/dev/null

mkdir -p "$QS_DIR"
# A cluster left over from an earlier run that was killed hard: stop it (only its recorded PIDs).
"${HARNESS[@]}" stop --dir "$QS_DIR" >/dev/null 2>&1 || true

say "starting a Flink session cluster (config, logs and savepoints under $QS_DIR)"
CLUSTER_STARTED=1
# If this script dies without its traps (kill -9), nothing it started may outlive it: a watcher stops
# the cluster and the daemon once this PID is gone.
(
  trap '' INT TERM
  while kill -0 $$ 2>/dev/null; do sleep 1; done
  if [ -f "$QS_DIR/savepointd.pid" ]; then kill -TERM "$(cat "$QS_DIR/savepointd.pid")" 2>/dev/null || true; fi
  "${HARNESS[@]}" stop --dir "$QS_DIR" >/dev/null 2>&1 || true
) </dev/null >/dev/null 2>&1 &
WATCHER_PID=$!
CLUSTER_JSON="$("${HARNESS[@]}" start --dir "$QS_DIR")"
REST_URL="$(json_get "$CLUSTER_JSON" rest_url)"
say "Flink REST API and web UI: $REST_URL"

say "submitting demo-orders and demo-payments"
ORDERS_JOB="$(json_get "$("${HARNESS[@]}" submit --rest "$REST_URL" --name demo-orders --rate 100 --keys 100)" job_id)"
PAYMENTS_JOB="$(json_get "$("${HARNESS[@]}" submit --rest "$REST_URL" --name demo-payments --rate 50 --keys 20)" job_id)"

# The demo config with this cluster's port, a free metrics port and this checkout's savepoint directory.
SAVEPOINTS="$QS_DIR/savepoints"
CONFIG="$QS_DIR/demo.yaml"
PORT="$(metrics_port)"
sed -e "s|http://127.0.0.1:8081|$REST_URL|" \
    -e "s|file:///tmp/savepointd-demo/savepoints|file://$SAVEPOINTS|" \
    -e "s|listen: 127.0.0.1:9090|listen: 127.0.0.1:$PORT|" \
    "$TEMPLATE" > "$CONFIG"
grep -q "$REST_URL" "$CONFIG" && grep -q "file://$SAVEPOINTS" "$CONFIG" && grep -q "127.0.0.1:$PORT" "$CONFIG" \
  || { echo "quickstart: $TEMPLATE no longer has the values to replace" >&2; exit 1; }
if [ "$PORT" != 9090 ]; then say "port 9090 is taken; /metrics is on $PORT"; fi

cat >&2 <<EOF

  Flink web UI / REST   $REST_URL   (jobs: $REST_URL/jobs/overview)
  demo-orders           $ORDERS_JOB
  demo-payments         $PAYMENTS_JOB
  savepointd config     $CONFIG
  savepoints            $SAVEPOINTS/<application>/slot-<slot>/savepoint-*   (every 15 s, the newest 3 kept)
  metrics               http://127.0.0.1:$PORT/metrics
  status                ${BIN:-target/release/savepointd} status --config $CONFIG
  Flink logs            $QS_DIR/log

EOF

if [ "$CLUSTER_ONLY" = 1 ]; then
  say "cluster running; Ctrl-C (or kill $$) stops it"
  while true; do sleep 3600 & SLEEP_PID=$!; wait "$SLEEP_PID"; done
fi

say "running savepointd: $BIN run --config $CONFIG --log-format text (Ctrl-C, or kill $$, stops it and the cluster)"
# In the background and waited for, so that a signal to this script's PID runs the trap at once.
"$BIN" run --config "$CONFIG" --log-format text &
DAEMON_PID=$!
echo "$DAEMON_PID" > "$QS_DIR/savepointd.pid"
wait "$DAEMON_PID"
