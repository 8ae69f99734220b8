#!/usr/bin/env bash
# Quickstart: a real local Apache Flink 2.3.0 session cluster with two demo jobs (demo-orders and
# demo-payments), and savepointd taking a savepoint of each every 15 seconds, keeping the newest three.
#
#   scripts/quickstart.sh                 # build, install Flink, start the cluster and jobs, run savepointd
#   scripts/quickstart.sh --cluster-only  # the cluster and jobs only, until Ctrl-C
#
# Needs cargo, python3 and a JDK (javac/jar, 11 or newer); the first run downloads Flink from PyPI
# (~330 MB) into .cache/flink. Everything this script starts is stopped again when it exits (Ctrl-C
# included).
#
# Environment:
#   PYTHON                      python interpreter (default python3)
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
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "quickstart: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m[quickstart]\033[0m %s\n' "$*" >&2; }
json_get() { "$PYTHON" -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
# savepointd reads every SAVEPOINTD_* variable as a config override; the two above are not config.
savepointd() {
  (cd "$REPO" && env -u SAVEPOINTD_FLINK_CACHE -u SAVEPOINTD_QUICKSTART_DIR cargo run --release --quiet -- "$@")
}

CLUSTER_STARTED=0
SLEEP_PID=
cleanup() {
  local rc=$?
  trap - EXIT
  trap '' INT TERM  # a second Ctrl-C must not interrupt the cleanup
  if [ -n "$SLEEP_PID" ]; then kill "$SLEEP_PID" 2>/dev/null || true; fi
  if [ "$CLUSTER_STARTED" = 1 ]; then
    say "stopping the Flink cluster in $QS_DIR"
    "${HARNESS[@]}" stop --dir "$QS_DIR" >/dev/null || say "warning: harness stop failed"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$CLUSTER_ONLY" = 0 ]; then
  say "building savepointd (release; the first build takes a few minutes)"
  (cd "$REPO" && cargo build --release --quiet)
fi

say "installing Flink 2.3.0 and building the demo job (cached after the first run)"
"${HARNESS[@]}" install >/dev/null

mkdir -p "$QS_DIR"
# A cluster left over from an earlier run that was killed hard: stop it (only its recorded PIDs).
"${HARNESS[@]}" stop --dir "$QS_DIR" >/dev/null 2>&1 || true

say "starting a Flink session cluster (config, logs and savepoints under $QS_DIR)"
CLUSTER_STARTED=1
CLUSTER_JSON="$("${HARNESS[@]}" start --dir "$QS_DIR")"
REST_URL="$(json_get "$CLUSTER_JSON" rest_url)"
say "Flink REST API and web UI: $REST_URL"

say "submitting demo-orders and demo-payments"
ORDERS_JOB="$(json_get "$("${HARNESS[@]}" submit --rest "$REST_URL" --name demo-orders --rate 100 --keys 100)" job_id)"
PAYMENTS_JOB="$(json_get "$("${HARNESS[@]}" submit --rest "$REST_URL" --name demo-payments --rate 50 --keys 20)" job_id)"

# The demo config with this cluster's port and this checkout's savepoint directory.
SAVEPOINTS="$QS_DIR/savepoints"
CONFIG="$QS_DIR/demo.yaml"
sed -e "s|http://127.0.0.1:8081|$REST_URL|" \
    -e "s|file:///tmp/savepointd-demo/savepoints|file://$SAVEPOINTS|" \
    "$TEMPLATE" > "$CONFIG"
grep -q "$REST_URL" "$CONFIG" && grep -q "file://$SAVEPOINTS" "$CONFIG" \
  || { echo "quickstart: $TEMPLATE no longer has the values to replace" >&2; exit 1; }

cat >&2 <<EOF

  Flink web UI / REST   $REST_URL   (jobs: $REST_URL/jobs/overview)
  demo-orders           $ORDERS_JOB
  demo-payments         $PAYMENTS_JOB
  savepointd config     $CONFIG
  savepoints            $SAVEPOINTS/<application>/savepoint-*   (every 15 s, the newest 3 kept)
  metrics               http://127.0.0.1:9090/metrics
  status                cargo run --release -- status --config $CONFIG
  Flink logs            $QS_DIR/log

EOF

if [ "$CLUSTER_ONLY" = 1 ]; then
  say "cluster running; press Ctrl-C to stop it"
  while true; do sleep 3600 & SLEEP_PID=$!; wait "$SLEEP_PID"; done
fi

say "running savepointd: cargo run --release -- run --config $CONFIG --log-format text (Ctrl-C stops it and the cluster)"
savepointd run --config "$CONFIG" --log-format text
