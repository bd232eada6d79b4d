"""One Ray instance for the integration session, serving one graph per decoder engine.

`serve run` in a subprocess starts a Ray of its own: those tests run first, before this one starts.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from serve_app.app import build_graph
from serve_app.config import OCRAppConfig

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# A free port per test session, so two sessions on one machine do not share a proxy.
HTTP_PORT = _free_port()
BASE_URL = f"http://127.0.0.1:{HTTP_PORT}"
ROUTES = {"vllm": "/vllm", "transformers": "/transformers"}
LITE_ROUTE = "/lite"


def graph_config(checkpoint: str, engine: str) -> OCRAppConfig:
    config = OCRAppConfig.from_serve_config(ROOT / "configs" / "cpu.yaml").model_dump()
    config["model"]["source"] = checkpoint
    config["decoder"]["engine"] = engine
    if engine == "transformers":
        config["decoder"]["engine_args"] = {}
    return OCRAppConfig.model_validate(config)


def pytest_collection_modifyitems(items):
    # Subprocess `serve run` tests first: they must not meet the in-process Ray started below.
    items.sort(key=lambda item: 0 if "test_serve_run" in item.nodeid else 1)


@pytest.fixture(scope="session")
def served(tiny_checkpoint):
    import ray
    from ray import serve

    # Logical CPUs: three graphs of fractional stages share this 2-core machine.
    ray.init(num_cpus=8, include_dashboard=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": HTTP_PORT})
    for engine, route in ROUTES.items():
        serve.run(build_graph(graph_config(str(tiny_checkpoint), engine)), name=engine, route_prefix=route)
    serve.run(build_graph(OCRAppConfig.from_serve_config(ROOT / "configs" / "lite.yaml")), name="lite", route_prefix=LITE_ROUTE)
    yield str(tiny_checkpoint)
    serve.shutdown()
    ray.shutdown()
