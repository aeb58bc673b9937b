"""Three simulated nodes (Ray's own `ray.cluster_utils.Cluster`: three raylets
on this machine) answering a batch over an S3 corpus (moto_server over HTTP)
against the provider SIMULATOR; a worker node is removed mid-batch.

It cannot share the session's Ray instance, so the test runs this file as a
script in a subprocess that owns its cluster and moto_server and tears both
down; the test reads the JSON report the script prints."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import pytest

QUESTIONS = 24
CONCURRENCY = 9     # 3 per host: about three waves, so a node leaves mid-batch
REPORT_MARK = "MULTINODE-REPORT "


@pytest.mark.timeout(600)
def test_three_nodes_one_removed_mid_batch_loses_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "AWS_"))}
    proc = subprocess.Popen([sys.executable, __file__, str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=540)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)   # the script's own process group only
        proc.communicate()
        raise
    line = next((ln for ln in stdout.splitlines() if ln.startswith(REPORT_MARK)), None)
    assert proc.returncode == 0 and line, stderr[-4000:]
    report = json.loads(line[len(REPORT_MARK):])
    # Every query id exactly once, every one ok, though a node left mid-batch.
    assert sorted(report["query_ids"]) == sorted(set(report["query_ids"]))
    assert len(report["query_ids"]) == QUESTIONS
    assert set(report["statuses"]) == {"ok"}, (report["errors"], report["singletons"])
    # Work landed on every node: a host actor on each, answers from each.
    assert len(report["nodes"]) == 3
    assert set(report["host_nodes"]) == set(report["nodes"])
    assert set(report["answered_by_node"]) == set(report["nodes"]), report["answered_by_node"]
    # The removed node had questions in flight; they were retried elsewhere, as host
    # losses (no attempt charged to a question whose host went away).
    assert report["removed_in_flight"] > 0
    assert report["host_loss_retries"] >= report["removed_in_flight"]
    # One limiter per model cluster-wide; one gateway pool per node.
    assert report["limiters"] == [1]
    assert report["gateway_pools"] and all(n <= report["gateway_actors"]
                                           for n in report["gateway_pools"].values())
    # The cluster-wide singletons (limiter, budget bank) live on the head node, so
    # losing a worker node never restarts them empty.
    assert {"rlm-ray-budgets"} < set(report["singletons"]), report["singletons"]
    assert all(s == {"on_head": True, "restarts": 0}
               for s in report["singletons"].values()), report["singletons"]
    # Paid calls were not paid again: only a call cut off mid-flight can repeat.
    assert report["repeated_prompts"] <= report["removed_in_flight"]


# ---- the script (runs in its own process) ------------------------------------------------

def _moto(port: int) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("moto_server")
    return subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _script(work: Path) -> dict:
    import boto3

    port = _free_port()
    moto = _moto(port)
    # Set before any raylet starts: every node's workers inherit them.
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                boto3.client("s3").create_bucket(Bucket="multinode")
                break
            except Exception:  # noqa: BLE001 - moto still starting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return _with_s3(work)
    finally:
        moto.kill()
        moto.wait(timeout=10)


def _with_s3(work: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from rlm_ray.batch.define_questions import define_questions, write_jsonl
    from rlm_ray.corpus import ingest
    from rlm_ray.sim import SimServer

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    src = work / "src"
    for name in ("json", "email", "logging", "http", "importlib", "xml"):
        shutil.copytree(stdlib / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    corpus = "s3://multinode/corpus"
    queries = write_jsonl(define_questions(src, QUESTIONS, seed=4, distinct_modules=True),
                          work / "q.jsonl")
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        ingest([str(src)], corpus)   # after joining: an ingest on Ray must use this cluster
        with SimServer(latency_ms=1500) as server:
            return _batch(work, corpus, str(queries), server, cluster, workers)
    finally:
        ray.shutdown()
        cluster.shutdown()


def _batch(work: Path, corpus: str, queries: str, server, cluster, workers) -> dict:
    import ray
    from ray._private.state import actors

    from rlm_ray.batch.pool import HostPool
    from rlm_ray.batch.runner import run
    from rlm_ray.batch.tables import read_run
    from rlm_ray.llm.config import GatewayConfig

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    hosts = HostPool(concurrency=CONCURRENCY)
    host_nodes = [ray.get(h.actor.node_id.remote(), timeout=120) for h in hosts.hosts]
    gateway = GatewayConfig(api_base=server.base_url, rpm=6000, cache_uri=str(work / "out/cache"))
    # A per-question dollar budget: every question draws from the cluster's budget bank.
    rlm = {"model": "openai/sim/rlm-policy", "api_base": server.base_url, "max_iterations": 12,
           "gateway": gateway, "budget_usd": 1000.0}
    removed = {"in_flight": 0}

    def remove_a_busy_worker() -> None:
        # Once every host has answered a question and is busy with more, take
        # away a worker node carrying a host.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            current = hosts.hosts
            busy = {h.node_id: ray.get(h.actor.in_flight.remote()) for h in current}
            if (len(current) == 3 and all(h.answered for h in current)
                    and len(busy) == 3 and all(busy.values())):
                victim = next(w for w in workers if busy.get(w.node_id))
                removed["in_flight"] = busy[victim.node_id]
                cluster.remove_node(victim)
                return
            time.sleep(0.3)

    remover = threading.Thread(target=remove_a_busy_worker, daemon=True)
    remover.start()
    try:
        summary = run(corpus, queries, str(work / "out"), rlm=rlm, concurrency=CONCURRENCY,
                      progress=False, hosts=hosts)
    finally:
        remover.join(timeout=30)
        hosts.shutdown()
    answers = read_run(str(work / "out"), with_details=False).answers.to_pylist()
    alive = [a for a in actors(actor_state_name="ALIVE").values()]
    names = [a.get("Name") or "" for a in alive]
    limiters = [n for n in names if n.startswith("rlm-ray-limiter/")]
    head = next(n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"])
    singletons = {a["Name"]: {"on_head": a["Address"]["NodeID"] == head,
                              "restarts": int(a.get("NumRestarts") or 0)}
                  for a in alive if (a.get("Name") or "").startswith(("rlm-ray-limiter/",
                                                                      "rlm-ray-budgets"))}
    pools: dict[str, int] = {}
    for name in names:
        if name.startswith("rlm-ray-gateway/"):
            node = name.split("/")[1]
            pools[node] = pools.get(node, 0) + 1
    return {"query_ids": [a["query_id"] for a in answers],
            "statuses": sorted({a["status"] for a in answers}),
            "errors": [a["error"] for a in answers if a["status"] != "ok"],
            "nodes": nodes, "host_nodes": host_nodes,
            "answered_by_node": summary.answered_by_node,
            "removed_in_flight": removed["in_flight"], "retried": summary.retried_after_failure,
            "host_loss_retries": summary.host_loss_retries,
            "limiters": [len(limiters)], "gateway_pools": pools, "singletons": singletons,
            "gateway_actors": gateway.gateway_actors,
            "repeated_prompts": server.stats()["repeated_prompts"]}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import rlm_ray  # noqa: F401  (process defaults)

    with tempfile.TemporaryDirectory(dir=sys.argv[1] if len(sys.argv) > 1 else None) as tmp:
        print(REPORT_MARK + json.dumps(_script(Path(tmp))), flush=True)
