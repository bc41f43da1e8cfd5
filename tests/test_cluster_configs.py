"""The shipped cluster definitions stay launchable: ray-cluster.yaml passes Ray's own autoscaler
checks, the KubeRay manifests carry what KubeRay requires, and every command they run names a
config that validates with the overrides they pass."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from fs_ray.config import load_config
from fs_ray.run_configs import CONFIG_KINDS, load_any

from .conftest import REPO

KUBERAY = sorted((REPO / "cluster" / "kuberay").glob("*.yaml"))


def _ray_version() -> str:
    import ray

    return ray.__version__


def test_ray_cluster_yaml_passes_the_autoscalers_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "ray-cluster.yaml").read_text(encoding="utf-8"))
    config = prepare_config(raw)
    validate_config(config)
    types = config["available_node_types"]
    assert config["head_node_type"] in types and types[config["head_node_type"]]["resources"]["CPU"] == 0
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU")}
    assert "p4d.24xlarge" in {t["node_config"]["InstanceType"] for t in gpu_types.values()}
    assert any(t["resources"]["GPU"] == 1 for t in gpu_types.values()), "a single-GPU type too"
    assert all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu_types.values())
    assert config["idle_timeout_minutes"] > 0 and config["max_workers"] >= max(t["max_workers"] for t in gpu_types.values())
    setup = " ".join(config["setup_commands"])
    assert "cluster/setup.sh" in setup
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in starts and "NCCL" in starts and "FS_RAY_STORAGE=s3://" in starts
    assert config["file_mounts"]["~/.ray/auth_token"]


def test_ray_cluster_yaml_rejects_a_broken_edit():
    """The validation is real: a typo in a node type is caught."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "ray-cluster.yaml").read_text(encoding="utf-8"))
    raw["available_node_types"]["gpu1"]["max_worker"] = raw["available_node_types"]["gpu1"].pop("max_workers")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(raw))


def _docs() -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text(encoding="utf-8")) for p in KUBERAY}


def _cluster_specs(doc: dict) -> dict:
    return {"RayCluster": doc["spec"], "RayJob": doc["spec"].get("rayClusterSpec"),
            "RayService": doc["spec"].get("rayClusterConfig")}[doc["kind"]]


@pytest.mark.parametrize("name", [p.name for p in KUBERAY])
def test_kuberay_manifest_has_what_kuberay_requires(name):
    doc = _docs()[name]
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob", "RayService")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    spec = _cluster_specs(doc)
    assert spec["rayVersion"] == _ray_version(), "rayVersion must match the Ray fs_ray pins"
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    groups = [head["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for template in groups:
        (container,) = template["spec"]["containers"]
        assert container["image"] and container["resources"]["limits"]["cpu"]
        assert container["resources"]["requests"] == container["resources"]["limits"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"
    if doc["kind"] == "RayCluster":
        assert spec["enableInTreeAutoscaling"] is True
        assert any(g["maxReplicas"] > g["minReplicas"] for g in spec["workerGroupSpecs"])


def test_rayjob_entrypoint_names_a_config_that_validates_with_its_overrides():
    doc = _docs()["rayjob-pretrain.yaml"]
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "python" and (REPO / argv[1]).is_file()
    config = argv[argv.index("--config") + 1]
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    kind = yaml.safe_load((REPO / config).read_text())["kind"]
    cfg = load_config(CONFIG_KINDS[kind], REPO / config, overrides)
    assert cfg.scaling.use_gpu and cfg.run.storage_path.startswith("s3://")


def test_rayservice_serve_config_is_a_valid_serve_deploy_config():
    from ray.serve.schema import ServeDeploySchema

    doc = _docs()["rayservice.yaml"]
    schema = ServeDeploySchema.model_validate(yaml.safe_load(doc["spec"]["serveConfigV2"]))
    (app,) = schema.applications
    assert app.import_path == "fs_ray.serving.app:app_builder"
    cfg = load_any(REPO / app.args["config"], app.args["set"])
    assert cfg.kind == "serve" and cfg.models.generate is None and cfg.host == "0.0.0.0"


def test_dockerfile_builds_on_the_pinned_ray():
    text = (REPO / "cluster" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{_ray_version()}-" in text and "cluster/setup.sh" in text
