"""The KubeRay RayService manifest, generated from serve_config.yaml so the two cannot drift.

    python -m serve_app.deploy_manifest > deploy/rayservice.yaml

`serveConfigV2` is serve_config.yaml's application, with only what a cluster changes (CLUSTER_OVERLAY):
the proxies listen on the pod's address, and each stage is placed by node role through Ray node labels
(the CPU stages on the CPU group, the model stages on the GPU group). Group sizes come from the same config:
one GPU pod per decoder replica, CPU pods for the preprocessor and ingress replicas at their max.
tests/unit/test_deploy_manifest.py regenerates the manifest and compares it with the file.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "serve_config.yaml"
MANIFEST = ROOT / "deploy" / "rayservice.yaml"

NAME = "hunyuan-ocr"
IMAGE = "ghcr.io/example/hunyuan-ocr-serve:0.1.0"  # built from ./Dockerfile; push it where the cluster pulls from
RAY_VERSION = "2.60.0"  # pyproject.toml's ray[serve] pin
ROLE_LABEL = "ocr-role"
API_KEY_SECRET, API_KEY_SECRET_KEY = "hunyuan-ocr-api-key", "api-key"
SERVE_PORT = 8000
# One GPU pod: the GPU, and CPUs for the encoder (0.5), the decoder (1), vLLM's engine processes and the proxy.
GPU_POD = {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": "1"}
CPU_POD = {"cpu": "4", "memory": "8Gi"}
HEAD_POD = {"cpu": "2", "memory": "8Gi"}

# What a cluster changes in serve_config.yaml: the proxies must be reachable on the pod's address (the API key
# then guards them: it comes from a Secret), and each stage goes to the nodes of its role.
CLUSTER_OVERLAY: dict[str, Any] = {
    "http_options": {"host": "0.0.0.0"},
    "args": {
        "ingress": {"label_selector": {ROLE_LABEL: "cpu"}},
        "preprocessor": {"label_selector": {ROLE_LABEL: "cpu"}},
        "encoder": {"label_selector": {ROLE_LABEL: "gpu"}},
        "decoder": {"label_selector": {ROLE_LABEL: "gpu"}},
    },
}


def cluster_serve_config(serve_config: dict[str, Any]) -> dict[str, Any]:
    """serve_config.yaml's document with CLUSTER_OVERLAY applied (a copy)."""
    document = copy.deepcopy(serve_config)
    document.setdefault("http_options", {}).update(CLUSTER_OVERLAY["http_options"])
    for application in document["applications"]:
        args = application.setdefault("args", {})
        for stage, options in CLUSTER_OVERLAY["args"].items():
            args.setdefault(stage, {}).update(copy.deepcopy(options))
    return document


def _max_replicas(stage: dict[str, Any]) -> int:
    autoscaling = stage.get("autoscaling")
    return int(autoscaling.get("max_replicas", 1)) if autoscaling else int(stage.get("num_replicas") or 1)


def group_sizes(args: dict[str, Any]) -> dict[str, int]:
    """Most pods per worker group: one GPU pod per decoder replica (an encoder shares each GPU); CPU pods for
    the preprocessor and ingress replicas at their max (num_cpus each)."""
    from serve_app.config import IngressConfig, PreprocessorConfig

    cpu_needed = sum(
        _max_replicas(args.get(stage, {})) * float(args.get(stage, {}).get("num_cpus", model.model_fields["num_cpus"].default))
        for stage, model in (("preprocessor", PreprocessorConfig), ("ingress", IngressConfig))
    )
    return {
        "gpu": max(_max_replicas(args.get("decoder", {})), _max_replicas(args.get("encoder", {}))),
        "cpu": max(1, math.ceil(cpu_needed / float(CPU_POD["cpu"]))),
    }


def _env() -> list[dict[str, Any]]:
    # The ingress reads the key from OCR_API_KEY (security.api_key_env); every pod gets it, wherever it runs.
    return [{
        "name": "OCR_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": API_KEY_SECRET, "key": API_KEY_SECRET_KEY}},
    }]


def _probe(path: str, port: int, period_s: int, failures: int) -> dict[str, Any]:
    # httpGet: no tool needed in the image. Ray's health paths answer without its auth token.
    return {
        "httpGet": {"path": path, "port": port}, "initialDelaySeconds": 30, "periodSeconds": period_s,
        "timeoutSeconds": 5, "failureThreshold": failures,
    }


