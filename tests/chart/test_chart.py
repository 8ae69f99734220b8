"""Tests of the Helm chart charts/savepointd, rendered offline by the real Helm library.

    pip install -r tests/chart/requirements.txt
    python3 -m pytest tests/chart -q

The check-config test runs the daemon binary: $SAVEPOINTD_BIN, or else it runs `cargo build` in the
repository and uses what cargo built.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

import chartlib
import gen_deploy
from chartlib import CHART_DIR, ci_values, config_of, of_kind, one, render, render_files

RULES_FILE = CHART_DIR / "rules" / "savepointd-alerts.yaml"
DASHBOARD_FILE = CHART_DIR / "dashboards" / "savepointd.json"

# name -> values; every value set goes through lint, Kubernetes schemas, RBAC and check-config.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "readme-example": ci_values("readme-example"),
    "multi-namespace": ci_values("multi-namespace"),
    "all-flags": ci_values("all-flags"),
    "cronjob": ci_values("cronjob"),
    "ha": {"replicas": 2},
    "cmf": ci_values("cmf"),
    "flink-operator": ci_values("flink-operator"),
}

# Where each value set lets the daemon read pods: exactly these namespaces get a Role.
EXPECTED_POD_NAMESPACES = {
    "defaults": ["vvp-jobs"],
    "readme-example": ["flink"],
    "multi-namespace": ["flink-eu", "flink-us", "flink-shared"],
    "all-flags": ["flink"],
    "cronjob": ["flink"],
    "ha": ["vvp-jobs"],
    "cmf": [],
    "flink-operator": ["flink-prod", "flink-staging"],
}

PODS_READ_ONLY = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
# A flinkOperator platform: snapshots made, followed and deleted; the jobs only read.
OPERATOR_RULES = [
    {"apiGroups": ["flink.apache.org"], "resources": ["flinkstatesnapshots"],
     "verbs": ["get", "list", "watch", "create", "delete"]},
    {"apiGroups": ["flink.apache.org"], "resources": ["flinkdeployments", "flinksessionjobs"],
     "verbs": ["get", "list", "watch"]},
]
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def require(*files: pathlib.Path) -> None:
    """Fails (never skips) when a chart file that enabled values embed is missing."""
    missing = [str(p.relative_to(chartlib.REPO)) for p in files if not p.exists()]
    if missing:
        pytest.fail(f"the chart lacks {', '.join(missing)}, which prometheusRule/grafanaDashboard embed")


def needs_flag_files(name: str) -> None:
    """The value set that switches on the PrometheusRule and the dashboard needs their chart files."""
    if name == "all-flags":
        require(RULES_FILE, DASHBOARD_FILE)


def without_chart_files(values: dict[str, Any]) -> dict[str, Any]:
    """The value set with the objects that embed rules/ and dashboards/ switched off."""
    return chartlib.merge(values, {"prometheusRule": {"enabled": False}, "grafanaDashboard": {"enabled": False}})


@pytest.fixture(scope="module")
def chart():
    with chartlib.load_chart() as loaded:
        yield loaded


def render_error(chart: helm.Chart, values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmError) as caught:
        chart.render(values, name=chartlib.RELEASE, namespace=chartlib.NAMESPACE)
    return str(caught.value)


# ------------------------------------------------------------------------------------------------
# Lint and Kubernetes schemas
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_is_clean(name):
    needs_flag_files(name)
    report = helm.lint(
        str(CHART_DIR),
        VALUE_SETS[name],
        strict=True,
        namespace=chartlib.NAMESPACE,
        kube_version=f"v{chartlib.KUBE_VERSION}.0",
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_values_schema_is_a_valid_draft7_schema_and_accepts_the_defaults():
    import jsonschema

    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load((CHART_DIR / "values.yaml").read_text()))


def assert_valid_for_kubernetes(objects: list[dict[str, Any]]) -> None:
    assert objects
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert obj["metadata"].get("namespace"), f"{where} has no namespace"
        if obj["kind"] in CRD_KINDS:
            continue  # no schema offline; their structure is asserted in check_monitoring_objects
        try:
            kubernetes_validate.validate(obj, chartlib.KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_manifest_is_valid_for_kubernetes(chart, name):
    needs_flag_files(name)
    assert_valid_for_kubernetes(render(VALUE_SETS[name], chart=chart))


# ------------------------------------------------------------------------------------------------
# RBAC
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rbac_is_least_privilege(chart, name):
    objects = render(without_chart_files(VALUE_SETS[name]), chart=chart)
    assert not of_kind(objects, "ClusterRole") and not of_kind(objects, "ClusterRoleBinding")
    # The leader election Role (replicas > 1) is checked in test_ha_rbac_is_the_one_lease.
    roles, bindings = (
        [o for o in of_kind(objects, kind) if not o["metadata"]["name"].endswith("-leader-election")]
        for kind in ("Role", "RoleBinding")
    )
    expected = EXPECTED_POD_NAMESPACES[name]
    assert [r["metadata"]["namespace"] for r in roles] == expected
    assert [b["metadata"]["namespace"] for b in bindings] == expected
    for role in roles:
        assert role["rules"] == (OPERATOR_RULES if name == "flink-operator" else PODS_READ_ONLY)
    account = one(objects, "ServiceAccount")
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": roles[0]["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {
                "kind": "ServiceAccount",
                "name": account["metadata"]["name"],
                "namespace": chartlib.NAMESPACE,
            }
        ]


def test_pods_and_operator_rules_meet_in_one_role_per_namespace(chart):
    values = {
        "platforms": [
            {"name": "vvp", "kind": "vvp", "url": "http://vvp", "resolve": {"kubernetesNamespace": "flink"}},
            {"name": "op", "kind": "flinkOperator", "kubernetesNamespace": ["flink", "jobs"]},
        ],
        "applications": [{"name": "a", "platform": "op"}],
    }
    roles = {r["metadata"]["namespace"]: r["rules"] for r in of_kind(render(values, chart=chart), "Role")}
    assert roles == {"flink": PODS_READ_ONLY + OPERATOR_RULES, "jobs": OPERATOR_RULES}
    message = render_error(chart, values | {"rbac": {"namespaces": ["flink"]}})
    assert 'rbac.namespaces: lacks "jobs"' in message, message


def test_pod_namespace_defaults_to_default_like_the_daemon(chart):
    values = {"platforms": [{"name": "vvp", "kind": "vvp", "url": "http://vvp"}]}
    roles = of_kind(render(values, chart=chart), "Role")
    assert [r["metadata"]["namespace"] for r in roles] == ["default"]


def test_no_role_when_no_platform_resolves_through_pods(chart):
    values = {
        "platforms": [
            {"name": "vvp", "kind": "vvp", "url": "http://vvp", "resolve": {"via": "api"}},
            {"name": "f", "kind": "flink", "url": "http://jm:8081", "targetDirectory": "s3://b/sp"},
        ],
        "applications": [{"name": "a", "platform": "f"}],
    }
    objects = render(values, chart=chart)
    assert not of_kind(objects, "Role") and not of_kind(objects, "RoleBinding")


def test_rbac_can_be_left_to_the_cluster_admin(chart):
    objects = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "sp"}}, chart=chart)
    assert not of_kind(objects, "Role") and not of_kind(objects, "ServiceAccount")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "sp"


# ------------------------------------------------------------------------------------------------
# High availability (replicas > 1)
# ------------------------------------------------------------------------------------------------

LEASE_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["savepointd"],
     "verbs": ["get", "update"]},
    # RBAC cannot restrict create by resourceName.
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
]


def test_one_replica_has_no_leader_election(chart):
    objects = render({}, chart=chart)
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "leaderElection" not in config_of(objects)
    assert not of_kind(objects, "PodDisruptionBudget")
    assert not [r for r in of_kind(objects, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    pod = deployment["spec"]["template"]["spec"]
    assert "affinity" not in pod
    assert {e["name"] for e in pod["containers"][0]["env"]} == {"RUST_LOG"}


def test_ha_turns_on_leader_election_with_its_objects(chart):
    objects = render({"replicas": 3}, chart=chart)
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert config_of(objects)["leaderElection"] == {"enabled": True, "leaseName": "savepointd"}
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["metadata"]["namespace"] == chartlib.NAMESPACE
    assert pdb["spec"] == {
        "minAvailable": 1,
        "selector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]},
    }
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    preferred = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred == [{
        "weight": 100,
        "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname",
            "labelSelector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]},
        },
    }]
    assert_valid_for_kubernetes(objects)


def test_ha_durations_and_lease_name_reach_the_config(chart):
    values = {"replicas": 2, "leaderElection": {"leaseName": "sp-lease", "leaseDuration": "30s",
                                                "renewDeadline": "20s", "retryPeriod": "4s"}}
    objects = render(values, chart=chart)
    assert config_of(objects)["leaderElection"] == {
        "enabled": True, "leaseName": "sp-lease", "leaseDuration": "30s", "renewDeadline": "20s",
        "retryPeriod": "4s"}
    role = [r for r in of_kind(objects, "Role") if r["metadata"]["name"].endswith("-leader-election")][0]
    assert role["rules"][0]["resourceNames"] == ["sp-lease"]


def test_ha_anti_affinity_choices(chart):
    def affinity(values):
        return one(render(values, chart=chart), "Deployment")["spec"]["template"]["spec"].get("affinity")

    required = affinity({"replicas": 2, "podAntiAffinity": "required"})["podAntiAffinity"]
    assert list(required) == ["requiredDuringSchedulingIgnoredDuringExecution"]
    assert affinity({"replicas": 2, "podAntiAffinity": "none"}) is None
    own = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ops"]}]}]}}}
    assert affinity({"replicas": 2, "affinity": own}) == own


def test_ha_rbac_is_the_one_lease(chart):
    objects = render({"replicas": 2}, chart=chart)
    roles = [r for r in of_kind(objects, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    bindings = [b for b in of_kind(objects, "RoleBinding") if b["metadata"]["name"].endswith("-leader-election")]
    assert len(roles) == 1 and len(bindings) == 1
    role, binding = roles[0], bindings[0]
    # Only in the release namespace, only Leases, get/update only on the chart's Lease by name.
    assert role["metadata"]["namespace"] == chartlib.NAMESPACE
    assert role["rules"] == LEASE_RULES
    assert binding["metadata"]["namespace"] == chartlib.NAMESPACE
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{
        "kind": "ServiceAccount",
        "name": one(objects, "ServiceAccount")["metadata"]["name"],
        "namespace": chartlib.NAMESPACE,
    }]
    # The pod-reading Roles are unchanged.
    others = [r for r in of_kind(objects, "Role") if r not in roles]
    assert [r["rules"] for r in others] == [PODS_READ_ONLY]
    text = (CHART_DIR / "templates" / "lease-role.yaml").read_text()
    assert "cannot restrict `create` by resourceName" in text


def test_ha_is_daemon_only(chart):
    objects = render(chartlib.merge(VALUE_SETS["cronjob"], {"replicas": 2}), chart=chart)
    assert not of_kind(objects, "PodDisruptionBudget")
    assert "leaderElection" not in config_of(objects)


# ------------------------------------------------------------------------------------------------
# The config file
# ------------------------------------------------------------------------------------------------


def test_readme_example_config(chart):
    config = config_of(render(VALUE_SETS["readme-example"], chart=chart))
    assert config["applications"] == [
        {"name": "fraud-detection"},
        {"name": "payments-enrichment"},
        {"name": "clickstream-sessions"},
    ]
    assert config["defaults"] == {"schedule": "0 1 * * *", "retention": {"keepLast": 7}}
    assert config["server"] == {"listen": "0.0.0.0:9090"}
    [platform] = config["platforms"]
    assert platform["kind"] == "vvp" and platform["name"] == "vvp-prod"


def test_applications_mix_names_and_objects(chart):
    values = {"applications": ["a", {"name": "b", "schedule": "@hourly", "paused": True}]}
    config = config_of(render(values, chart=chart))
    assert config["applications"] == [{"name": "a"}, {"name": "b", "schedule": "@hourly", "paused": True}]


def test_scheduling_fields_pass_through_to_the_config(chart):
    window = {"schedule": "0 8 * * 1-5", "duration": "10h"}
    values = {
        "defaults": {"jitter": "5m", "blackoutWindows": [window], "retention": {"keepYearly": 3}},
        "applications": ["a", {"name": "b", "blackoutWindows": [], "jitter": "0s"}],
    }
    config = config_of(render(values, chart=chart))
    assert config["defaults"] == values["defaults"]
    assert config["applications"] == [{"name": "a"}, {"name": "b", "blackoutWindows": [], "jitter": "0s"}]


def test_tokens_never_reach_a_configmap(chart):
    sentinel = "tok-3f9a-never-rendered"
    objects = render(without_chart_files(VALUE_SETS["all-flags"]), chart=chart)
    config = config_of(objects)
    prod, staging, _ = config["platforms"]
    assert prod["auth"] == {"tokenFile": "/var/run/secrets/savepointd/vvp-prod/token"}
    assert prod["tls"] == {"caFile": "/var/run/secrets/savepointd/vvp-prod/ca.crt"}
    assert staging["auth"] == {"tokenEnv": "VVP_STAGING_TOKEN"}
    for cm in of_kind(objects, "ConfigMap"):
        text = yaml.safe_dump(cm)
        for leak in ("existingSecret", "existingConfigMap", "vvp-api-token", "secretKeyRef", "vvp-staging-token"):
            assert leak not in text, f"{leak} in ConfigMap {cm['metadata']['name']}"

    # The token itself has no place in values at all: the schema refuses it, without echoing it.
    bad = copy.deepcopy(VALUE_SETS["readme-example"])
    bad["platforms"][0]["auth"] = {"token": sentinel}
    message = render_error(chart, bad)
    assert "/platforms/0/auth" in message and "'token'" in message
    assert sentinel not in message


def test_token_secrets_are_mounted_read_only(chart):
    objects = render(VALUE_SETS["readme-example"], chart=chart)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["platform-0"] == {
        "name": "platform-0",
        "mountPath": "/var/run/secrets/savepointd/vvp-prod",
        "readOnly": True,
    }
    assert volumes["platform-0"]["projected"]["sources"] == [
        {"secret": {"name": "vvp-api-token", "items": [{"key": "token", "path": "token"}]}}
    ]
    assert volumes["platform-0"]["projected"]["defaultMode"] == 0o440
    assert all(m.get("readOnly") for m in container["volumeMounts"] if m["name"] != "tmp")


def test_a_client_certificate_secret_is_mounted_and_named_in_the_config(chart):
    objects = render(VALUE_SETS["cmf"], chart=chart)
    config = config_of(objects)
    token, mtls = config["platforms"]
    assert token["environment"] == "prod" and token["auth"] == {"tokenFile": "/var/run/secrets/savepointd/confluent/token"}
    assert mtls["tls"] == {
        "caFile": "/var/run/secrets/savepointd/confluent-mtls/ca.crt",
        "certFile": "/var/run/secrets/savepointd/confluent-mtls/client.crt",
        "keyFile": "/var/run/secrets/savepointd/confluent-mtls/client.key",
    }
    assert config["applications"][1] == {"name": "enrich-clicks", "platform": "confluent", "statement": True}
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["platform-1"]["projected"]["sources"] == [
        {"configMap": {"name": "cmf-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"secret": {"name": "savepointd-client-tls", "items": [
            {"key": "tls.crt", "path": "client.crt"}, {"key": "tls.key", "path": "client.key"}]}},
    ]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["platform-1"]["mountPath"] == "/var/run/secrets/savepointd/confluent-mtls"
    assert mounts["platform-1"]["readOnly"] is True


def checksum(objects):
    return one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def test_checksum_changes_with_the_config_only(chart):
    base = checksum(render(VALUE_SETS["readme-example"], chart=chart))
    assert len(base) == 64
    more_apps = copy.deepcopy(VALUE_SETS["readme-example"])
    more_apps["applications"].append("inventory-sync")
    assert checksum(render(more_apps, chart=chart)) != base
    keep_more = chartlib.merge(VALUE_SETS["readme-example"], {"defaults": {"retention": {"keepLast": 8}}})
    assert checksum(render(keep_more, chart=chart)) != base
    # Not part of the config: the pod rolls anyway, but not because of the checksum.
    other_resources = chartlib.merge(VALUE_SETS["readme-example"], {"resources": {"limits": {"memory": "1Gi"}}})
    assert checksum(render(other_resources, chart=chart)) == base


def test_checksum_is_the_sha256_of_the_rendered_configmap(chart):
    files = render_files(VALUE_SETS["readme-example"], chart=chart)
    expected = hashlib.sha256(files["templates/configmap.yaml"].encode()).hexdigest()
    assert checksum(chartlib.manifests(files)) == expected


# ------------------------------------------------------------------------------------------------
# Workloads
# ------------------------------------------------------------------------------------------------


def test_daemon_pod_is_hardened_and_probed(chart):
    objects = render(without_chart_files(VALUE_SETS["all-flags"]), chart=chart)
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["args"][:3] == ["run", "--config", "/etc/savepointd/config.yaml"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9464, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["resources"] == {"requests": {"cpu": "20m", "memory": "48Mi"},
                                      "limits": {"cpu": "500m", "memory": "256Mi"}}
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in pod["affinity"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["example.com/team"] == "streaming"
    service = one(objects, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_cronjob_mode(chart):
    objects = render(VALUE_SETS["cronjob"], chart=chart)
    kinds = sorted(o["kind"] for o in objects)
    # No Deployment, and nothing that scrapes a pod that lives for one pass.
    assert kinds == ["ConfigMap", "CronJob", "NetworkPolicy", "Role", "RoleBinding", "ServiceAccount"]
    cronjob = one(objects, "CronJob")
    assert cronjob["spec"]["schedule"] == "0 1 * * *"
    assert cronjob["spec"]["timeZone"] == "Europe/Berlin"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0 and job["activeDeadlineSeconds"] == 3600
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["args"] == ["once", "--config", "/etc/savepointd/config.yaml", "--no-prune"]
    assert "livenessProbe" not in container and "ports" not in container
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # `once` runs each application's latest slot: every application gets the CronJob's schedule, so the
    # slot is the Job's and a retried Job finds its savepoint.
    config = yaml.safe_load(chartlib.config_text(objects))
    assert config["applications"]
    for app in config["applications"]:
        assert (app["schedule"], app["timezone"]) == ("0 1 * * *", "Europe/Berlin"), app


def test_network_policy_admits_only_the_metrics_port(chart):
    values = without_chart_files(VALUE_SETS["all-flags"])
    policy = one(render(values, chart=chart), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    [ingress] = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": 9464, "protocol": "TCP"}]
    assert ingress["from"] == values["networkPolicy"]["ingressFrom"]
    cidrs = [peer["ipBlock"]["cidr"] for peer in policy["spec"]["egress"][0]["to"]]
    assert cidrs == ["10.0.0.0/8", "192.0.2.10/32"]
    assert {p["port"] for p in policy["spec"]["egress"][1]["ports"]} == {53}

    open_egress = one(render({"networkPolicy": {"enabled": True}}, chart=chart), "NetworkPolicy")
    assert open_egress["spec"]["policyTypes"] == ["Ingress"] and "egress" not in open_egress["spec"]
    assert open_egress["spec"]["ingress"] == [{"ports": [{"port": 9090, "protocol": "TCP"}]}]


def test_optional_objects_are_off_by_default(chart):
    kinds = sorted(o["kind"] for o in render({}, chart=chart))
    assert kinds == ["ConfigMap", "Deployment", "Role", "RoleBinding", "Service", "ServiceAccount"]


# ------------------------------------------------------------------------------------------------
# ServiceMonitor, PrometheusRule, dashboard
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stub_chart(tmp_path_factory):
    """The chart with stand-in alert rules and dashboard, to test the templates apart from their content."""
    root = tmp_path_factory.mktemp("chart") / "savepointd"
    shutil.copytree(CHART_DIR, root)
    (root / "rules").mkdir(exist_ok=True)
    (root / "dashboards").mkdir(exist_ok=True)
    (root / "rules" / "savepointd-alerts.yaml").write_text(
        "groups:\n"
        "  - name: savepointd\n"
        "    rules:\n"
        "      - alert: SavepointdStale\n"
        "        expr: time() - savepointd_savepoint_last_success_timestamp_seconds > 86400\n"
        "        annotations:\n"
        "          summary: '{{ $labels.application }} has no savepoint for {{ $value }}s'\n"
    )
    (root / "dashboards" / "savepointd.json").write_text(
        '{\n  "title": "savepointd",\n  "panels": [{"targets": [{"legendFormat": "{{application}}"}]}]\n}\n'
    )
    with chartlib.load_chart(root) as loaded:
        yield loaded, root


def check_service_monitor(objects, values):
    service = one(objects, "Service")
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"] == {"matchLabels": service["spec"]["selector"]}
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [chartlib.NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and endpoint["interval"] == "15s"
    assert endpoint["scrapeTimeout"] == "10s"
    assert endpoint["relabelings"] == values["serviceMonitor"]["relabelings"]
    assert endpoint["metricRelabelings"] == values["serviceMonitor"]["metricRelabelings"]


def check_prometheus_rule(objects, rules_text):
    rule = one(objects, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == yaml.safe_load(rules_text)["groups"]
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r) and r["expr"]


def check_dashboard(objects, dashboard_text):
    [dashboard] = [cm for cm in of_kind(objects, "ConfigMap") if "savepointd.json" in cm.get("data", {})]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Flink"}
    assert dashboard["data"]["savepointd.json"] == dashboard_text.strip()
    json.loads(dashboard["data"]["savepointd.json"])


def test_monitoring_templates_with_stand_in_files(stub_chart):
    loaded, root = stub_chart
    values = VALUE_SETS["all-flags"]
    objects = render(values, chart=loaded)
    assert_valid_for_kubernetes(objects)
    check_service_monitor(objects, values)
    check_prometheus_rule(objects, (root / "rules" / "savepointd-alerts.yaml").read_text())
    check_dashboard(objects, (root / "dashboards" / "savepointd.json").read_text())
    # Template braces of alert annotations and legends pass through untouched.
    rule = one(objects, "PrometheusRule")
    assert "{{ $labels.application }}" in rule["spec"]["groups"][0]["rules"][0]["annotations"]["summary"]


def test_service_monitor(chart):
    values = without_chart_files(VALUE_SETS["all-flags"])
    check_service_monitor(render(values, chart=chart), values)


def test_prometheus_rule_carries_the_chart_alerts(chart, tmp_path):
    require(RULES_FILE)
    values = chartlib.merge(VALUE_SETS["all-flags"], {"grafanaDashboard": {"enabled": False}})
    objects = render(values, chart=chart)
    check_prometheus_rule(objects, RULES_FILE.read_text())
    # The groups survive the YAML round trip through the template as Prometheus rules.
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": one(objects, "PrometheusRule")["spec"]["groups"]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_absent_alert_watches_the_job_a_service_monitor_gives_this_release(chart):
    require(RULES_FILE)
    values = chartlib.merge(VALUE_SETS["all-flags"], {"grafanaDashboard": {"enabled": False}})

    def absent_expr(objects):
        rules = [r for g in one(objects, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
        [absent] = [r for r in rules if r.get("alert") == "SavepointdAbsent"]
        return absent["expr"]

    # A release named otherwise: the ServiceMonitor's job label is the Service's name, sp-savepointd.
    objects = chartlib.manifests(chartlib.render_files(values, chart=chart, name="sp"))
    service = one(objects, "Service")["metadata"]["name"]
    assert service == "sp-savepointd"
    assert f'job="{service}"' in absent_expr(objects)
    assert 'job="savepointd"' not in absent_expr(objects)
    # Or the job a scrape config of one's own gives.
    custom = chartlib.merge(values, {"prometheusRule": {"job": "flink-savepoints"}})
    objects = chartlib.manifests(chartlib.render_files(custom, chart=chart, name="sp"))
    assert 'job="flink-savepoints"' in absent_expr(objects)


def test_dashboard_configmap_carries_the_chart_dashboard(chart):
    require(DASHBOARD_FILE)
    values = chartlib.merge(VALUE_SETS["all-flags"], {"prometheusRule": {"enabled": False}})
    check_dashboard(render(values, chart=chart), DASHBOARD_FILE.read_text())


def test_missing_chart_files_fail_with_their_name(tmp_path):
    root = tmp_path / "savepointd"
    shutil.copytree(CHART_DIR, root, ignore=shutil.ignore_patterns("rules", "dashboards"))
    with chartlib.load_chart(root) as bare:
        message = render_error(bare, {"prometheusRule": {"enabled": True}})
        assert "prometheusRule.enabled" in message and "rules/savepointd-alerts.yaml" in message
        message = render_error(bare, {"grafanaDashboard": {"enabled": True}})
        assert "grafanaDashboard.enabled" in message and "dashboards/savepointd.json" in message


# ------------------------------------------------------------------------------------------------
# Bad values are refused, naming the offending key
# ------------------------------------------------------------------------------------------------

VVP = {"name": "vvp", "kind": "vvp", "url": "https://vvp.example.com"}

BAD_VALUES = [
    ("unknown top-level key", {"aplications": ["a"]}, ["aplications", "additional properties"]),
    ("bad mode", {"mode": "sidecar"}, ["/mode", "daemon", "cronjob"]),
    ("empty application name", {"applications": [""]}, ["/applications/0"]),
    ("empty application name in an object", {"applications": [{"name": ""}]}, ["/applications/0/name"]),
    ("name with surrounding spaces", {"applications": [" fraud-detection"]}, ["/applications/0"]),
    ("application without a name", {"applications": [{"schedule": "@daily"}]}, ["/applications/0", "name"]),
    ("unknown application field", {"applications": [{"name": "a", "schedul": "@daily"}]}, ["/applications/0", "schedul"]),
    ("application of the wrong type", {"applications": [42]}, ["/applications/0"]),
    ("applications not a list", {"applications": "fraud-detection"}, ["/applications"]),
    ("paused not a boolean", {"applications": [{"name": "a", "paused": "yes"}]}, ["/applications/0/paused"]),
    ("image tag as a number", {"image": {"tag": 1.2}}, ["/image/tag"]),
    ("flag not a boolean", {"serviceMonitor": {"enabled": "yes"}}, ["/serviceMonitor/enabled"]),
    ("unknown platform kind", {"platforms": [VVP | {"kind": "spark"}]}, ["/platforms/0/kind"]),
    ("platform without url", {"platforms": [{"name": "vvp", "kind": "vvp"}]}, ["/platforms/0", "url"]),
    ("no platform", {"platforms": []}, ["/platforms"]),
    ("flink without targetDirectory", {"platforms": [VVP | {"kind": "flink"}]}, ["/platforms/0", "targetDirectory"]),
    ("vvp with targetDirectory", {"platforms": [VVP | {"targetDirectory": "s3://b/x"}]}, ["/platforms/0"]),
    ("two token sources", {"platforms": [VVP | {"auth": {"tokenFile": "/t", "tokenEnv": "T"}}]}, ["/platforms/0/auth"]),
    ("two CA sources", {"platforms": [VVP | {"tls": {"caFile": "/ca.pem", "existingConfigMap": {"name": "ca", "key": "ca"}}}]},
     ["/platforms/0/tls/caFile"]),
    ("secret ref without key", {"platforms": [VVP | {"auth": {"existingSecret": {"name": "s"}}}]},
     ["/platforms/0/auth/existingSecret", "key"]),
    ("negative keepLast", {"defaults": {"retention": {"keepLast": -1}}}, ["/defaults/retention/keepLast"]),
    ("minKeep below one", {"defaults": {"retention": {"minKeep": 0}}}, ["/defaults/retention/minKeep"]),
    ("negative keepYearly", {"applications": [{"name": "a", "retention": {"keepYearly": -1}}]},
     ["/applications/0/retention/keepYearly"]),
    ("jitter as a number", {"defaults": {"jitter": 300}}, ["/defaults/jitter"]),
    ("blackout window without a duration", {"defaults": {"blackoutWindows": [{"schedule": "0 8 * * *"}]}},
     ["/defaults/blackoutWindows/0", "duration"]),
    ("unknown blackout window field",
     {"applications": [{"name": "a", "blackoutWindows": [{"schedule": "0 8 * * *", "duration": "1h", "until": "9"}]}]},
     ["/applications/0/blackoutWindows/0", "until"]),
    ("blackout windows not a list", {"defaults": {"blackoutWindows": {"schedule": "0 8 * * *", "duration": "1h"}}},
     ["/defaults/blackoutWindows"]),
    ("duration as a number", {"defaults": {"timeout": 900}}, ["/defaults/timeout"]),
    ("bad duration", {"defaults": {"retry": {"backoff": "soon"}}}, ["/defaults/retry/backoff"]),
    ("bad formatType", {"defaults": {"formatType": "canonical"}}, ["/defaults/formatType"]),
    ("unknown defaults field", {"defaults": {"keepLast": 7}}, ["/defaults", "keepLast"]),
    ("empty cron", {"defaults": {"schedule": " "}}, ["/defaults/schedule"]),
    ("rbac namespaces not a list", {"rbac": {"namespaces": "flink"}}, ["/rbac/namespaces"]),
    ("bad namespace name", {"rbac": {"namespaces": ["Flink_Jobs"]}}, ["/rbac/namespaces/0"]),
    ("listen without port", {"server": {"listen": "0.0.0.0"}}, ["/server/listen"]),
    ("resources not a map", {"resources": "small"}, ["/resources"]),
    ("CIDR without prefix", {"networkPolicy": {"egress": {"cidrs": ["10.0.0.1"]}}}, ["/networkPolicy/egress/cidrs/0"]),
    ("zero replicas", {"replicas": 0}, ["/replicas"]),
    ("replicas as a string", {"replicas": "2"}, ["/replicas"]),
    ("bad lease name", {"leaderElection": {"leaseName": "Lease_1"}}, ["/leaderElection/leaseName"]),
    ("bad lease duration", {"leaderElection": {"leaseDuration": "long"}}, ["/leaderElection/leaseDuration"]),
    ("unknown leaderElection field", {"leaderElection": {"enabled": True}}, ["/leaderElection", "enabled"]),
    ("bad anti-affinity", {"podAntiAffinity": "soft"}, ["/podAntiAffinity"]),
    ("cmf without environment", {"platforms": [VVP | {"kind": "cmf"}]}, ["/platforms/0", "environment"]),
    ("cmf with a VVP namespace", {"platforms": [VVP | {"kind": "cmf", "environment": "prod", "namespace": "default"}]},
     ["/platforms/0"]),
    ("environment on vvp", {"platforms": [VVP | {"environment": "prod"}]}, ["/platforms/0"]),
    ("certFile without keyFile", {"platforms": [VVP | {"tls": {"certFile": "/c.pem"}}]}, ["/platforms/0/tls", "keyFile"]),
    ("two client certificate sources",
     {"platforms": [VVP | {"tls": {"certFile": "/c", "keyFile": "/k", "clientCertificateSecret": {"name": "s"}}}]},
     ["/platforms/0/tls/certFile"]),
    ("flinkOperator without namespace", {"platforms": [{"name": "op", "kind": "flinkOperator"}]},
     ["/platforms/0", "kubernetesNamespace"]),
    ("flinkOperator with a url", {"platforms": [{"name": "op", "kind": "flinkOperator", "kubernetesNamespace": "f",
                                                 "url": "http://x"}]}, ["/platforms/0"]),
    ("vvp without url", {"platforms": [{"name": "vvp", "kind": "vvp"}]}, ["/platforms/0", "url"]),
    ("bad operator namespace", {"platforms": [{"name": "op", "kind": "flinkOperator", "kubernetesNamespace": ["Flink"]}]},
     ["/platforms/0/kubernetesNamespace"]),
    ("statement not a boolean", {"applications": [{"name": "a", "statement": "yes"}]}, ["/applications/0/statement"]),
]


@pytest.mark.parametrize("values,expected", [(v, e) for _, v, e in BAD_VALUES], ids=[i for i, _, _ in BAD_VALUES])
def test_schema_rejects_bad_values(chart, values, expected):
    message = render_error(chart, values)
    assert "schema" in message, message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


TWO_PLATFORMS = [VVP, {"name": "f", "kind": "flink", "url": "http://jm:8081", "targetDirectory": "s3://b/sp"}]

BAD_COMBINATIONS = [
    # Cron field counts, in words rather than a schema pattern.
    ("4-field cron", {"defaults": {"schedule": "0 1 * *"}},
     ['defaults.schedule: "0 1 * *"', "expected 5 fields (minute hour day-of-month month day-of-week)", "found 4"]),
    ("one word for a cron", {"applications": [{"name": "a", "schedule": "nightly"}]},
     ["applications[0].schedule", '"nightly"', "found 1"]),
    ("4-field blackout window", {"defaults": {"blackoutWindows": [{"schedule": "0 8 * *", "duration": "1h"}]}},
     ['defaults.blackoutWindows[0].schedule: "0 8 * *"', "found 4"]),
    ("4-field blackout window of an application",
     {"applications": ["a", {"name": "b", "blackoutWindows": [{"schedule": "8 * *", "duration": "1h"}]}]},
     ["applications[1].blackoutWindows[0].schedule", "found 3"]),
    ("6-field CronJob schedule", {"cronjob": {"schedule": "0 0 1 * * *"}},
     ["cronjob.schedule", "a Kubernetes CronJob schedule has 5 fields", "found 6"]),
    ("duplicate application", {"applications": ["a", {"name": "a"}]}, ["applications[1]", "duplicate", '"a"']),
    ("unknown platform", {"applications": [{"name": "a", "platform": "nope"}]}, ["applications[0].platform", '"nope"']),
    ("platform needed", {"platforms": TWO_PLATFORMS, "applications": ["a"]}, ["applications[0].platform"]),
    ("duplicate platform", {"platforms": [VVP, VVP]}, ["platforms[1].name", "duplicate"]),
    ("rbac misses a watched namespace",
     {"platforms": [VVP | {"resolve": {"kubernetesNamespace": "flink"}}], "rbac": {"namespaces": ["other"]}},
     ["rbac.namespaces", '"flink"']),
]


@pytest.mark.parametrize("values,expected", [(v, e) for _, v, e in BAD_COMBINATIONS],
                         ids=[i for i, _, _ in BAD_COMBINATIONS])
def test_inconsistent_values_fail(chart, values, expected):
    message = render_error(chart, values)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ------------------------------------------------------------------------------------------------
# deploy/
# ------------------------------------------------------------------------------------------------


def test_deploy_does_not_drift_from_the_chart():
    diffs = gen_deploy.drift()
    assert not diffs, "deploy/ is stale; run python3 tests/chart/gen_deploy.py\n" + "".join(diffs)


def test_deploy_manifests_are_valid():
    for name in ("savepointd.yaml", "cronjob-example.yaml", "namespace.yaml"):
        for obj in yaml.safe_load_all((chartlib.DEPLOY_DIR / name).read_text()):
            kubernetes_validate.validate(obj, chartlib.KUBE_VERSION, strict=True)
            assert "helm.sh/chart" not in obj["metadata"].get("labels", {})


def test_deploy_kustomization_builds():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    result = subprocess.run([kubectl, "kustomize", str(chartlib.DEPLOY_DIR)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    kinds = [o["kind"] for o in yaml.safe_load_all(result.stdout)]
    assert kinds[0] == "Namespace" and "Deployment" in kinds


# ------------------------------------------------------------------------------------------------
# The daemon accepts what the chart renders
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def savepointd_bin() -> str:
    """$SAVEPOINTD_BIN, or the binary that `cargo build` makes. Never skips: no binary is a failure."""
    explicit = os.environ.get("SAVEPOINTD_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            pytest.fail(f"SAVEPOINTD_BIN={explicit} is not an executable file")
        return explicit
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.fail("cargo not found and SAVEPOINTD_BIN not set: cannot build savepointd")
    result = subprocess.run(
        [cargo, "build", "--bin", "savepointd", "--message-format=json-render-diagnostics"],
        cwd=chartlib.REPO,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.fail(f"cargo build failed (exit {result.returncode}):\n{result.stderr[-6000:]}")
    for line in result.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message["target"]["name"] == "savepointd" \
                and message.get("executable"):
            return message["executable"]
    pytest.fail("cargo build succeeded but reported no savepointd executable")


# A self-signed certificate (CN vvp.example.com) standing in for a mounted CA bundle: the daemon reads
# and parses tls.caFile when it checks a config.
TEST_CA_PEM = """-----BEGIN CERTIFICATE-----
MIIBizCCATGgAwIBAgIUXMHbFXHzENGQzh4uRs8kcidw7T0wCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPdnZwLmV4YW1wbGUuY29tMCAXDTI2MTIwMjEyNTgyNFoYDzIx
MjYxMTA4MTI1ODI0WjAaMRgwFgYDVQQDDA92dnAuZXhhbXBsZS5jb20wWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAATej2Ei9WAVXkptT8/XtwkE7EFvu8ZDhEF6er2v
m7F95pWzi+0RHepOdL0YGlB7VIS/hIbPVFSdsbFsDcNGIPJFo1MwUTAdBgNVHQ4E
FgQUz9TCfpcJ9SOp1/+I1oVsN7YbC8owHwYDVR0jBBgwFoAUz9TCfpcJ9SOp1/+I
1oVsN7YbC8owDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiAx7WJO
v7Z9JbBBe8/JgqCQsDiHMVfgC8pGuM/fRoe16wIhAKJVILmQkDn8FCzuRNpVBaq6
UD1hy3CDt+xKMLC5KGRZ
-----END CERTIFICATE-----
"""


# A client certificate and its key (CN savepointd), standing in for a mounted kubernetes.io/tls Secret.
TEST_CLIENT_CERT_PEM = """-----BEGIN CERTIFICATE-----
MIIBgTCCASegAwIBAgIUEcypYfDVSnTq4R5OOZ5h+adwLRMwCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKc2F2ZXBvaW50ZDAgFw0yNjEyMDIxNTA0MTFaGA8yMTI2MTEw
ODE1MDQxMVowFTETMBEGA1UEAwwKc2F2ZXBvaW50ZDBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABJdP8uJG/tU50fXMCZymccUU8sUfBJLgInBke3mQ4FJttqWfdXj3
i8aR2lTKHYFopdEMA+wScHkQ43CkJ/OxW8+jUzBRMB0GA1UdDgQWBBRfA7QJCg0z
9CBwtrK/sJrraDjO5DAfBgNVHSMEGDAWgBRfA7QJCg0z9CBwtrK/sJrraDjO5DAP
BgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQDSvDhr5VMVCQtAtXPc
UGcN3zHMFipgQ2LF6nrkFZL7OAIgBRp9L9ZNG4xaSUiPqVJNOeLtCgu0JyXUG0cE
TY5eE34=
-----END CERTIFICATE-----
"""
TEST_CLIENT_KEY_PEM = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgNF1W0fQwePEjs+IS
OtIvOtsuww4VVBSmk9S+UHqyq9ShRANCAASXT/LiRv7VOdH1zAmcpnHFFPLFHwSS
4CJwZHt5kOBSbbaln3V494vGkdpUyh2BaKXRDAPsEnB5EONwpCfzsVvP
-----END PRIVATE KEY-----
"""


