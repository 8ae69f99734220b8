#!/usr/bin/env python3
"""Lists every PromQL expression of the savepointd dashboard and alert rules, ready to evaluate.

Prints one JSON array on stdout. Dashboard expressions come with Grafana's variables replaced by what
Prometheus can evaluate directly: `$platform` and `$application` by `.*` (the dashboard's "All" value, used
inside `=~"..."`), `$__rate_interval` and `$__interval` by `1m`, `$__range` by `1h`. The selector of each
template variable's `label_values(...)` query is listed as well, since Grafana sends it to Prometheus.

    exprs.py               a JSON array of expression strings (dashboard first, then rules)
    exprs.py --annotate    a JSON array of {"source", "title", "ref", "expr"} objects
    exprs.py --check       validates the dashboard and the rules against the metric contract (see
                           check()); prints the problems and exits 1 if there are any
    exprs.py --as-rules    a Prometheus rule file with each dashboard expression as a recording rule,
                           for `promtool check rules` to parse them all

Only the standard library: the rules file is read with a small parser that understands the shape of
that one file (`- record:` / `- alert:` items with an `expr: |` block), not YAML in general.
"""

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "charts/savepointd/dashboards/savepointd.json"
RULES = REPO / "charts/savepointd/rules/savepointd-alerts.yaml"

