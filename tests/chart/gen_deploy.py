#!/usr/bin/env python3
"""Regenerates deploy/ (plain manifests for `kubectl apply -k deploy/`) from charts/savepointd.

    python3 tests/chart/gen_deploy.py           # rewrite deploy/
    python3 tests/chart/gen_deploy.py --check   # exit 1 and show a diff when deploy/ is stale

deploy/savepointd.yaml is the chart at its default values (release and namespace `savepointd`);
deploy/cronjob-example.yaml is the README example (three VVP applications, nightly, keep 7) in mode
cronjob, an alternative to savepointd.yaml rather than an addition to it.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from typing import Any

import yaml

import chartlib

HEADER = """\
# Generated from charts/savepointd by tests/chart/gen_deploy.py ({what}).
# Do not edit by hand: change the chart and run `python3 tests/chart/gen_deploy.py`.
{extra}"""

# Labels that say Helm manages an object are wrong once the manifests are applied without Helm.
HELM_ONLY_LABELS = re.compile(r"^\s*(helm\.sh/chart|app\.kubernetes\.io/managed-by): .*\n", re.MULTILINE)


def plain_manifests(values: dict[str, Any]) -> str:
    files = chartlib.render_files(values, name=chartlib.RELEASE, namespace=chartlib.NAMESPACE)
    docs = []
    for path in sorted(files):
        if not path.endswith(".yaml"):
            continue
        for doc in chartlib.split_documents(files[path]):
            kind = yaml.safe_load(doc)["kind"]
            docs.append((chartlib.KIND_ORDER.index(kind), path, HELM_ONLY_LABELS.sub("", doc)))
    docs.sort(key=lambda d: (d[0], d[1]))
    return "---\n".join(doc for _, _, doc in docs)


def expected_files() -> dict[str, str]:
    ns = chartlib.NAMESPACE
    namespace = f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
    kustomization = (
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "# No `namespace:` here: the RBAC objects live in the namespaces where the Flink pods run.\n"
        "resources:\n"
        "  - namespace.yaml\n"
        "  - savepointd.yaml\n"
    )
    cronjob_values = chartlib.merge(chartlib.ci_values("readme-example"), {"mode": "cronjob"})
    return {
        "namespace.yaml": HEADER.format(what=f"namespace {ns}", extra="") + namespace,
        "kustomization.yaml": HEADER.format(what="kustomization", extra="") + kustomization,
        "savepointd.yaml": HEADER.format(
            what=f"default values, namespace {ns}",
            extra=(
                "# Edit the ConfigMap's config.yaml to list your applications and platforms, then\n"
                f"# `kubectl -n {ns} rollout restart deployment/{chartlib.RELEASE}`.\n"
            ),
        )
        + plain_manifests({}),
        "cronjob-example.yaml": HEADER.format(
            what=f"charts/savepointd/ci/readme-example-values.yaml with mode cronjob, namespace {ns}",
            extra=(
                "# An alternative to savepointd.yaml (same object names), not an addition: a CronJob runs\n"
                "# `savepointd once` every night at 01:00 for three VVP applications and keeps the newest 7.\n"
                "# It reads the VVP API token from the Secret vvp-api-token (key token) and Flink pods in the\n"
                "# namespace flink.\n"
            ),
        )
        + plain_manifests(cronjob_values),
    }


def drift() -> list[str]:
    """Unified diffs between deploy/ and what the chart renders; empty when deploy/ is current."""
    diffs = []
    for name, want in expected_files().items():
        path = chartlib.DEPLOY_DIR / name
        have = path.read_text() if path.exists() else ""
        if have != want:
            diffs.append(
                "".join(
                    difflib.unified_diff(
                        have.splitlines(keepends=True),
                        want.splitlines(keepends=True),
                        f"deploy/{name} (on disk)",
                        f"deploy/{name} (from the chart)",
                    )
                )
                or f"deploy/{name}: differs\n"
            )
    return diffs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail on drift instead of writing")
    args = parser.parse_args()
    if args.check:
        diffs = drift()
        sys.stdout.write("".join(diffs))
        if diffs:
            print("deploy/ is stale: run python3 tests/chart/gen_deploy.py", file=sys.stderr)
            return 1
        return 0
    chartlib.DEPLOY_DIR.mkdir(exist_ok=True)
    for name, text in expected_files().items():
        (chartlib.DEPLOY_DIR / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
