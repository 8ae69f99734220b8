#!/usr/bin/env bash
# Quickstart: a real local Apache Flink 2.3.0 session cluster with two demo jobs,
# and savepointd running against it.
#
#   scripts/quickstart.sh                 # install, start cluster, submit jobs, run savepointd
#   scripts/quickstart.sh --cluster-only  # same, but keep only the cluster running until Ctrl-C
#
# Needs python3 and a JDK (javac/jar, 11 or newer); the first run downloads Flink
# from PyPI (~330 MB) into .cache/flink. Everything this script starts is stopped
# again when it exits (Ctrl-C included).
#
# Environment:
#   PYTHON                      python interpreter (default python3)
#   SAVEPOINTD_FLINK_CACHE      Flink venv + job jar cache (default .cache/flink)
#   SAVEPOINTD_QUICKSTART_DIR   cluster config, logs and savepoints (default .cache/quickstart)
#   SAVEPOINTD_CONFIG           savepointd config (default config/demo.yaml)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
HARNESS=("$PYTHON" "$REPO/scripts/flink_harness.py")
QS_DIR="${SAVEPOINTD_QUICKSTART_DIR:-$REPO/.cache/quickstart}"
CONFIG="${SAVEPOINTD_CONFIG:-config/demo.yaml}"
CLUSTER_ONLY=0

for arg in "$@"; do
  case "$arg" in
    --cluster-only) CLUSTER_ONLY=1 ;;
    -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "quickstart: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m[quickstart]\033[0m %s\n' "$*" >&2; }
json_get() { "$PYTHON" -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

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

# Values a savepointd config can refer to; also written to a file for other shells.
export SAVEPOINTD_FLINK_REST_URL="$REST_URL"
export SAVEPOINTD_DEMO_ORDERS_JOB_ID="$ORDERS_JOB"
export SAVEPOINTD_DEMO_PAYMENTS_JOB_ID="$PAYMENTS_JOB"
export SAVEPOINTD_DEMO_SAVEPOINT_DIR="file://$QS_DIR/savepoints"
cat > "$QS_DIR/env" <<EOF
SAVEPOINTD_FLINK_REST_URL=$REST_URL
SAVEPOINTD_DEMO_ORDERS_JOB_ID=$ORDERS_JOB
SAVEPOINTD_DEMO_PAYMENTS_JOB_ID=$PAYMENTS_JOB
SAVEPOINTD_DEMO_SAVEPOINT_DIR=file://$QS_DIR/savepoints
EOF

cat >&2 <<EOF

  Flink web UI / REST   $REST_URL   (jobs: $REST_URL/jobs/overview)
  demo-orders           $ORDERS_JOB
  demo-payments         $PAYMENTS_JOB
  savepoints            $QS_DIR/savepoints  (or the target in $CONFIG)
  Flink logs            $QS_DIR/log
  environment           $QS_DIR/env

EOF

if [ "$CLUSTER_ONLY" = 1 ]; then
  say "cluster running; press Ctrl-C to stop it"
  while true; do sleep 3600 & SLEEP_PID=$!; wait "$SLEEP_PID"; done
fi

say "running savepointd: cargo run --release -- run --config $CONFIG (Ctrl-C stops it and the cluster)"
cd "$REPO"
cargo run --release -- run --config "$CONFIG"
