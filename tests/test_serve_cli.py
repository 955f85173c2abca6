"""``hiea-ray serve`` as a user runs it, in a subprocess with its own Ray: it serves a finished run over
HTTP, and Ctrl-C (SIGINT) or SIGTERM while requests are in flight stops it within seconds with exit
130 / 143 and one stderr line, leaving none of the Ray processes it started behind."""

from __future__ import annotations

import json
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


@pytest.mark.slow
def test_the_api_token_reaches_the_replicas_on_a_cluster_that_never_had_it(small_run, tmp_path):
    """A Ray head started without the token variable (as any running cluster's raylets), `hiea-ray
    serve` joined to it (RAY_ADDRESS) with the token in its own environment only: the Ingress
    replicas get it through their runtime_env, so a request without it is 401 and with it 200.
    The head is this test's own (own ports, own temp dir), stopped by its own processes."""
    import psutil
    import requests

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.job_submit import head_start_command, stop_head

    bin_dir = Path(sys.executable).parent
    temp_dir = tempfile_short()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "HIEA_TEST_API_TOKEN")}
    start, gcs, _ = head_start_command(bin_dir, temp_dir, dashboard=False)
    proc = None
    try:
        subprocess.run(start, check=True, capture_output=True, env=env, timeout=180)
        port = _free_port()
        serve_env = {**env, "RAY_ADDRESS": f"127.0.0.1:{gcs}", "HIEA_TEST_API_TOKEN": "s3cret-token"}
        proc = subprocess.Popen([str(bin_dir / "hiea-ray"), "serve", "--run", str(small_run), "--port", str(port),
                                 "--set", "serve.api_token_env=HIEA_TEST_API_TOKEN", "--set", "serve.retriever_cpus=0.5"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=serve_env,
                                start_new_session=True)
        lines: list[str] = []
        deadline = time.time() + 300
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("hiea-ray serving") or time.time() > deadline:
                break
        assert any(x.startswith("hiea-ray serving") for x in lines), "".join(lines[-30:])
        q, _, _ = read_lists(small_run / "decode" / "all-targets" / "top1.parquet")
        url = f"http://127.0.0.1:{port}/v1/entities/1/{int(q[0])}"
        assert requests.get(url, timeout=30).status_code == 401
        assert requests.get(url, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
        assert requests.get(url, headers={"Authorization": "Bearer s3cret-token"}, timeout=30).status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 200
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        stop_head(temp_dir)
        assert not [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]


def tempfile_short() -> str:
    """A short temp dir for a Ray head (its session dir holds unix sockets: paths must stay short)."""
    import tempfile

    return tempfile.mkdtemp(prefix="rt", dir="/tmp")


@pytest.mark.slow
def test_a_failed_start_says_why_in_one_line_and_leaves_no_serve_actor(small_run, tmp_path):
    """A run whose verbalized texts were lost (a damaged copy on shared storage): the driver's checks
    pass, the Ingress replicas cannot start. `hiea-ray serve`, joined to a Ray head of this test's
    own, exits 1 with one line saying the service did not start, and the head keeps no Serve actor
    (controller, proxy, replica) and no application."""
    import psutil

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.job_submit import head_start_command, stop_head

    damaged = tmp_path / "run"
    shutil.copytree(small_run, damaged)
    for f in (damaged / "verbalize" / "texts").glob("*.parquet"):
        f.unlink()
    bin_dir = Path(sys.executable).parent
    temp_dir = tempfile_short()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start, gcs, _ = head_start_command(bin_dir, temp_dir, dashboard=False)
    try:
        subprocess.run(start, check=True, capture_output=True, env=env, timeout=180)
        r = subprocess.run([str(bin_dir / "hiea-ray"), "serve", "--run", str(damaged), "--port", str(_free_port()),
                            "--set", "serve.retriever_cpus=0.5"], capture_output=True, text=True, timeout=600,
                           env={**env, "RAY_ADDRESS": f"127.0.0.1:{gcs}"})
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        assert r.returncode == 1, r.stderr[-3000:]
        assert last.startswith("hiea-ray: error: the service did not start") and "nothing is left running" in last, last
        assert "Traceback" not in r.stderr
        probe = ("import json, ray; ray.init(address='127.0.0.1:%d', log_to_driver=False); "
                 "print(json.dumps(ray.util.list_named_actors(all_namespaces=True)))" % gcs)
        left = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
        assert left.returncode == 0, left.stderr[-2000:]
        actors = json.loads(left.stdout.strip().splitlines()[-1])
        assert not [a for a in actors if a.get("namespace") == "serve" or "SERVE" in a.get("name", "")], actors
    finally:
        stop_head(temp_dir)
        assert not [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
