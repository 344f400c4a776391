"""Start the server on the demo index, ask one real query through the client, stop."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from lorif_serve.client import AttributionError, Client, RetryPolicy
from lorif_serve.client.cli import render


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_command(index: Path, model_dir: Path, port: int, device: str, *extra: str) -> list[str]:
    """``python -m server`` on a loopback port, quiet logs."""
    return [
        sys.executable,
        "-m",
        "server",
        *("--index", str(index), "--model", str(model_dir), "--port", str(port)),
        *("--device", device, "--log-level", "warning", *extra),
    ]


def demo_query(held_out_file: Path) -> tuple[str, str, str]:
    """(prompt, completion, topic) from the first held-out article: its headline and opening."""
    article = json.loads(held_out_file.read_text(encoding="utf-8").splitlines()[0])
    lines = [line.strip() for line in article["text"].splitlines() if line.strip()]
    words = " ".join(lines[1:]).split()
    return lines[0] + "\n\n" + " ".join(words[:12]), " " + " ".join(words[12:40]), article["topic"]


def wait_ready(client: Client, process: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            client.health()
            return
        except AttributionError:
            time.sleep(0.5)
    raise RuntimeError("the server did not become ready")


def serve_and_query(
    index: Path, model_dir: Path, held_out_file: Path, device: str, keep_serving: bool = False
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = server_command(index, model_dir, port, device)
    print(f"\nstarting: {' '.join(command)}")
    process = subprocess.Popen(command)
    try:
        with Client(url, retry=RetryPolicy(max_retries=0)) as client:
            wait_ready(client, process)
            prompt, completion, topic = demo_query(held_out_file)
            print(f"query (held-out {topic} article):")
            print(f"  prompt: {prompt!r}\n  completion: {completion!r}\n")
            response = client.attribute(prompt, completion, top_k=8, opponents=True, explain=True)
            print(render(response))
            topics = [str(item.metadata.get("topic")) for item in response.results or []]
            print(f"\ntopics of the top {len(topics)}: {', '.join(topics)} (query topic: {topic})")
            print(
                f"\nthe web page: {url}/  (ask your own questions there, with highlighted evidence)"
            )
            if keep_serving:
                print("serving until Ctrl-C")
                process.wait()
            else:
                print("(run with --keep-serving to keep the server and its page up)")
    except KeyboardInterrupt:
        pass
    finally:
        process.send_signal(signal.SIGTERM)  # graceful: drains in-flight requests
        process.wait(timeout=60)
