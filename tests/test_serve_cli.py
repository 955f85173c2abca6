"""``hiea-ray serve`` as a user runs it, in a subprocess with its own Ray: it serves a finished run over
HTTP, and Ctrl-C (SIGINT) or SIGTERM while requests are in flight stops it within seconds with exit
130 / 143 and one stderr line, leaving none of the Ray processes it started behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ray_conftest_helpers import e2e_run

from hiea_ray.io import read_lists

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def small_run(ray_shared, synthetic_dir, tiny_encoder_dir, tmp_path_factory):
    shared = e2e_run(tmp_path_factory, synthetic_dir, tiny_encoder_dir)
    run = tmp_path_factory.mktemp("cli-served") / "run"
    shutil.copytree(shared["run"], run)
    return run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("sig, rc, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_serve_stops_on_a_signal_under_load(small_run, sig, rc, word):
    import psutil
    import requests

    port = _free_port()
    exe = Path(sys.executable).with_name("hiea-ray")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "hiea_ray.cli"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([*cmd, "serve", "--run", str(small_run), "--port", str(port), "--set", "ray.num_cpus=2",
                             "--set", "serve.retriever_cpus=0.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    ready = threading.Event()
    err_lines: list[str] = []

    def read_out():
        for line in proc.stdout:
            if line.startswith("hiea-ray serving"):
                ready.set()

    def read_err():
        err_lines.extend(proc.stderr)

    threading.Thread(target=read_out, daemon=True).start()
    threading.Thread(target=read_err, daemon=True).start()
    stop = threading.Event()
    answered: list[int] = []
    try:
        deadline = time.time() + 300
        while not ready.wait(0.5) and proc.poll() is None and time.time() < deadline:
            pass
        assert ready.is_set(), "the service did not come up: " + "".join(err_lines[-20:])
        started = psutil.Process(proc.pid).children(recursive=True)  # Ray's GCS, raylet, workers, Serve replicas
        assert started, "no Ray process under the service"
        q, _, _ = read_lists(small_run / "decode" / "all-targets" / "top1.parquet")
        url = f"http://127.0.0.1:{port}/v1/align"

        def load():
            i = 0
            while not stop.is_set():
                try:
                    answered.append(requests.post(url, json={"id": int(q[i % len(q)])}, timeout=10).status_code)
                except requests.RequestException:
                    pass  # the service going away under the request is what is tested
                i += 1

        workers = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for w in workers:
            w.start()
        deadline = time.time() + 60
        while answered.count(200) < 8 and time.time() < deadline:
            time.sleep(0.1)
        assert answered.count(200) >= 8, answered[-10:]  # requests in flight when the signal comes
        t0 = time.time()
        proc.send_signal(sig)
        proc.wait(timeout=60)
        took = time.time() - t0
        stop.set()
        assert proc.returncode == rc, "".join(err_lines[-20:])
        assert took < 30, f"stopping took {took:.1f} s"
        time.sleep(0.5)
        assert err_lines and err_lines[-1].strip() == f"hiea-ray: {word}; the service is stopped", err_lines[-5:]
        _, alive = psutil.wait_procs(started, timeout=20)
        assert not alive, f"left running: {[p.name() for p in alive if p.is_running()]}"
    finally:
        stop.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
