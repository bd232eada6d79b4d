"""One Ray instance for the integration session, serving one graph per decoder engine.

`serve run` in a subprocess starts a Ray of its own: those tests run first, before this one starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.app import build_graph
from serve_app.config import OCRAppConfig
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
SROIE_DIR = ROOT.parent / "shared" / "data" / "sroie-sample"  # real receipts (../shared/data)


# A free port per test session, so two sessions on one machine do not share a proxy.
HTTP_PORT = free_port()
BASE_URL = f"http://127.0.0.1:{HTTP_PORT}"
# Ray's Prometheus endpoint for this session (the stages' metrics are exported there).
METRICS_PORT = free_port()
ROUTES = {"vllm": "/vllm", "transformers": "/transformers"}  # HunyuanOCR 1.5's recipe, 1.5's config layout
# The same graphs with 1.0's recipe on the tiny model in 1.0's config layout.
ROUTES_1_0 = {"vllm": "/vllm-1-0", "transformers": "/transformers-1-0"}
# HunyuanOCR 1.5 with encoder.placement in_decoder: no VisionEncoder, vLLM runs the tower on the Preprocessor's patches.
IN_DECODER_ROUTE = "/vllm-in-decoder"
LITE_ROUTE = "/lite"
# The lite graph again with the security options on: an API key and an image_url allow-list.
SECURE_ROUTE = "/secure"
SECURE_API_KEY = "test-key-" + "7f3a9c1e5b"


def graph_config(checkpoint: str, engine: str, version: str = "1.5", placement: str = "split") -> OCRAppConfig:
    config = OCRAppConfig.from_serve_config(ROOT / "configs" / "cpu.yaml").model_dump()
    config["model"]["source"] = checkpoint
    config["decoder"]["engine"] = engine
    config["encoder"]["placement"] = placement
    if version != config["model"]["version"]:
        # The other version's recipe where cpu.yaml does not set its own (pixels, max_tokens, the guard: its own).
        from serve_app.profiles import profile_for

        profile = profile_for(version)
        config["model"]["version"] = version
        config["decoding"] = profile.decoding.model_dump()
    if engine == "transformers":
        config["decoder"]["engine_args"] = {}
    return OCRAppConfig.model_validate(config)


@pytest.fixture(scope="module")
def loop():
    """One event loop per test module: AsyncLLM binds to the loop of its first request."""
    import asyncio

    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def start_engine(engine, loop, stage) -> None:
    """Start a decoder engine as its replica would: with the stage's process environment (the replica's
    runtime_env), which vLLM's engine core inherits when it is spawned."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in stage.process_env().items():
            patch.setenv(name, value)
        loop.run_until_complete(engine.start())


def pytest_collection_modifyitems(items):
    # Subprocess `serve run` tests first: they must not meet the in-process Ray started below.
    # Replica-kill tests last: nothing else should run while a stage restarts.
    def order(item) -> int:
        return 0 if "test_serve_run" in item.nodeid else 2 if "test_failures" in item.nodeid else 1

    items.sort(key=order)


class ImageServer:
    """A local HTTP server for image_url fetching: `/receipt.jpg`, `/redirect-out` (to a host that is not
    allowed), and a record of every path asked for."""

    def __init__(self, image: bytes):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.asked: list[str] = []
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server_self.asked.append(self.path)
                if self.path == "/receipt.jpg":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(image)))
                    self.end_headers()
                    self.wfile.write(image)
                elif self.path == "/redirect-out":
                    self.send_response(302)
                    self.send_header("Location", f"http://localhost:{server_self.port}/receipt.jpg")
                    self.end_headers()
                else:
                    self.send_error(404)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="session")
def image_server():
    image = sorted(SROIE_DIR.glob("**/*.jpg"))[0].read_bytes()
    server = ImageServer(image)
    yield server
    server.server.shutdown()


def secure_config(key_file: Path) -> OCRAppConfig:
    config = OCRAppConfig.from_serve_config(ROOT / "configs" / "lite.yaml").model_dump()
    config["security"] = {"api_key_env": None, "api_key_file": str(key_file)}
    config["image_url"] = {"allowed_domains": ["127.0.0.1"], "allowed_schemes": ["http"]}
    for stage in ("preprocessor", "encoder", "decoder"):
        config[stage]["autoscaling"] = None
        config[stage]["num_replicas"] = 1
    return OCRAppConfig.model_validate(config)


@pytest.fixture(scope="session")
def checkpoints(tiny_checkpoint, tiny_checkpoint_1_0) -> dict[str, str]:
    return {"1.5": str(tiny_checkpoint), "1.0": str(tiny_checkpoint_1_0)}


@pytest.fixture(scope="session")
def served(checkpoints, tmp_path_factory):
    import ray
    from ray import serve

    # Logical CPUs: eight graphs of fractional stages (10.5 CPUs of num_cpus with the UI's) share this 2-core machine.
    ray.init(num_cpus=16, include_dashboard=False, configure_logging=False, _metrics_export_port=METRICS_PORT)
    serve.start(http_options={"host": "127.0.0.1", "port": HTTP_PORT})
    for engine, route in ROUTES.items():
        serve.run(build_graph(graph_config(checkpoints["1.5"], engine)), name=engine, route_prefix=route)
    for engine, route in ROUTES_1_0.items():
        config = graph_config(checkpoints["1.0"], engine, "1.0")
        serve.run(build_graph(config), name=f"{engine}-1-0", route_prefix=route)
    in_decoder = graph_config(checkpoints["1.5"], "vllm", placement="in_decoder")
    serve.run(build_graph(in_decoder), name="vllm-in-decoder", route_prefix=IN_DECODER_ROUTE)
    serve.run(build_graph(OCRAppConfig.from_serve_config(ROOT / "configs" / "lite.yaml")), name="lite", route_prefix=LITE_ROUTE)
    key_file = tmp_path_factory.mktemp("secure") / "api_key"
    key_file.write_text(SECURE_API_KEY + "\n")
    serve.run(build_graph(secure_config(key_file)), name="secure", route_prefix=SECURE_ROUTE)
    yield checkpoints["1.5"]
    serve.shutdown()
    ray.shutdown()
