#!/usr/bin/env bash
# Runs every test of savepointd on this machine, installing what they need first (idempotent):
#   - the Rust suites: unit tests, config errors, the daemon end to end against the VVP simulator and
#     the fake Kubernetes API server (proved faithful with the real kubectl), retention properties;
#   - the Helm chart with the real Helm library (PyPI helm-python-sdk) and the Kubernetes schemas;
#   - the alert rules and dashboard with the real promtool (Debian package prometheus);
#   - the container image, built without a base image and run with the chart's security context (podman).
set -euo pipefail
cd "$(dirname "$0")/.."

cache=.cache
venv="$cache/venv"

# Python packages for the chart tests, in a private venv so the system Python is left alone.
if [ ! -x "$venv/bin/pytest" ] || ! cmp -s tests/chart/requirements.txt "$venv/requirements.txt"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/chart/requirements.txt
  cp tests/chart/requirements.txt "$venv/requirements.txt"
fi

# promtool and prometheus (Debian).
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "promtool is missing: run as root or 'sudo apt-get install -y prometheus'" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi
# podman and runc (Debian) build and run the container image in tests/image.rs.
if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "podman is missing: run as root or 'sudo apt-get install -y podman runc'" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null
fi
command -v kubectl >/dev/null || { echo "kubectl is missing (part of the machine image)" >&2; exit 1; }

# Apache Flink 2.3.0 and the demo job for the real-Flink tests (cached after the first run).
python3 scripts/flink_harness.py install >/dev/null

log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== cargo test"
cargo test --locked 2>&1 | tee -a "$log"

echo "== Helm chart"
SAVEPOINTD_BIN="$PWD/target/debug/savepointd" "$venv/bin/python" -m pytest tests/chart -q 2>&1 | tee -a "$log"

echo "== alert rules and dashboard"
bash tests/promtool/run.sh

# One closing line over every suite (cargo prints one result line per test binary).
passed=$(grep -hoE '[0-9]+ passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -hoE '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
echo "total: $passed passed, $failed failed"
