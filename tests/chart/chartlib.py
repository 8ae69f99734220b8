"""Rendering the savepointd chart offline, shared by the chart tests and gen_deploy.py.

The chart is rendered by the real Helm library (PyPI helm-python-sdk, which ships Helm v4 as a shared
library), so what the tests see is what `helm template` / `helm install` would produce.
"""

from __future__ import annotations

import copy
import pathlib
import re
from typing import Any

import helm_python as helm
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "savepointd"
CI_VALUES_DIR = CHART_DIR / "ci"
DEPLOY_DIR = REPO / "deploy"

RELEASE = "savepointd"
NAMESPACE = "savepointd"
KUBE_VERSION = "1.32"

# Helm's own install order for the kinds this chart renders, so generated manifests apply cleanly
# with `kubectl apply -f`.
KIND_ORDER = [
    "Namespace",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "Role",
    "RoleBinding",
    "Service",
    "Deployment",
    "CronJob",
    "ServiceMonitor",
    "PrometheusRule",
]


def load_chart(path: pathlib.Path = CHART_DIR) -> helm.Chart:
    return helm.Chart.load(str(path))


def ci_values(name: str) -> dict[str, Any]:
    """A value set from charts/savepointd/ci/<name>-values.yaml."""
    return yaml.safe_load((CI_VALUES_DIR / f"{name}-values.yaml").read_text())


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge as Helm coalesces values: maps merge, everything else (lists too) is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def render_files(
    values: dict[str, Any] | None = None,
    *,
    chart: helm.Chart | None = None,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
) -> dict[str, str]:
    """Template path (relative to the chart, e.g. templates/deployment.yaml) -> rendered text."""
    owned = chart is None
    chart = chart or load_chart()
    try:
        rendered = chart.render(values or {}, name=name, namespace=namespace)
    finally:
        if owned:
            chart.close()
    return {path.split("/", 1)[1]: text for path, text in rendered.items()}


def split_documents(text: str) -> list[str]:
    """The non-empty YAML documents of one rendered template, as text."""
    docs = re.split(r"^---[ \t]*$", text, flags=re.MULTILINE)
    return [d.strip("\n") + "\n" for d in docs if d.strip()]


def manifests(files: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in a render (NOTES.txt excluded)."""
    objects = []
    for path in sorted(files):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in split_documents(files[path]):
            obj = yaml.safe_load(doc)
            if obj:
                objects.append(obj)
    return objects


def render(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    return manifests(render_files(values, **kwargs))


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def config_text(objects: list[dict[str, Any]]) -> str:
    """The daemon's config file, as the rendered ConfigMap carries it."""
    configmaps = [o for o in of_kind(objects, "ConfigMap") if "config.yaml" in o.get("data", {})]
    assert len(configmaps) == 1, "expected one ConfigMap with config.yaml"
    return configmaps[0]["data"]["config.yaml"]


def config_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(config_text(objects))