@pytest.mark.parametrize("name", VALUE_SETS)
def test_daemon_check_config_accepts_the_rendered_config(chart, savepointd_bin, name, tmp_path):
    sentinel = "tok-5b2c-never-printed"
    mount = tmp_path / "secrets"
    values = chartlib.merge(without_chart_files(VALUE_SETS[name]), {"secretsMountPath": str(mount)})
    text = chartlib.config_text(render(values, chart=chart))
    config = yaml.safe_load(text)
    # What the pod would find in its mounted Secrets and ConfigMaps.
    for platform in config["platforms"]:
        mounted = (
            ((platform.get("auth") or {}).get("tokenFile"), sentinel + "\n"),
            ((platform.get("tls") or {}).get("caFile"), TEST_CA_PEM),
            ((platform.get("tls") or {}).get("certFile"), TEST_CLIENT_CERT_PEM),
            ((platform.get("tls") or {}).get("keyFile"), TEST_CLIENT_KEY_PEM),
        )
        for path, content in mounted:
            if path and path.startswith(str(mount)):
                pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
                pathlib.Path(path).write_text(content)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAVEPOINTD_")}
    env["VVP_STAGING_TOKEN"] = sentinel
    # As the downward API sets it in the pod (replicas > 1: the Lease's namespace).
    env["POD_NAMESPACE"] = chartlib.NAMESPACE
    result = subprocess.run(
        [savepointd_bin, "check-config", "--config", str(config_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert sentinel not in output
    if not config["applications"]:
        # The chart's defaults name no application: the daemon refuses that config, as NOTES.txt says.
        assert result.returncode == 2, output
        assert "applications: at least one application is required" in output, output
        return
    assert result.returncode == 0, f"check-config exit {result.returncode}:\n{output}"
    # The effective plan names every platform and application.
    for item in config["platforms"] + config["applications"]:
        assert item["name"] in result.stdout, f"{item['name']} missing from the plan:\n{output}"


@pytest.mark.parametrize("defaults,expected", [
    ({"timezone": "Mars/Olympus_Mons"}, ["defaults.timezone", "Mars/Olympus_Mons"]),
    ({"blackoutWindows": [{"schedule": "0 0 * * *", "duration": "2h"}]},
     ["defaults.blackoutWindows", "every slot falls inside a blackout window"]),
    ({"jitter": "25h"}, ["defaults.jitter", "at most 24h"]),
], ids=["timezone", "windows-leave-no-slot", "jitter-too-long"])
def test_daemon_check_config_rejects_what_only_the_daemon_can_judge(chart, savepointd_bin, tmp_path, defaults,
                                                                     expected):
    """The negative control: a config the chart schema lets through but the daemon must refuse."""
    values = chartlib.merge(VALUE_SETS["readme-example"], {"defaults": defaults})
    config_file = tmp_path / "config.yaml"
    config_file.write_text(chartlib.config_text(render(values, chart=chart)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAVEPOINTD_")}
    result = subprocess.run(
        [savepointd_bin, "check-config", "--config", str(config_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    for fragment in expected:
        assert fragment in result.stderr, f"{fragment!r} not in {result.stderr!r}"


@pytest.mark.parametrize("name", ["all-flags", "cronjob"])
def test_daemon_accepts_the_container_arguments(chart, savepointd_bin, name):
    """Every argument the pod passes parses; `--help` at the end then exits 0 without running anything."""
    objects = render(without_chart_files(VALUE_SETS[name]), chart=chart)
    workload = (of_kind(objects, "Deployment") or of_kind(objects, "CronJob"))[0]
    pod = workload["spec"]["template"]["spec"] if workload["kind"] == "Deployment" else \
        workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    result = subprocess.run([savepointd_bin, *args, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"savepointd {' '.join(args)}: {result.stderr}"
