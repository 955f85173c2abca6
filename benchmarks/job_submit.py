"""`ray job submit` for real (issue #15): a head of its own, the job as a cluster user submits it.

    .venv/bin/python benchmarks/job_submit.py [--entities 200] [--keep]

1. Writes a small synthetic pair (``hiea-ray synth``) into a fresh temp folder.
2. Starts a Ray head with ``ray start --head`` on free ports of its own (GCS, dashboard, dashboard
   agent, metrics, client server, node manager, object manager, runtime-env agent, worker ports) and its own
   ``--temp-dir``, so it never collides with another Ray on this machine.
3. ``ray job submit --address http://127.0.0.1:<dashboard> --working-dir <repo> -- python
   jobs/align.py --data ... --out ...`` (the entrypoint users submit; the repo is uploaded as the
   job's working dir), waiting for it, then reads the job's status back through the Jobs API.
4. Checks the job SUCCEEDED, its run folder holds metrics.json, and its logs show the pipeline's
   stage lines; then submits the training-only job (``jobs/train.py retriever``: Ray Train inside
   the job) and checks it SUCCEEDED and left the model folder, stopping before evaluate; then stops that head by the process ids of its own processes (those whose command
   line names its temp dir) — never ``ray stop`` without an address, which stops every Ray here.

Writes benchmarks/results/job_submit.json (timings, status, Hits@1) and exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def worker_port_window(taken: set[int], size: int) -> int:
    """The first port of ``size`` free consecutive ports holding none of ``taken``."""
    for start in range(20000, 60000, size + 1):
        if any(start <= t <= start + size for t in taken):
            continue
        try:
            for port in range(start, start + size + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return start
        except OSError:
            continue
    raise RuntimeError("no free window of worker ports")


def head_start_command(bin_dir: Path, temp_dir: str, dashboard: bool) -> tuple[list[str], int, int]:
    """``ray start --head`` on free ports of its own (GCS, dashboard, agents, workers) and its own
    temp dir, 2 CPUs: (the command, the GCS port, the dashboard port)."""
    ports = free_ports(9)
    gcs, dash, agent, agent_grpc, metrics, client, nm, om, renv = ports
    wmin = worker_port_window(set(ports), 200)
    return [str(bin_dir / "ray"), "start", "--head", f"--port={gcs}", f"--dashboard-port={dash}",
            "--dashboard-host=127.0.0.1", f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
            f"--ray-client-server-port={client}", f"--node-manager-port={nm}", f"--object-manager-port={om}",
            f"--runtime-env-agent-port={renv}", f"--min-worker-port={wmin}", f"--max-worker-port={wmin + 200}",
            f"--temp-dir={temp_dir}", "--num-cpus=2", f"--include-dashboard={str(dashboard).lower()}",
            "--disable-usage-stats"], gcs, dash


def head_processes(temp_dir: str) -> list:
    """This head's processes: those whose command line names its temp dir, and their descendants
    (the dashboard and runtime-env agents retitle themselves "ray::..." and lose it)."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in part for part in (p.info["cmdline"] or [])):
                found[p.pid] = p
                for c in p.children(recursive=True):
                    found[c.pid] = c
        except psutil.Error:
            continue
    return list(found.values())


