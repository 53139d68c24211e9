"""cluster/: the `ray up` YAMLs, KubeRay manifests, image and MLflow deployment parse, have the
structure their tools need, and agree with each other and with dsm's package version."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def load(rel: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / rel).read_text()) if d is not None]


def ray_image_version(image: str) -> str:
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-(gpu|cpu)", image)
    assert m, image
    return m.group(1)


def cluster_ray_version() -> str:
    (rc,) = load("kuberay/raycluster.yaml")
    return rc["spec"]["rayVersion"]


def test_every_yaml_parses_and_marks_what_to_change():
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert {f.relative_to(CLUSTER).as_posix() for f in files} >= {
        "ray-up/aws.yaml", "ray-up/gcp.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml",
        "kuberay/storage.yaml", "mlflow/docker-compose.yaml", "mlflow/k8s.yaml"}
    for f in files:
        assert list(yaml.safe_load_all(f.read_text())), f
        assert "CHANGE ME" in f.read_text(), f"{f}: mark the values a user must set with `# CHANGE ME:`"


def test_cluster_ray_matches_the_ray_dsm_is_tested_with():
    v = cluster_ray_version()
    assert v.split(".")[:2] == ray.__version__.split(".")[:2], (v, ray.__version__)


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_ray_up_yaml(cloud):
    (c,) = load(f"ray-up/{cloud}.yaml")
    for key in ("cluster_name", "max_workers", "provider", "auth", "available_node_types", "head_node_type",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands", "docker"):
        assert key in c, key
    assert c["provider"]["type"] == cloud
    types = c["available_node_types"]
    head = types[c["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and "GPU" not in head["resources"]
    gpus = {}
    for name, t in types.items():
        assert "node_config" in t and "resources" in t, name
        if name != c["head_node_type"]:
            assert 0 <= t["min_workers"] <= t["max_workers"] <= c["max_workers"], name
            gpus[name] = t["resources"]["GPU"]
            assert t["resources"]["CPU"] >= 8 * t["resources"]["GPU"], name  # imagenet64-paper: 8 CPUs per worker
    assert sorted(gpus.values()) == [1, 8]

    assert ray_image_version(c["docker"]["image"]) == cluster_ray_version()
    assert ray_image_version(c["docker"]["head_image"]) == cluster_ray_version()
    assert c["docker"]["image"].endswith("-gpu") and c["docker"]["head_image"].endswith("-cpu")
    opts = " ".join(c["docker"]["run_options"])
    assert "DSM_SHARED_STORAGE=1" in opts and "DSM_WORKSPACE=/shared/" in opts and "-v /shared:/shared" in opts
    assert "MLFLOW_TRACKING_URI=http" in opts

    setup = " ".join(c["setup_commands"])
    assert f"@v{VERSION}" in setup and f"== '{VERSION}'" in setup  # installs, then checks, dsm's version
    assert any("--head" in s and "--num-cpus=0" in s and "--dashboard-host=0.0.0.0" in s
               for s in c["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP:6379" in s for s in c["worker_start_ray_commands"])
    assert any("/shared" in s and "mount" in s for s in c["initialization_commands"])


def _containers(template: dict) -> list[dict]:
    return template["spec"]["containers"]


def _env(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def test_raycluster():
    (rc,) = load("kuberay/raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    assert rc["metadata"]["labels"]["app.kubernetes.io/version"] == VERSION
    spec = rc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    (hc,) = _containers(head["template"])
    assert {p["containerPort"] for p in hc["ports"]} >= {6379, 8265}
    assert "nvidia.com/gpu" not in hc["resources"]["limits"]

    (pvc,) = [d for d in load("kuberay/storage.yaml") if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    gpus = []
    groups = [head["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for g in spec["workerGroupSpecs"]:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        (c,) = _containers(g["template"])
        lim, req = c["resources"]["limits"], c["resources"]["requests"]
        assert lim["nvidia.com/gpu"] == req["nvidia.com/gpu"]
        gpus.append(int(lim["nvidia.com/gpu"]))
        assert int(lim["cpu"]) >= 8 * int(lim["nvidia.com/gpu"])
        assert any(t["key"] == "nvidia.com/gpu" for t in g["template"]["spec"]["tolerations"])
    assert sorted(gpus) == [1, 8]
    for t in groups:
        (c,) = _containers(t)
        assert c["image"].endswith(f"/dsm:{VERSION}"), c["image"]
        env = _env(c)
        assert env["DSM_SHARED_STORAGE"]["value"] == "1" and env["DSM_WORKSPACE"]["value"].startswith("/shared/")
        assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http")
        for name, e in env.items():  # credentials only by reference
            if re.search("PASSWORD|SECRET|TOKEN|KEY", name):
                assert "valueFrom" in e and "value" not in e, name
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts["shared"] == "/shared"
        vols = {v["name"]: v for v in t["spec"]["volumes"]}
        assert vols["shared"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]


def test_rayjob_runs_the_paper_config_on_the_raycluster():
    (job,) = load("kuberay/rayjob.yaml")
    (rc,) = load("kuberay/raycluster.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["labels"]["app.kubernetes.io/version"] == VERSION
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == rc["metadata"]["name"]
    ep = job["spec"]["entrypoint"]
    assert "dsm train configs/imagenet64-paper.yaml" in ep and (REPO / "configs" / "imagenet64-paper.yaml").is_file()
    workdir = re.search(r"^WORKDIR (\S+)", (CLUSTER / "docker" / "Dockerfile").read_text(), re.MULTILINE).group(1)
    assert ep.startswith(f"cd {workdir} && "), (ep, workdir)
    renv = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert renv["env_vars"]["DSM_SHARED_STORAGE"] == "1"
    (sc,) = job["spec"]["submitterPodTemplate"]["spec"]["containers"]
    assert sc["image"] == _containers(rc["spec"]["headGroupSpec"]["template"])[0]["image"]


def test_dockerfile_builds_dsm_at_its_version_on_the_clusters_ray():
    text = (CLUSTER / "docker" / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.MULTILINE).group(1)
    assert ray_image_version(base) == cluster_ray_version() and base.endswith("-gpu")
    assert f"ARG DSM_VERSION={VERSION}" in text and f"dsm:{VERSION}" in text
    assert re.search(r"^COPY .*configs", text, re.MULTILINE)  # the RayJob's config ships in the image


def test_mlflow_deployment_takes_secrets_from_the_environment_only():
    (compose,) = load("mlflow/docker-compose.yaml")
    svcs = compose["services"]
    assert {"postgres", "minio", "mlflow"} <= set(svcs)
    assert "--serve-artifacts" in svcs["mlflow"]["command"] and "postgresql://" in svcs["mlflow"]["command"]
    assert svcs["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, svc in svcs.items():
        for k, v in (svc.get("environment") or {}).items():
            if re.search("PASSWORD|SECRET|KEY", k):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(v)), f"{name}.{k} must come from .env: {v}"
    mlflow_base = re.search(r"^FROM \S+:v(\d+)\.", (CLUSTER / "mlflow" / "Dockerfile").read_text(), re.MULTILINE)
    assert mlflow_base and int(mlflow_base.group(1)) >= 3
    example = (CLUSTER / "mlflow" / ".env.example").read_text()
    assert "CHANGE_ME" in example and "cluster/mlflow/.env" in (REPO / ".gitignore").read_text()

    dep, svc = load("mlflow/k8s.yaml")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert all("valueFrom" in e for e in c["env"])
    (rc,) = load("kuberay/raycluster.yaml")
    uri = _env(_containers(rc["spec"]["headGroupSpec"]["template"])[0])["MLFLOW_TRACKING_URI"]["value"]
    assert uri == f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local:5000"


def test_no_secrets_committed():
    pattern = re.compile(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY|"
                         r"(?i:password)\s*[:=]\s*(?!\$|CHANGE)[\w@!]{6,}")
    for f in CLUSTER.rglob("*"):
        if f.is_file():
            assert not pattern.search(f.read_text()), f
