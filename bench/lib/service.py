"""The served graph for a bench: a Ray Serve instance on a local port, the graph of a config deployed on it."""

from __future__ import annotations

import socket
import time
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve_instance(port: int, graphs: int = 1):
    """Ray Serve with its HTTP proxy on 127.0.0.1:`port`; shut down (Ray with it) on leaving. For several graphs
    side by side, Ray is given the logical CPUs of `graphs` machines: the graphs take turns under load, so the
    ones that wait use no CPU, but each one's fractional num_cpus must still be placed."""
    import os

    import ray
    from ray import serve

    if graphs > 1 and not ray.is_initialized():
        ray.init(num_cpus=graphs * (os.cpu_count() or 1), configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@contextmanager
def deployed_graph(config, name: str = "ocr", route_prefix: str = "/"):
    """The graph of `config` as application `name` at `route_prefix` (serve.run returns once every replica is
    healthy); yields the seconds that took; the application is deleted on leaving."""
    from ray import serve

    from serve_app.app import build_graph

    started = time.perf_counter()
    serve.run(build_graph(config), name=name, route_prefix=route_prefix)
    try:
        yield time.perf_counter() - started
    finally:
        serve.delete(name)