def stop_head(temp_dir: str) -> int:
    """SIGTERM, then SIGKILL after 10 s, to this head's processes only; returns how many."""
    import psutil

    procs = head_processes(temp_dir)
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    return len(procs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entities", type=int, default=200)
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--train-task", choices=["retriever", "reranker", ""], default="retriever",
                    help="then submit jobs/train.py with this task ('' skips it)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (data, run, Ray logs)")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "job_submit.json"))
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="hiea-job-"))
    # Ray's session dir holds unix sockets: keep the temp dir path short.
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")
    data, out = work / "data", work / "run"
    # Token authentication with a token of this head's own (Ray enables it when ~/.ray/auth_token
    # exists; a cluster user's token is theirs, not this script's): head, submit and client share it.
    import secrets

    token = work / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    res: dict = {"entities": args.entities, "temp_dir": temp_dir}
    ok = False
    t0 = time.time()
    try:
        subprocess.run([str(BIN / "hiea-ray"), "synth", "--out", str(data), "--entities", str(args.entities)],
                       check=True, capture_output=True, env=env)
        start, gcs, dash = head_start_command(BIN, temp_dir, dashboard=True)
        t = time.time()
        started = subprocess.run(start, capture_output=True, text=True, env=env, timeout=180)
        if started.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{started.stdout[-3000:]}{started.stderr[-3000:]}")
        res["head_start_s"] = round(time.time() - t, 1)
        res["head_processes"] = len(head_processes(temp_dir))
        address = f"http://127.0.0.1:{dash}"
        submit = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT),
                  "--submission-id", f"hiea-align-{int(time.time())}", "--",
                  "python", "jobs/align.py", "--data", str(data), "--out", str(out), "--set", "embed.batch_size=64"]
        t = time.time()
        proc = subprocess.run(submit, capture_output=True, text=True, env=env, timeout=args.timeout)
        res["job_wall_s"] = round(time.time() - t, 1)
        res["submit_returncode"] = proc.returncode
        from ray.job_submission import JobSubmissionClient

        client_api = JobSubmissionClient(address)
        job = max(client_api.list_jobs(), key=lambda j: j.start_time or 0)
        res["job_status"] = str(job.status)
        logs = client_api.get_job_logs(job.submission_id)
        res["log_has_stage_lines"] = "stage verbalize" in logs and "stage evaluate" in logs
        metrics_path = out / "metrics.json"
        if metrics_path.is_file():
            m = json.loads(metrics_path.read_text())
            res["protocol"], res["hits@1_sinkhorn"] = m["protocol"], m["sinkhorn"]["hits@1"]
        ok = (proc.returncode == 0 and res["job_status"].endswith("SUCCEEDED") and metrics_path.is_file()
              and res["log_has_stage_lines"])
        if not ok:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        if ok and args.train_task:
            # the training-only job, into a run folder of its own: the model is left there
            train_out = work / "train-run"
            submit = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(ROOT),
                      "--submission-id", f"hiea-train-{int(time.time())}", "--", "python", "jobs/train.py",
                      args.train_task, "--data", str(data), "--out", str(train_out), "--set", "embed.batch_size=64",
                      "--set", "train.rounds=1", "--set", "train.batch_size=16", "--set", "train.eval_every=1000",
                      "--set", "train.scaling.cpus_per_worker=1"]
            t = time.time()
            proc = subprocess.run(submit, capture_output=True, text=True, env=env, timeout=args.timeout)
            res["train_job_wall_s"] = round(time.time() - t, 1)
            job = client_api.get_job_info(submit[submit.index("--submission-id") + 1])
            res["train_job_status"] = str(job.status)
            stage = {"retriever": "train", "reranker": "rerank_train"}[args.train_task]
            res["train_model_files"] = sorted(p.name for p in (train_out / stage / "model").glob("*"))
            res["train_stopped_before_evaluate"] = not (train_out / "evaluate").exists()
            ok = (proc.returncode == 0 and res["train_job_status"].endswith("SUCCEEDED")
                  and "config.json" in res["train_model_files"] and res["train_stopped_before_evaluate"])
            if not ok:
                sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
    finally:
        res["head_processes_stopped"] = stop_head(temp_dir)
        time.sleep(1)
        res["head_processes_left"] = len(head_processes(temp_dir))
        res["ok"] = ok
        res["wall_s"] = round(time.time() - t0, 1)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(temp_dir, ignore_errors=True)
        Path(args.results).write_text(json.dumps({k: v for k, v in res.items() if k != "temp_dir"}, indent=2))
        print(json.dumps(res, indent=2))
    return 0 if ok and res["head_processes_left"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
