"""The PP-OCR graph on a three-node Ray cluster on this machine, placed by node role, losing a node under load.

Ray's testing cluster (`ray.cluster_utils.Cluster`) starts a head node with the label `ocr-role=cpu` and two
worker nodes with `ocr-role=model` and the custom resource `decoder_slot: 2` (what a GPU count is on a real
cluster). The graph is configs/lite.yaml with placement added (ingress and preprocessor: label `ocr-role=cpu`;
encoder: label `ocr-role=model`; decoder: resource `decoder_slot`), deployed the way a user deploys to a cluster:
`serve run --address <cluster> --non-blocking <yaml>`. `proxy_location: EveryNode` puts a proxy on every node;
one machine can't give them one port each from the YAML, so each worker node is started with Ray Serve's own
`RAY_SERVE_WORKER_PROXY_HTTP_PORT` (the head keeps http_options.port).

Checked: each stage's replicas are on the nodes its role names; the proxy of every node (the head's holds no
decoder) answers with the right text; with 3 clients on the head's proxy, the worker holding the most model
replicas is killed (its processes SIGKILLed, as a lost machine): every request ends 200 with its own image's
text, or 503 (with Retry-After) / 504, and Serve has the graph healthy again on the remaining nodes within 60 s.

The scenario runs in a process of its own (`python -m tests.integration.test_cluster REPORT`): a process holds
one Ray connection, and the integration session's in-process Ray (conftest's `served`) may already hold it.
The fixture's finalizer stops that process (which shuts the cluster down) and its process group.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
APP = "ocr"
ROLE = "ocr-role"
CPU_NODE, MODEL_NODES = "head (cpu)", ("model-1", "model-2")
DEPLOYMENTS = {"OCRIngress": "cpu", "Preprocessor": "cpu", "VisionEncoder": "model", "Decoder": "model"}
MODEL_REPLICAS = 2  # encoder and decoder each: both fit on one model node after the other is lost
RECOVERY_S = 60
CLIENTS = 3
REQUEST_TIMEOUT_S = 40
CLIENT_TIMEOUT_S = REQUEST_TIMEOUT_S + 30  # past it = a hang
SCENARIO_TIMEOUT_S = 540  # the whole subprocess, start to teardown (about 2 minutes; more on a crowded machine)
PAGES = [(f"ORDER {1000 + 7 * index}", f"TOTAL {10 + index}.{25 * index % 100:02d}") for index in range(5)]


# ---------------------------------------------------------------------------------------------------------------
# The scenario (runs in its own process)


def cluster_serve_config(http_port: int) -> dict:
    """configs/lite.yaml with placement by role and fixed replica counts (so placement can be checked)."""
    import yaml

    document = yaml.safe_load((ROOT / "configs" / "lite.yaml").read_text())
    document["proxy_location"] = "EveryNode"
    document["http_options"].update(host="127.0.0.1", port=http_port)
    args = document["applications"][0]["args"]
    # A request caught on the lost node ends as a 504 at this deadline at the latest (lite.yaml: 120 s).
    args["limits"]["request_timeout_s"] = REQUEST_TIMEOUT_S
    placement = {
        "ingress": {"label_selector": {ROLE: "cpu"}, "num_replicas": 1},
        "preprocessor": {"label_selector": {ROLE: "cpu"}, "num_replicas": 1},
        "encoder": {"label_selector": {ROLE: "model"}, "num_replicas": MODEL_REPLICAS},
        "decoder": {"resources": {"decoder_slot": 1}, "num_replicas": MODEL_REPLICAS},
    }
    for stage, options in placement.items():
        args[stage].pop("autoscaling", None)
        args[stage].update(options)
    return document


def scenario(report_path: Path) -> None:
    import httpx
    import ray
    import yaml
    from ray import serve
    from ray.cluster_utils import Cluster

    from tests.conftest import free_port, render_text_page, to_bytes

    report: dict = {"events": []}
    started = time.monotonic()

    def event(what: str) -> None:
        report["events"].append(f"{time.monotonic() - started:6.1f} s  {what}")
        print(report["events"][-1], flush=True)

    images = [to_bytes(render_text_page(lines, size=(520, 220)), "PNG") for lines in PAGES]
    http_ports = {CPU_NODE: free_port(), MODEL_NODES[0]: free_port(), MODEL_NODES[1]: free_port()}
    common = {"include_dashboard": False, "object_store_memory": 100 * 1024 * 1024}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **common, "gcs_server_port": free_port(), "num_cpus": 2, "labels": {ROLE: "cpu"},
            "dashboard_agent_listen_port": free_port(), "metrics_export_port": free_port(),
        },
    )
    try:
        nodes = {CPU_NODE: cluster.head_node}
        for name in MODEL_NODES:
            nodes[name] = cluster.add_node(
                **common, num_cpus=3, labels={ROLE: "model"}, resources={"decoder_slot": MODEL_REPLICAS},
                dashboard_agent_listen_port=free_port(), metrics_export_port=free_port(),
                # The raylet's environment, which every process of the node inherits: Serve's proxy there reads it.
                env_vars={"RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(http_ports[name])},
            )
        cluster.wait_for_nodes()
        node_names = {node.node_id: name for name, node in nodes.items()}
        event(f"cluster up: {len(nodes)} nodes")

        config_path = report_path.parent / "cluster_serve_config.yaml"
        config_path.write_text(yaml.safe_dump(cluster_serve_config(http_ports[CPU_NODE]), sort_keys=False))
        deploy = subprocess.run(
            [str(Path(sys.executable).with_name("serve")), "run", "--address", cluster.address, "--non-blocking",
             str(config_path)],
            cwd=ROOT, capture_output=True, text=True, timeout=240,
        )
        report["deploy"] = {"rc": deploy.returncode, "tail": (deploy.stdout + deploy.stderr)[-3000:]}
        event(f"serve run --address ... --non-blocking: rc {deploy.returncode}")
        if deploy.returncode != 0:
            return

        ray.init(address=cluster.address, namespace="cluster-test", configure_logging=False, log_to_driver=False)
        def placement() -> dict[str, list[str]]:
            """Each deployment's live replicas as the names of their nodes, from the GCS's actor table (a busy
            replica need not answer). Actors on a lost node stay ALIVE there until Ray declares the node dead."""
            where: dict[str, list[str]] = {}
            for actor in ray._private.state.actors().values():
                name = actor.get("Name") or ""
                if actor["State"] == "ALIVE" and name.startswith(f"SERVE_REPLICA::{APP}#"):
                    node_id = actor["Address"]["NodeID"]
                    where.setdefault(name.split("#")[1], []).append(node_names.get(node_id, node_id))
            return {deployment: sorted(names) for deployment, names in sorted(where.items())}

        def healthy() -> bool:
            status = serve.status().applications.get(APP)
            if status is None or status.status != "RUNNING":
                return False
            return all(
                deployment.status == "HEALTHY" and deployment.replica_states.get("RUNNING", 0) >= 1
                for deployment in status.deployments.values()
            )

        deadline = time.monotonic() + 240  # minutes only where other work crowds this machine's 2 cores
        while not healthy() and time.monotonic() < deadline:
            time.sleep(1)
        report["healthy_before"] = healthy()
        event(f"application healthy: {report['healthy_before']}")
        report["placement"] = placement()
        report["proxies"] = sorted(
            node_names.get(actor["name"].split("-", 1)[1], actor["name"])
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["name"].startswith("SERVE_PROXY_ACTOR")
        )
        event(f"placement: {report['placement']}")

        def ocr(port: int, image: bytes) -> tuple[int, str | None]:
            response = httpx.post(f"http://127.0.0.1:{port}/ocr", content=image, timeout=CLIENT_TIMEOUT_S)
            return response.status_code, response.json().get("text") if response.status_code == 200 else response.text

        # Every node's proxy answers (the head's holds no decoder: its requests cross to the model nodes).
        report["per_proxy"] = {}
        for name, port in http_ports.items():
            index = list(http_ports).index(name)
            answer: tuple = ("no answer", None)
            for attempt in range(30):  # a worker's proxy starts once Serve sees the node
                try:
                    answer = ocr(port, images[index])
                    break
                except httpx.HTTPError as error:
                    answer = (repr(error), None)
                    time.sleep(1)
            report["per_proxy"][name] = {"image": index, "status": answer[0], "text": answer[1]}
        report["expected"] = ["\n".join(lines) for lines in PAGES]
        event("every proxy asked")

        # Load on the head's proxy; the model node holding the most model replicas is lost meanwhile.
        records: list[dict] = []
        stop = threading.Event()

        async def clients() -> None:
            async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as client:

                async def one_client(offset: int) -> None:
                    sent = 0
                    while not stop.is_set():
                        index = (offset + sent) % len(images)
                        sent += 1
                        record = {"image": index}
                        try:
                            response = await client.post(f"http://127.0.0.1:{http_ports[CPU_NODE]}/ocr", content=images[index])
                        except httpx.TimeoutException:
                            record["status"] = "hang"
                        except httpx.HTTPError as error:
                            record["status"] = f"connection error {error!r}"
                        else:
                            record["status"] = response.status_code
                            record["retry_after"] = response.headers.get("retry-after")
                            if response.status_code == 200:
                                record["text"] = response.json().get("text")
                            else:
                                record["body"] = response.text[:300]
                        record["at"] = time.monotonic() - started
                        records.append(record)
                        if record["status"] != 200:
                            await asyncio.sleep(0.5)  # a client that honours Retry-After, roughly

                await asyncio.gather(*(one_client(offset) for offset in range(CLIENTS)))

        load = threading.Thread(target=lambda: asyncio.run(clients()), daemon=True)
        load.start()
        deadline = time.monotonic() + 60
        while not any(record["status"] == 200 for record in records) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)  # requests in flight in every stage
        before = placement()
        model_replicas = {
            name: sum(where.count(name) for deployment, where in before.items() if DEPLOYMENTS.get(deployment) == "model")
            for name in MODEL_NODES
        }
        victim = max(MODEL_NODES, key=lambda name: model_replicas[name])
        report["victim"] = {"node": victim, "model_replicas": model_replicas[victim], "placement_before": before}
        removed_at = time.monotonic()
        cluster.remove_node(nodes[victim], allow_graceful=False)  # SIGKILL: a machine lost, not drained
        report["removed_at"] = removed_at - started
        event(f"removed {victim} (it held {model_replicas[victim]} model replicas) under load")

        recovery_s = None
        while time.monotonic() - removed_at < RECOVERY_S:
            if healthy():
                now = placement()
                counts_ok = all(
                    len(now.get(deployment, [])) == (MODEL_REPLICAS if role == "model" else 1)
                    for deployment, role in DEPLOYMENTS.items()
                )
                if counts_ok and not any(victim in where for where in now.values()):
                    recovery_s = time.monotonic() - removed_at
                    break
            time.sleep(0.5)
        report["recovery_s"] = recovery_s
        report["recovered_at"] = (time.monotonic() - started) if recovery_s is not None else None
        report["placement_after"] = placement()
        event(f"recovered after {recovery_s} s: {report['placement_after']}")
        time.sleep(6)  # load continues on the recovered graph
        stop.set()
        load.join(CLIENT_TIMEOUT_S + 10)
        report["load_finished"] = not load.is_alive()
        report["records"] = list(records)
        event(f"load stopped: {len(records)} requests")
    finally:
        report["total_s"] = time.monotonic() - started
        report_path.write_text(json.dumps(report, indent=1))
        try:
            ray.shutdown()
        finally:
            cluster.shutdown()
        print(f"cluster down after {time.monotonic() - started:.1f} s", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# The tests (in the pytest process)


@pytest.fixture(scope="module")
def cluster_report(tmp_path_factory) -> dict:
    # Ray's files (unix sockets included: short path) in a folder of this run's own, never /tmp/ray.
    ray_tmp = tempfile.mkdtemp(prefix="ocrc-", dir="/tmp")
    report_path = tmp_path_factory.mktemp("cluster") / "report.json"
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    log = report_path.with_name("scenario.log")
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.test_cluster", str(report_path)],
            cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def finalize() -> None:  # stop the scenario (its `finally` shuts the cluster down), then its group
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(ray_tmp, ignore_errors=True)

    try:
        process.wait(SCENARIO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        output_tail = log.read_text()[-6000:]
        print(output_tail)
        assert report_path.exists(), f"the scenario wrote no report (rc {process.poll()}):\n{output_tail}"
        report = json.loads(report_path.read_text())
        report["log_tail"] = output_tail
        yield report
    finally:
        finalize()


def test_the_graph_deploys_to_the_cluster_with_serve_run(cluster_report):
    assert cluster_report.get("deploy", {}).get("rc") == 0, cluster_report.get("deploy") or cluster_report["log_tail"]
    assert cluster_report["healthy_before"], "the application never became healthy"
    assert sorted(cluster_report["proxies"]) == sorted([CPU_NODE, *MODEL_NODES]), "a proxy on every node"


def test_replicas_land_on_the_nodes_their_roles_name(cluster_report):
    placement = cluster_report["placement"]
    print("placement:", placement)
    for deployment, role in DEPLOYMENTS.items():
        allowed = {CPU_NODE} if role == "cpu" else set(MODEL_NODES)
        assert placement.get(deployment), f"{deployment}: no replica ({placement})"
        assert set(placement[deployment]) <= allowed, f"{deployment} ({role} role) on {placement[deployment]}"
    assert len(placement["Decoder"]) == len(placement["VisionEncoder"]) == MODEL_REPLICAS


def test_every_nodes_proxy_answers_including_one_without_a_decoder(cluster_report):
    assert CPU_NODE not in cluster_report["placement"]["Decoder"]
    expected = cluster_report["expected"]
    assert sorted(cluster_report["per_proxy"]) == sorted([CPU_NODE, *MODEL_NODES])
    for node, answer in cluster_report["per_proxy"].items():
        assert answer["status"] == 200, f"proxy of {node}: {answer}"
        assert answer["text"] == expected[answer["image"]], f"proxy of {node}: {answer}"


def test_a_lost_node_under_load_loses_no_request_and_the_graph_recovers(cluster_report):
    victim = cluster_report["victim"]
    recovery_s = cluster_report["recovery_s"]
    print(f"lost {victim['node']} holding {victim['model_replicas']} model replicas ({victim['placement_before']}); "
          f"healthy again on the remaining nodes after {recovery_s} s: {cluster_report['placement_after']}")
    assert victim["model_replicas"] >= 1, "the lost node held no replica"
    assert recovery_s is not None and recovery_s <= RECOVERY_S, f"not healthy within {RECOVERY_S} s"
    for deployment, where in cluster_report["placement_after"].items():
        assert victim["node"] not in where, f"{deployment} still on the lost node"
    assert cluster_report["load_finished"], "a request never returned"

    records = cluster_report["records"]
    expected = cluster_report["expected"]
    statuses = [record["status"] for record in records]
    print(f"{len(records)} requests under load:", dict(Counter(map(str, statuses))))
    assert set(statuses) <= {200, 503, 504}, [record for record in records if record["status"] not in (200, 503, 504)]
    for record in records:
        if record["status"] == 200:
            assert record["text"] == expected[record["image"]], f"image {record['image']} got another answer: {record}"
        if record["status"] == 503:
            assert record["retry_after"], f"503 without Retry-After: {record}"
    assert any(record["status"] == 200 and record["at"] < cluster_report["removed_at"] for record in records)
    assert any(
        record["status"] == 200 and record["at"] > cluster_report["recovered_at"] for record in records
    ), "no success after recovery"


if __name__ == "__main__":
    def _stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    scenario(Path(sys.argv[1]))
