"""Placement options, and the KubeRay files checked as far as a machine without Kubernetes or Docker can.

deploy/rayservice.yaml must be exactly what `python -m serve_app.deploy_manifest` writes from serve_config.yaml;
its serveConfigV2 must be serve_config.yaml plus the cluster overlay only, and must build (Ray's own builder,
the GPU plan check included); the manifest must name the fields KubeRay reads; the Dockerfile must install the
way the README says.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import ray
import yaml

from serve_app import deploy_manifest
from serve_app.config import OCRAppConfig, StageConfig
from tests.unit.test_config_and_builder import STAGES, deployments_of, offline_hub_cache  # noqa: F401 - autouse fixture

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "rayservice.yaml"
GROUP_OF_ROLE = {"cpu": "cpu", "gpu": "gpu"}


def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def containers(document: dict) -> list[dict]:
    cluster = document["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [container for group in groups for container in group["template"]["spec"]["containers"]]


# ---------------------------------------------------------------------------------------------------------------
# Placement (StageConfig.resources / label_selector)


def test_placement_defaults_leave_the_actor_options_as_before():
    options = StageConfig().deployment_options(10.0)
    # No resources and no label_selector: any node. (The runtime_env is the stages' malloc bound.)
    assert options["ray_actor_options"] == {
        "num_cpus": 1.0, "num_gpus": 0.0, "runtime_env": {"env_vars": StageConfig().process_env()}
    }


def test_placement_goes_into_ray_actor_options():
    stage = StageConfig(resources={"node_role_cpu": 0.01}, label_selector={"ocr-role": "gpu", "zone": "!us-east1"})
    actor_options = stage.deployment_options(10.0)["ray_actor_options"]
    assert actor_options["resources"] == {"node_role_cpu": 0.01}
    assert actor_options["label_selector"] == {"ocr-role": "gpu", "zone": "!us-east1"}


@pytest.mark.parametrize(
    "stage,message",
    [
        ({"resources": {"GPU": 1}}, "not a custom resource"),
        ({"resources": {"slot": -1}}, "must not be negative"),
        ({"label_selector": {"ocr role": "gpu"}}, "label_selector"),
    ],
)
def test_invalid_placement_is_refused(stage, message):
    with pytest.raises(ValueError, match=message):
        OCRAppConfig.model_validate({"decoder": stage})


# ---------------------------------------------------------------------------------------------------------------
# The generator and the manifest


def test_the_manifest_is_what_the_generator_writes():
    generated = subprocess.run(
        [sys.executable, "-m", "serve_app.deploy_manifest"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert generated == MANIFEST.read_text(), (
        "deploy/rayservice.yaml is stale: run `python -m serve_app.deploy_manifest > deploy/rayservice.yaml`"
    )


def test_serve_config_v2_is_serve_config_yaml_with_only_the_cluster_overlay():
    serve_config_text = (ROOT / "serve_config.yaml").read_text()
    text = manifest()["spec"]["serveConfigV2"]
    assert isinstance(text, str)  # KubeRay takes it as a string of YAML
    assert text == deploy_manifest.serve_config_yaml(serve_config_text)
    cluster = yaml.safe_load(text)
    original = yaml.safe_load(serve_config_text)
    assert cluster["http_options"].pop("host") == "0.0.0.0"
    original["http_options"].pop("host")
    for stage, options in deploy_manifest.CLUSTER_OVERLAY["args"].items():
        for key in options:
            cluster["applications"][0]["args"][stage].pop(key)
    assert cluster == original


def test_the_cluster_serve_config_builds_with_each_stage_placed(tmp_path):
    path = tmp_path / "serve_config.yaml"
    path.write_text(manifest()["spec"]["serveConfigV2"])
    config, deployments = deployments_of(path)  # Ray's builder on the args: validation and the GPU plan included
    roles = {"Preprocessor": "cpu", "OCRIngress": "cpu", "VisionEncoder": "gpu", "Decoder": "gpu"}
    for name, role in roles.items():
        assert deployments[name].ray_actor_options["label_selector"] == {deploy_manifest.ROLE_LABEL: role}
    assert deployments["Decoder"].ray_actor_options["num_gpus"] == config.decoder.num_gpus > 0


def test_the_manifest_names_what_kuberay_reads():
    document = manifest()
    assert document["apiVersion"] == "ray.io/v1" and document["kind"] == "RayService"
    cluster = document["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"ray[serve]=={ray.__version__}" in pins
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no replicas on the head

    groups = {group["groupName"]: group for group in cluster["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "cpu"}
    for name, group in groups.items():
        assert group["labels"] == {deploy_manifest.ROLE_LABEL: name}
        assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]

    # Sizes follow the serve config: one GPU pod per decoder replica, CPU pods for the CPU stages at their max.
    config = OCRAppConfig.model_validate(yaml.safe_load(document["spec"]["serveConfigV2"])["applications"][0]["args"])
    assert groups["gpu"]["maxReplicas"] == config.decoder.autoscaling.max_replicas
    cpu_pod = float(groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    cpu_needed = sum(stage.autoscaling.max_replicas * stage.num_cpus for stage in (config.preprocessor, config.ingress))
    assert (groups["cpu"]["maxReplicas"] - 1) * cpu_pod < cpu_needed <= groups["cpu"]["maxReplicas"] * cpu_pod

    # Every stage's label selector names a group that has that label.
    for stage in ("preprocessor", "ingress", "encoder", "decoder"):
        role = getattr(config, stage).label_selector[deploy_manifest.ROLE_LABEL]
        assert groups[role]["labels"][deploy_manifest.ROLE_LABEL] == role

    # The API key from a Secret, in the variable the ingress reads; probes on every pod.
    for container in containers(document):
        env = {item["name"]: item for item in container["env"]}
        reference = env[config.security.api_key_env]["valueFrom"]["secretKeyRef"]
        assert reference == {"name": deploy_manifest.API_KEY_SECRET, "key": deploy_manifest.API_KEY_SECRET_KEY}
        assert container["livenessProbe"]["httpGet"] and container["readinessProbe"]["httpGet"]
        assert container["image"] == deploy_manifest.IMAGE
    worker_readiness = groups["gpu"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
    assert worker_readiness == {"path": "/-/healthz", "port": yaml.safe_load(document["spec"]["serveConfigV2"])["http_options"]["port"]}


# ---------------------------------------------------------------------------------------------------------------
# The Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_the_dockerfile_builds_on_vllms_image_for_the_pinned_vllm():
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "FROM"
    image, tag = instructions[0][1].split(":")
    assert image == "vllm/vllm-openai"
    gpu_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert gpu_extra == [f"vllm=={tag.removeprefix('v')}"], "the base image's vLLM must be the gpu extra's pin"
    readme = (ROOT / "README.md").read_text()
    assert f"vllm/vllm-openai:{tag}" in readme, "the README names the base image"


def test_the_dockerfiles_install_step_is_the_readmes():
    runs = [argument for instruction, argument in dockerfile_instructions() if instruction == "RUN"]
    installs = [run for run in runs if "pip install" in run]
    assert installs == ["pip install -e '.[gpu]'"]
    readme = (ROOT / "README.md").read_text()
    by_hand = readme.split("## Installing by hand", 1)[1].split("\n## ", 1)[0]
    cuda_line = next(line for line in by_hand.splitlines() if "CUDA machine" in line)
    # The same install as the README's CUDA line, less the dev extra (test tools).
    assert re.search(r"pip install -e '\.\[gpu(,dev)?\]'", cuda_line), cuda_line
    assert "pip install -e '.[gpu]'" in readme.split("## Several machines", 1)[1].split("\n## ", 1)[0]
    # What the install reads is in the image: the package, its metadata and the readme pyproject names.
    copied = " ".join(argument for instruction, argument in dockerfile_instructions() if instruction == "COPY")
    for needed in ("pyproject.toml", "README.md", "serve_app", "serve_config.yaml"):
        assert needed in copied