def _container(name: str, resources: dict[str, str], worker: bool) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": IMAGE,
        "env": _env(),
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "ports": [{"containerPort": SERVE_PORT, "name": "serve"}],
        # The raylet is alive (Ray's own health path on the dashboard agent).
        "livenessProbe": _probe("/api/local_raylet_healthz", 52365, 10, 6),
    }
    if worker:
        # Ready for traffic when this pod's Serve proxy is (what KubeRay's own worker probe checks).
        container["readinessProbe"] = _probe("/-/healthz", SERVE_PORT, 5, 3)
    else:
        container["ports"] += [
            {"containerPort": 6379, "name": "gcs-server"}, {"containerPort": 8265, "name": "dashboard"},
        ]
        container["readinessProbe"] = _probe("/api/gcs_healthz", 8265, 5, 6)
    if "nvidia.com/gpu" in resources:
        # vLLM's worker processes share tensors through /dev/shm.
        container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    return container


def _pod(container: dict[str, Any], gpu: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container]}
    if gpu:
        spec["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}]
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"spec": spec}


def rayservice(serve_config_text: str) -> dict[str, Any]:
    """The RayService object; its serveConfigV2 is `serve_config_yaml(serve_config_text)`."""
    serve_config = yaml.safe_load(serve_config_text)
    sizes = group_sizes(serve_config["applications"][0].get("args", {}))
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": NAME},
        "spec": {
            "serveConfigV2": serve_config_yaml(serve_config_text),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                # Ray's autoscaler (v2: scales groups for label selectors) adds pods for replicas Serve can't place.
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {"version": "v2", "idleTimeoutSeconds": 300},
                # Ray's own token auth between Ray's components and on its dashboard (KubeRay creates the token).
                "authOptions": {"mode": "token"},
                "headGroupSpec": {
                    # No replicas on the head: it runs GCS, Serve's controller and a proxy.
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": _pod(_container("ray-head", HEAD_POD, worker=False)),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "gpu",
                        "replicas": 1,
                        "minReplicas": 1,
                        "maxReplicas": sizes["gpu"],
                        "labels": {ROLE_LABEL: "gpu"},
                        "rayStartParams": {},
                        "template": _pod(_container("ray-worker", GPU_POD, worker=True), gpu=True),
                    },
                    {
                        "groupName": "cpu",
                        "replicas": 1,
                        "minReplicas": 1,
                        "maxReplicas": sizes["cpu"],
                        "labels": {ROLE_LABEL: "cpu"},
                        "rayStartParams": {},
                        "template": _pod(_container("ray-worker", CPU_POD, worker=True)),
                    },
                ],
            },
        },
    }


def serve_config_yaml(serve_config_text: str) -> str:
    document = cluster_serve_config(yaml.safe_load(serve_config_text))
    return yaml.safe_dump(document, sort_keys=False, width=120)


class _Literal(str):
    pass


def _literal(dumper: yaml.SafeDumper, value: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


def render(serve_config_path: Path = SERVE_CONFIG) -> str:
    """The manifest's text (serveConfigV2 as a readable block)."""
    manifest = rayservice(serve_config_path.read_text())
    manifest["spec"]["serveConfigV2"] = _Literal(manifest["spec"]["serveConfigV2"])
    dumper = type("Dumper", (yaml.SafeDumper,), {})
    dumper.add_representer(_Literal, _literal)
    header = (
        "# Generated by `python -m serve_app.deploy_manifest > deploy/rayservice.yaml` from serve_config.yaml;\n"
        "# edit those, not this file (tests/unit/test_deploy_manifest.py fails when they differ).\n"
        f"# Needs KubeRay >= 1.5.1 (group labels, authOptions), the image built from ./Dockerfile as {IMAGE},\n"
        f"# and the Secret: kubectl create secret generic {API_KEY_SECRET} --from-literal={API_KEY_SECRET_KEY}=<key>\n"
    )
    return header + yaml.dump(manifest, Dumper=dumper, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-config", type=Path, default=SERVE_CONFIG)
    args = parser.parse_args(argv)
    sys.stdout.write(render(args.serve_config))


if __name__ == "__main__":
    main()
