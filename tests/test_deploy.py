"""The deploy/ nginx config in front of real server processes: spread, failover, drain.

Each replica is started exactly as the container starts it (``lorif-serve`` configured
by LORIF_* variables); nginx runs the very config in deploy/nginx, re-targeted at loopback.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from lorif_serve.client import Client, RetryPolicy
from tests.builders import build_small_index, free_port

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
DEPLOY_CONF = Path(__file__).parent.parent / "deploy" / "nginx" / "attribution.conf"
QUERY = {"prompt": "the market", "completion": "shares rose more", "top_k": 5}


def render_nginx(folder: Path, listen: int, upstreams: list[int]) -> Path:
    """deploy/nginx/attribution.conf with loopback replicas, inside a minimal main config."""
    conf = DEPLOY_CONF.read_text()
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n" for p in upstreams)
    conf, count = re.subn(r"^\s*server attribution:8000[^\n]*\n", servers, conf, flags=re.M)
    assert count == 1, "the deploy config's upstream line changed"
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{listen};")
    (folder / "attribution.conf").write_text(conf)
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "".join(
        f"    {kind}_temp_path {folder}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = (
        f"{user}daemon off;\nworker_processes 1;\npid {folder}/nginx.pid;\n"
        f"error_log {folder}/error.log warn;\nevents {{ worker_connections 512; }}\n"
        f"http {{\n    access_log {folder}/access.log;\n{temp}"
        f"    include {folder}/attribution.conf;\n}}\n"
    )
    path = folder / "nginx.conf"
    path.write_text(main)
    return path


class Replica:
    def __init__(self, index: Path, model: Path, port: int, **extra: str) -> None:
        self.port = port
        self.env = {
            **os.environ,
            "LORIF_INDEX": str(index),
            "LORIF_MODEL": str(model),
            "LORIF_HOST": "127.0.0.1",
            "LORIF_PORT": str(port),
            "LORIF_DEVICE": "cpu",
            "LORIF_LOG_LEVEL": "warning",
            **extra,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Replica:
        # The container's entry point: the installed console script.
        script = Path(sys.executable).with_name("lorif-serve")
        self.process = subprocess.Popen([str(script)], env=self.env)
        return self

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, "replica died"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"replica on {self.port} not ready")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(scope="module")
def deployment(model_dir, data_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("deploy")
    index = folder / "index.h5"
    build_small_index(model_dir, data_file, index)
    ports = [free_port() for _ in range(3)]
    replicas = [Replica(index, model_dir, p).start() for p in ports]
    lb_port = free_port()
    conf = render_nginx(folder, lb_port, ports)
    nginx = subprocess.Popen(["nginx", "-p", str(folder), "-c", str(conf)])
    try:
        for replica in replicas:
            replica.wait_ready()
        yield {
            "lb": f"http://127.0.0.1:{lb_port}",
            "replicas": replicas,
            "index": index,
            "model": model_dir,
        }
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(10)
        for replica in replicas:
            replica.stop()


def test_spread_and_equal_answers(deployment):
    direct = httpx.post(
        f"http://127.0.0.1:{deployment['replicas'][0].port}/v1/attributions", json=QUERY
    ).json()
    seen = set()
    with httpx.Client(base_url=deployment["lb"]) as http:
        for _ in range(30):
            response = http.post("/v1/attributions", json=QUERY)
            assert response.status_code == 200
            seen.add(response.headers["x-upstream"])
            body = response.json()
            assert [(r["id"], r["score"]) for r in body["results"]] == [
                (r["id"], r["score"]) for r in direct["results"]
            ]
    assert len(seen) == 3, seen


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def test_sigkill_under_traffic_loses_no_call(deployment):
    victim = deployment["replicas"][1]
    phases: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    failures: list[str] = []
    phase = ["before"]
    stop = threading.Event()

    def traffic() -> None:
        policy = RetryPolicy(max_retries=4, initial_delay=0.05, max_delay=1.0)
        with Client(deployment["lb"], retry=policy, timeout=10) as client:
            while not stop.is_set():
                began = time.perf_counter()
                try:
                    client.attribute(QUERY["prompt"], QUERY["completion"], top_k=5)
                    phases[phase[0]].append(time.perf_counter() - began)
                except Exception as exc:  # counted, reported, asserted below
                    failures.append(repr(exc))

    workers = [threading.Thread(target=traffic) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(3)
    phase[0] = "during"
    victim.process.kill()  # SIGKILL: no drain, connections reset
    time.sleep(3)
    victim.start()
    victim.wait_ready()
    phase[0] = "after"
    time.sleep(4)  # past fail_timeout: nginx sends the restarted replica traffic again
    served_after = set()
    with httpx.Client(base_url=deployment["lb"]) as http:
        for _ in range(12):
            served_after.add(http.post("/v1/attributions", json=QUERY).headers["x-upstream"])
    stop.set()
    for worker in workers:
        worker.join(30)
    report = {name: percentiles(values) for name, values in phases.items() if values}
    print(f"\nfailover: {report}, failed calls: {len(failures)}")
    assert failures == []
    assert all(report[name]["n"] > 0 for name in ("before", "during", "after"))
    assert f"127.0.0.1:{victim.port}" in served_after


def test_sigterm_drains_the_request_in_flight(deployment):
    port = free_port()
    # A long batching window keeps the request in flight while SIGTERM arrives.
    slow = Replica(
        deployment["index"],
        deployment["model"],
        port,
        LORIF_MAX_WAIT_MS="1500",
        LORIF_MAX_BATCH="8",
    ).start()
    slow.wait_ready()
    result: dict[str, httpx.Response] = {}
    request = threading.Thread(
        target=lambda: result.update(
            r=httpx.post(f"http://127.0.0.1:{port}/v1/attributions", json=QUERY, timeout=30)
        )
    )
    request.start()
    time.sleep(0.5)
    slow.process.send_signal(signal.SIGTERM)
    request.join(30)
    assert result["r"].status_code == 200 and len(result["r"].json()["results"]) == 5
    # uvicorn re-raises the signal once it has shut down cleanly: exit by SIGTERM, not a crash.
    assert slow.process.wait(30) in (0, -signal.SIGTERM)
