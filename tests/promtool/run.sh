#!/usr/bin/env bash
# Checks the savepointd alert rules and dashboard with the real promtool:
#   1. promtool check rules   - the rule files parse and their expressions are valid PromQL
#   2. promtool test rules    - the alert unit tests (each alert firing and staying silent)
#   3. exprs.py --check       - the dashboard JSON parses, has its variables and datasource, every panel
#                               target has an expression and is listed, and every metric is in the contract
#   4. promtool check rules   - on a generated file holding every dashboard expression, so each one
#                               (with variables substituted) is checked as PromQL too
# Needs promtool (Debian: apt-get install -y prometheus) and python3.
set -euo pipefail

cd "$(dirname "$0")/../.."
here=tests/promtool

command -v promtool >/dev/null || { echo "promtool not found (apt-get install -y prometheus)" >&2; exit 1; }

echo "== promtool check rules"
promtool check rules charts/savepointd/rules/*.yaml

echo "== promtool test rules"
promtool test rules "$here"/*.test.yaml

echo "== dashboard"
python3 -m json.tool charts/savepointd/dashboards/savepointd.json >/dev/null
python3 "$here/exprs.py" --check

echo "== dashboard expressions as PromQL"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 "$here/exprs.py" --as-rules >"$tmp/dashboard-expressions.yaml"
promtool check rules "$tmp/dashboard-expressions.yaml"

echo "== all checks passed"
