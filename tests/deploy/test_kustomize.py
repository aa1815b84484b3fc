"""Kubernetes manifests: every overlay renders with kustomize and passes kubernetes-validate --strict, offline.

Then the rendered objects are checked against the code: ports, health service names and settings come from crucible.mesh
and the config classes, and the security, QoS, GPU, autoscaling and TLS promises of deploy/README.md hold.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from crucible.mesh import METRICS_PORT_OFFSET, SERVICES
from tests.deploy.support import KUSTOMIZE, OVERLAYS, check_service_env, kustomize, run, tool

# Oldest Kubernetes the manifests target (native grpc probes GA 1.27, PSA labels 1.25) and the newest schema bundled.
K8S_VERSIONS = ("1.29.0", "1.37.0")
MODEL_SERVICES = ("detector", "proposer", "scorer")
GPU_SERVICES = ("detector", "proposer")


def _validate(manifest: str) -> tuple[int, str]:
    """Pipe a manifest stream into `kubernetes-validate --strict -` once per target Kubernetes version."""
    rc, out = 0, ""
    for version in K8S_VERSIONS:  # stdin can be read once per process
        result = run(tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, "-", stdin=manifest)
        rc |= result.returncode
        out += result.stdout + result.stderr
    return rc, out


def _pipe_kustomize_into_validate(directory) -> tuple[int, str]:
    """`kubectl kustomize DIR | kubernetes-validate --strict -`, a real pipe, for each target version."""
    rc, out = 0, ""
    for version in K8S_VERSIONS:
        render = subprocess.Popen([tool("kubectl"), "kustomize", str(directory)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        validate = subprocess.run(
            [tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, "-"],
            stdin=render.stdout,
            capture_output=True,
            text=True,
            timeout=120,
        )
        render.stdout.close()
        render_err = render.stderr.read().decode()
        render.stderr.close()
        rc |= render.wait(timeout=60) | validate.returncode
        out += render_err + validate.stdout + validate.stderr
    return rc, out


def _kinds(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one container per pod: patches address containers/0"
    return containers[0]


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", []) if "valueFrom" not in e}


def _cpu(value: str) -> float:
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_renders_and_validates_strictly(overlay):
    rc, out = _pipe_kustomize_into_validate(overlay)
    assert rc == 0, out
    # A kind without a bundled schema is only a WARN line with exit 0: every kind we ship must have one.
    assert "WARN" not in out and "ERROR" not in out, out


def test_base_alone_renders_and_validates_strictly():
    rc, out = _pipe_kustomize_into_validate(KUSTOMIZE / "base")
    assert rc == 0 and "WARN" not in out, out


def test_validation_rejects_a_misspelled_field():
    manifest = kustomize(KUSTOMIZE / "base").replace("readOnlyRootFilesystem", "readOnlyRootFileSystem", 1)
    rc, out = _validate(manifest)
    assert rc != 0 and "readOnlyRootFileSystem" in out


def test_overlays_are_dev_and_prod():
    assert {p.name for p in OVERLAYS} >= {"dev", "prod"}


def test_every_service_has_deployment_headless_service_and_account_with_code_ports(rendered):
    for overlay, docs in rendered.items():
        deployments, services, accounts = _kinds(docs, "Deployment"), _kinds(docs, "Service"), _kinds(docs, "ServiceAccount")
        assert set(deployments) == set(SERVICES) == set(services) == set(accounts), overlay
        for name, entry in SERVICES.items():
            svc, dep = services[name], deployments[name]
            assert svc["spec"]["clusterIP"] == "None", f"{overlay}/{name}: gRPC needs a headless Service"
            pod_labels = dep["spec"]["template"]["metadata"]["labels"]
            assert all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items())
            assert dep["spec"]["template"]["spec"]["serviceAccountName"] == name
            ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
            assert ports == {"grpc": entry.port, "metrics": entry.port + METRICS_PORT_OFFSET}, f"{overlay}/{name}"
            container = _container(dep)
            assert {p["name"]: p["containerPort"] for p in container["ports"]} == ports
            assert container["args"] == ["serve", name]
            annotations = dep["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/port"] == str(entry.port + METRICS_PORT_OFFSET)


def test_settings_in_manifests_are_real_config_fields_with_valid_values(rendered):
    for overlay, docs in rendered.items():
        for name, dep in _kinds(docs, "Deployment").items():
            env = _env(_container(dep))
            check_service_env(name, env)
            assert env[f"CRUCIBLE_{name.upper()}_PORT"] == str(SERVICES[name].port), f"{overlay}/{name}"
            assert env["CRUCIBLE_HOST"] == "0.0.0.0", "probes and peers reach the pod IP"


def test_pods_are_non_root_with_read_only_root_and_writable_tmp(rendered):
    for overlay, docs in rendered.items():
        for name, dep in _kinds(docs, "Deployment").items():
            pod = dep["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
            container = _container(dep)
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            volumes = {v["name"]: v for v in pod["volumes"]}
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            for writable in ("/tmp", "/home/crucible/.cache"):
                assert "emptyDir" in volumes[mounts[writable]], f"{overlay}/{name}: {writable} must be writable"
            for resource in ("cpu", "memory"):
                assert resource in container["resources"]["requests"] and resource in container["resources"]["limits"]


def _probe_targets(container: dict) -> dict[str, tuple[str, ...]]:
    """What each probe checks: ('grpc', port, service) or ('exec', *command)."""
    out = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[kind]
        handlers = [h for h in ("grpc", "exec", "httpGet", "tcpSocket") if h in probe]
        assert len(handlers) == 1, f"{kind} must have exactly one handler, got {handlers}"
        if "grpc" in probe:
            out[kind] = ("grpc", str(probe["grpc"]["port"]), probe["grpc"].get("service", ""))
        else:
            out[kind] = ("exec", *probe["exec"]["command"])
    return out


def test_dev_probes_are_native_grpc_on_the_service_health_name(rendered):
    for name, dep in _kinds(rendered["dev"], "Deployment").items():
        entry = SERVICES[name]
        probes = _probe_targets(_container(dep))
        assert probes["startupProbe"] == probes["readinessProbe"] == ("grpc", str(entry.port), entry.proto_service)
        assert probes["livenessProbe"] == ("grpc", str(entry.port), "")


def test_prod_probes_use_the_tls_healthcheck_for_their_own_service(rendered):
    for name, dep in _kinds(rendered["prod"], "Deployment").items():
        probes = _probe_targets(_container(dep))
        assert probes["readinessProbe"] == probes["startupProbe"] == ("exec", "crucible-healthcheck", name)
        assert probes["livenessProbe"] == ("exec", "crucible-healthcheck", name, "--health-service", "")
        assert _env(_container(dep))["CRUCIBLE_PROBE_SERVER_NAME"] == name


def _qos_class(pod: dict) -> str:
    """The QoS class the kubelet would assign (Guaranteed: every container has cpu and memory requests == limits)."""
    guaranteed = True
    for c in pod["containers"] + pod.get("initContainers", []):
        requests, limits = c.get("resources", {}).get("requests", {}), c.get("resources", {}).get("limits", {})
        for r in ("cpu", "memory"):
            if r not in limits or requests.get(r, limits[r]) != limits[r]:
                guaranteed = False
    return "Guaranteed" if guaranteed else "Burstable"


def test_scorer_is_guaranteed_qos_with_integer_cpus_in_every_overlay(rendered):
    for overlay, docs in rendered.items():
        deployments = _kinds(docs, "Deployment")
        scorer = deployments["scorer"]["spec"]["template"]["spec"]
        assert _qos_class(scorer) == "Guaranteed", overlay
        cpu = scorer["containers"][0]["resources"]["limits"]["cpu"]
        assert re.fullmatch(r"[1-9][0-9]*", str(cpu)), f"{overlay}: static CPU manager pins only whole CPUs, got {cpu}"
        assert _env(scorer["containers"][0])["CRUCIBLE_SCORER_DEVICE"] == "cpu"
        # The others are Burstable (no accidental exclusive cores).
        assert _qos_class(deployments["detector"]["spec"]["template"]["spec"]) == "Burstable"


def test_prod_gives_gpus_and_the_cuda_image_to_detector_and_proposer_only(rendered):
    for name, dep in _kinds(rendered["prod"], "Deployment").items():
        container, pod = _container(dep), dep["spec"]["template"]["spec"]
        gpu = container["resources"]["limits"].get("nvidia.com/gpu")
        tolerations = [t["key"] for t in pod.get("tolerations", [])]
        if name in GPU_SERVICES:
            assert gpu == "1" and "nvidia.com/gpu" in tolerations
            assert "crucible-cuda:" in container["image"]
            assert _env(container)[f"CRUCIBLE_{name.upper()}_DEVICE"] == "cuda"
        else:
            assert gpu is None and not tolerations
            assert re.search(r"/crucible:[\w.]+$", container["image"])
    for dep in _kinds(rendered["dev"], "Deployment").values():
        assert "nvidia.com/gpu" not in _container(dep)["resources"]["limits"]


def test_prod_autoscales_model_services_on_queue_depth(rendered):
    docs = rendered["prod"]
    hpas, deployments = _kinds(docs, "HorizontalPodAutoscaler"), _kinds(docs, "Deployment")
    assert set(hpas) == set(MODEL_SERVICES)
    for name, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "crucible_batcher_queue_depth"
        assert metric["pods"]["target"]["type"] == "AverageValue"
        assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert "replicas" not in deployments[name]["spec"], "the HPA owns the replica count"
    for name in ("scheduler", "cost"):
        assert deployments[name]["spec"]["replicas"] == 1 and deployments[name]["spec"]["strategy"]["type"] == "Recreate"


def test_prod_mounts_tls_and_token_secrets_where_the_settings_point(rendered):
    for name, dep in _kinds(rendered["prod"], "Deployment").items():
        container, pod = _container(dep), dep["spec"]["template"]["spec"]
        env = _env(container)
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        expected = {
            "CRUCIBLE_TLS_CERT_FILE": "crucible-tls",
            "CRUCIBLE_TLS_KEY_FILE": "crucible-tls",
            "CRUCIBLE_CLIENT_CA_FILE": "crucible-tls",
            "CRUCIBLE_AUTH_TOKEN_FILE": "crucible-auth-token",
        }
        for var, secret in expected.items():
            directory, _, _file = env[var].rpartition("/")
            assert secrets[mounts[directory]] == secret, f"{name}: {var}={env[var]} is not in secret {secret}"
        assert "CRUCIBLE_AUTH_TOKEN" not in env, "the token comes from a file, never a literal"
        if name == "scheduler":  # its own client to the cost service trusts the mesh CA (its token: the auth token file)
            directory = env["CRUCIBLE_SCHEDULER_COST_CA_FILE"].rpartition("/")[0]
            assert secrets[mounts[directory]] == "crucible-tls"
    for dep in _kinds(rendered["dev"], "Deployment").values():
        assert "CRUCIBLE_TLS_CERT_FILE" not in _env(_container(dep))


def test_prod_keeps_scheduler_and_cost_state_on_persistent_volumes(rendered):
    docs = rendered["prod"]
    claims = _kinds(docs, "PersistentVolumeClaim")
    for name in ("scheduler", "cost"):
        dep = _kinds(docs, "Deployment")[name]
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        assert set(volumes["state"]) == {"name", "persistentVolumeClaim"}
        assert volumes["state"]["persistentVolumeClaim"]["claimName"] in claims
        mounts = {m["name"]: m["mountPath"] for m in _container(dep)["volumeMounts"]}
        assert mounts["state"] == "/var/lib/crucible"


def test_prod_network_policies_name_ports_that_the_pods_have(rendered):
    docs = rendered["prod"]
    policies = _kinds(docs, "NetworkPolicy")
    assert policies, "prod includes components/network-policies"
    port_names = {p["name"] for dep in _kinds(docs, "Deployment").values() for p in _container(dep)["ports"]}
    pod_labels = [dep["spec"]["template"]["metadata"]["labels"] for dep in _kinds(docs, "Deployment").values()]
    for name, policy in policies.items():
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        assert any(all(labels.get(k) == v for k, v in selector.items()) for labels in pod_labels), name
        for rule in policy["spec"].get("ingress", []):
            for port in rule["ports"]:
                assert port["port"] in port_names, f"{name}: no pod port named {port['port']}"
    deny = policies["crucible-default-deny-ingress"]["spec"]
    assert deny["policyTypes"] == ["Ingress"] and "ingress" not in deny


def test_namespaces_enforce_the_restricted_pod_security_standard(rendered):
    for overlay, docs in rendered.items():
        (namespace,) = _kinds(docs, "Namespace").values()
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        assert all(d["metadata"].get("namespace") == namespace["metadata"]["name"] for d in docs if d["kind"] != "Namespace"), (
            overlay
        )