# Values for Grafana's variables. Keys are names as written after `$` (or inside `${...}`).
SUBSTITUTIONS = {
    "platform": ".*",
    "application": ".*",
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

# The metric contract (DESIGN.md section 6): name without the `savepointd_` prefix -> type.
CONTRACT = {
    "savepoint_attempts_total": "counter",
    "savepoint_success_total": "counter",
    "savepoint_failure_total": "counter",
    "savepoint_duration_seconds": "histogram",
    "savepoint_last_success_timestamp_seconds": "gauge",
    "savepoint_last_status": "gauge",
    "savepoint_in_progress": "gauge",
    "schedule_expected_interval_seconds": "gauge",
    "schedule_next_run_timestamp_seconds": "gauge",
    "schedule_lateness_seconds": "histogram",
    "runs_skipped_total": "counter",
    "resolve_failures_total": "counter",
    "retention_deleted_total": "counter",
    "retention_delete_failures_total": "counter",
    "retained_savepoints": "gauge",
    "api_requests_total": "counter",
    "api_request_duration_seconds": "histogram",
    "build_info": "gauge",
    "config_info": "gauge",
    "leader": "gauge",
    "platform_up": "gauge",
}

# Grafana writes `$name`, `${name}` or `${name:format}`; `[[name]]` is the deprecated form.
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", re.S)


def substitute(expr, unknown):
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in SUBSTITUTIONS:
            unknown.add(name)
            return m.group(0)
        return SUBSTITUTIONS[name]

    return VARIABLE.sub(repl, expr)


def all_panels(panels):
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_entries(dashboard, unknown):
    entries = []
    for panel in all_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            entries.append({
                "source": "dashboard",
                "title": panel.get("title", ""),
                "ref": target.get("refId", ""),
                "expr": substitute(target.get("expr", ""), unknown),
            })
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        m = LABEL_VALUES.match(query or "")
        entries.append({
            "source": "dashboard variable",
            "title": variable["name"],
            "ref": "",
            "expr": substitute(m.group(1) if m else query, unknown),
        })
    return entries


def rule_entries(text):
    """(kind, name, expr) for each rule of the rules file; expr is the indented block after `expr: |`."""
    entries = []
    lines = text.splitlines()
    i = 0
    current = None
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^\s*- (alert|record): (\S+)\s*$", line)
        if m:
            current = m.groups()
        m = re.match(r"^(\s*)expr: (.*)$", line)
        if m and current:
            indent, rest = len(m.group(1)), m.group(2).strip()
            if rest in ("|", "|-", ">", ">-"):
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    block.append(lines[i].strip())
                    i += 1
                expr = " ".join(b for b in block if b)
                i -= 1
            else:
                expr = rest.strip("'\"")
            entries.append({"source": current[0], "title": current[1], "ref": "", "expr": expr})
            current = None
        i += 1
    return entries


def metric_problems(where, expr, extra_names):
    problems = []
    # Drop string literals first so label values cannot look like metric names.
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    for name in set(re.findall(r"\bsavepointd[_:]\w+", bare)):
        if name in extra_names:
            continue
        base = name[len("savepointd_"):]
        if base in CONTRACT:
            if CONTRACT[base] == "histogram":
                problems.append(f"{where}: histogram {name} used without _bucket/_sum/_count")
            continue
        for suffix in ("_bucket", "_sum", "_count"):
            if base.endswith(suffix) and CONTRACT.get(base[: -len(suffix)]) == "histogram":
                break
        else:
            problems.append(f"{where}: {name} is not in the metric contract")
    return problems


def check(dashboard, dash_entries, rules, unknown):
    problems = [f"dashboard: unknown variable ${name}" for name in sorted(unknown)]
    if dashboard.get("uid") != "savepointd":
        problems.append("dashboard: uid is not \"savepointd\"")
    if dashboard.get("schemaVersion", 0) < 38:
        problems.append("dashboard: schemaVersion below 38")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("dashboard: no `datasource` variable of type datasource/prometheus")
    for name in ("platform", "application"):
        v = variables.get(name, {})
        if not (v.get("type") == "query" and v.get("multi") and v.get("includeAll")
                and "label_values(" in json.dumps(v.get("query"))):
            problems.append(f"dashboard: variable {name} must be a multi, include-all label_values query")

    ids = set()
    targets = 0
    for panel in all_panels(dashboard.get("panels", [])):
        title = panel.get("title", "?")
        if panel.get("id") in ids:
            problems.append(f"panel {title}: duplicate id {panel.get('id')}")
        ids.add(panel.get("id"))
        if panel.get("type") == "row":
            continue
        if not panel.get("targets"):
            problems.append(f"panel {title}: no targets")
        for source in [panel] + panel.get("targets", []):
            if source.get("datasource", {}).get("uid") != "${datasource}":
                problems.append(f"panel {title}: datasource is not ${{datasource}}")
        for target in panel.get("targets", []):
            targets += 1
            if not target.get("expr", "").strip():
                problems.append(f"panel {title} {target.get('refId')}: empty expr")
    listed = [e for e in dash_entries if e["source"] == "dashboard"]
    if len(listed) != targets:
        problems.append(f"dashboard: {targets} targets but {len(listed)} expressions listed")

    recorded = {e["title"] for e in rules if e["source"] == "record"}
    for e in dash_entries + rules:
        problems += metric_problems(f"{e['source']} {e['title']} {e['ref']}".strip(), e["expr"], recorded)
    if not any(e["source"] == "alert" for e in rules):
        problems.append("rules: no alerts found")
    return problems


def main(argv):
    unknown = set()
    dashboard = json.loads(DASHBOARD.read_text())
    dash_entries = dashboard_entries(dashboard, unknown)
    rules = rule_entries(RULES.read_text())
    if "--check" in argv:
        problems = check(dashboard, dash_entries, rules, unknown)
        for p in problems:
            print(p, file=sys.stderr)
        print(f"{len(dash_entries)} dashboard and {len(rules)} rule expressions, {len(problems)} problems")
        return 1 if problems else 0
    if unknown:
        print(f"unknown variables: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 1
    if "--as-rules" in argv:
        # JSON strings are valid YAML double-quoted scalars.
        print("groups:\n  - name: dashboard-expressions\n    rules:")
        for i, e in enumerate(dash_entries):
            print(f"      - record: dashboard_expression_{i}\n        expr: {json.dumps(e['expr'])}")
        return 0
    entries = dash_entries + rules
    if "--annotate" in argv:
        json.dump(entries, sys.stdout, indent=2)
    else:
        json.dump([e["expr"] for e in entries], sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
