"""A multi-node Ray cluster on this machine, a job submitted through the Jobs API, and a node lost
in the middle of the embed stage (with --serve, under the Serve app's load; with --train, during
retriever training).

    .venv/bin/python benchmarks/cluster_failover.py [--entities 600] [--serve] [--train]

1. A synthetic pair (``hiea-ray synth``) and a tiny random encoder, in a fresh temp folder.
2. The reference: the same `jobs/align.py` command on one node (a local Ray of its own).
3. ``ray.cluster_utils.Cluster`` (as Ray's own multi-node tests): a head with no CPUs (it runs the
   job's driver only, so every task and actor must move to the workers) and two worker nodes of
   2 CPUs each, every raylet with its own ports under one temp dir of its own.
4. ``jobs/align.py`` submitted through the Jobs API (``JobSubmissionClient``); as soon as the embed
   stage has written its first part, the node holding the encoder actor is killed (its raylet and
   every worker on it, ``Cluster.remove_node(allow_graceful=False)``). Ray Data restarts the actor
   on the surviving node and retries the lost tasks; the job must SUCCEED with the reference's
   metrics, and the embed manifest names the nodes that embedded rows.
5. With --serve, the Serve app is deployed on that cluster (``serve deploy``) from the config
   ``hiea-ray serve --run RUN --print-config`` generates for the finished run (two Retriever and two
   Ingress replicas of 1 / 0.1 CPU, the proxy on the head only, since every node shares this
   machine's ports); its answers are compared with the run's decoded lists; then, under a bounded
   load (4 client threads, retries with backoff as ``hiea_ray.serve.load``), the node holding a
   Retriever replica is killed and a replacement node joins (as KubeRay / the autoscaler would
   bring one): no request may be lost, the answers after the kill must equal those before, and the
   time until Serve runs two Retriever replicas again is recorded.
6. With --train, a second job trains the retriever (``train.enabled``, ``FailureConfig``
   max_failures 2, a checkpoint every few steps) and the node holding the Ray Train worker is
   killed mid-training: training resumes from its last checkpoint (history ``resumed``) and finishes.
The cluster is shut down by its own handle (never ``ray stop``). Writes
benchmarks/results/cluster_failover.json: wall times (1 node vs head + 2 workers), time from the
node loss to the job's end (or to Serve's recovery), node ids per stage, requests lost, and the
metrics of both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import provenance  # noqa: E402

TINY = ["embed.torch_threads=1", "embed.batch_size=32", "embed.max_length=64", "embed.rows_per_batch=64",
        "verbalize.batch_size=128", "retrieve.k=20", "decode.csls_k=5"]


def sets(items: list[str]) -> list[str]:
    return [x for kv in items for x in ("--set", kv)]


def align_cmd(data: Path, out: Path, model: Path, extra: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "jobs" / "align.py"), "--data", str(data), "--out", str(out), "-q",
            *sets([f"embed.model={model}", *TINY, *extra])]


SEEN: list = []  # the alive actors' classes at each kill (what the record says was hit)


def node_of_actor(class_fragment: str) -> str | None:
    from ray.util.state import list_actors

    alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    SEEN.append(sorted({a.class_name for a in alive}))
    for a in alive:
        if class_fragment in (a.class_name or ""):
            return a.node_id
    return None


def wait_for(pred, timeout: float, every: float = 0.5):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(every)
    return None


def run_job(client, entrypoint: list[str], kill_when, kill, timeout: float) -> dict:
    """Submit, kill a node once ``kill_when()`` holds, wait for the end; the job's record."""
    from ray.job_submission import JobStatus

    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.time()
    for attempt in range(30):  # the head's job agent may not be up yet: "No available agent to submit job"
        try:
            job = client.submit_job(entrypoint=" ".join(entrypoint), runtime_env={"env_vars": env})
            break
        except RuntimeError as e:
            if "No available agent" not in str(e) or attempt == 29:
                raise
            time.sleep(2)
    killed_at, killed = None, None
    while time.time() - t0 < timeout:
        st = client.get_job_status(job)
        if st in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        if killed is None and kill_when():
            killed = kill()
            killed_at = time.time()
        time.sleep(0.5)
    end = time.time()
    return {"job": job, "status": str(client.get_job_status(job)), "wall_s": round(end - t0, 1),
            "killed_node": killed, "recovery_s": round(end - killed_at, 1) if killed_at else None,
            "logs_tail": client.get_job_logs(job)[-1500:]}


def registered_checkpoint(storage: Path) -> str | None:
    """The latest checkpoint Ray Train's checkpoint manager has registered under ``storage`` (read
    from its ``checkpoint_manager_snapshot.json``), or None."""
    for snap in storage.rglob("checkpoint_manager_snapshot.json") if storage.is_dir() else ():
        try:
            latest = json.loads(snap.read_text()).get("latest_checkpoint_result")
        except (OSError, ValueError):
            continue  # being written
        if latest:
            return latest.get("checkpoint_dir_name") or str(latest)
    return None


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_phase(cluster, add_worker, run: Path, tmp: Path, requests_n: int = 400) -> dict:
    """Deploys the app over ``run`` with ``serve deploy`` from the generated config, checks its
    answers against the run, kills the node of a Retriever replica under load; the record."""
    import numpy as np
    import requests
    import yaml
    from ray.serve.schema import ServeDeploySchema
    from ray.util.state import list_actors

    from hiea_ray.io import read_lists
    from hiea_ray.serve.engine import ServeRun
    from hiea_ray.serve.load import run_load

    sets_ = ["serve.retriever_replicas=2", "serve.retriever_max_replicas=2", "serve.retriever_cpus=1",
             "serve.torch_threads=1"]
    gen = subprocess.run([sys.executable, "-m", "hiea_ray.cli", "serve", "--run", str(run), "--print-config",
                          *sets(sets_)], capture_output=True, text=True, timeout=300)
    if gen.returncode != 0:
        return {"error": gen.stderr[-2000:]}
    cfg = yaml.safe_load(gen.stdout)
    port = free_port()
    # this machine only: every node shares its ports (one proxy, on the head), a second Ingress
    cfg["proxy_location"] = "HeadOnly"
    cfg["http_options"].update({"host": "127.0.0.1", "port": port})
    deps = {d["name"]: d for d in cfg["applications"][0]["deployments"]}
    deps["Ingress"]["num_replicas"] = 2
    ServeDeploySchema.model_validate(cfg)
    path = tmp / "serve.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    rec: dict = {"config": {"generated_with": "hiea-ray serve --run RUN --print-config " + " ".join(sets(sets_)),
                            "changed_for_one_machine": {"proxy_location": "HeadOnly", "http_options.port": "free",
                                                        "Ingress.num_replicas": 2},
                            "deployments": sorted(deps)}}
    dash = f"http://{cluster.head_node.address_info['webui_url']}"
    t0 = time.time()
    dep = subprocess.run([str(Path(sys.executable).with_name("serve")), "deploy", str(path), "-a", dash],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    if dep.returncode != 0:
        rec["error"] = dep.stderr[-2000:]
        return rec
    url = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            return requests.get(f"{url}/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def retrievers():
        return [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
                if "Retriever" in (a.class_name or "")]

    if not wait_for(lambda: healthy() and len(retrievers()) == 2, 600, 1.0):
        rec["error"] = "the app did not become healthy with two Retriever replicas in 600 s"
        return rec
    rec["deploy_s"] = round(time.time() - t0, 1)
    rec["retriever_nodes"] = sorted(a.node_id[:12] for a in retrievers())
    # the served answers against the run's decoded lists (the served protocol, the primary decoder)
    ctx = ServeRun(run)
    from hiea_ray.core.router import primary_decoder

    primary = primary_decoder(ctx.cfg.route.primary, ctx.cfg.decode.decoders)
    q, cand, _ = read_lists(run / "decode" / ctx.protocol / f"{primary}.parquet")
    sess = requests.Session()
    same = []
    for s in q[:200]:
        b = sess.post(f"{url}/v1/align", json={"id": int(s)}, timeout=60).json()
        got = [c["id"] for c in b["candidates"]]
        same.append(got == [int(x) for x in cand[np.searchsorted(q, s)][:len(got)]])
    rec["answers_equal_run"] = {"sources": len(same), "equal": int(sum(same)), "decoder": primary,
                                "protocol": ctx.protocol}
    bodies = [{"id": int(q[i % len(q)])} for i in range(requests_n)]
    before = {b["id"]: sess.post(f"{url}/v1/align", json=b, timeout=60).json() for b in bodies[:len(q)]}
    kill: dict = {}
    trigger = threading.Event()

    def on_start(i):
        if i == requests_n // 4:
            trigger.set()

    # the load runs in a thread; the node is killed and replaced from this (the main) thread, as
    # Ray starts nodes only from the main thread (signal handlers)
    box: dict = {}
    load = threading.Thread(target=lambda: box.update(res=run_load(
        f"{url}/v1/align", bodies, concurrency=4, max_seconds=600, retries=12, on_start=on_start)))
    load.start()
    while not trigger.wait(0.2) and load.is_alive():
        pass
    if trigger.is_set():
        nid = retrievers()[0].node_id
        node = next(n for n in cluster.worker_nodes if n.node_id == nid)
        kill["t"] = time.time()
        cluster.remove_node(node, allow_graceful=False)
        kill["node"] = nid[:12]
        add_worker()  # a replacement node joins, as KubeRay / the autoscaler would bring one
    load.join()
    res = box["res"]
    back = wait_for(lambda: len(retrievers()) == 2 and healthy(), 600, 1.0)
    rec["load"] = {k: v for k, v in res.items() if k != "answers"}
    rec["killed_node"] = kill.get("node")
    rec["recovery_s"] = round(time.time() - kill["t"], 1) if back and kill else None
    rec["answers_equal_before_kill"] = int(sum(
        a is not None and [c["id"] for c in a["candidates"]] == [c["id"] for c in before[b["id"]]["candidates"]]
        for b, a in zip(bodies, res["answers"])))
    rec["retriever_nodes_after"] = sorted(a.node_id[:12] for a in retrievers())
    subprocess.run([str(Path(sys.executable).with_name("serve")), "shutdown", "-a", dash, "-y"],
                   capture_output=True, text=True, timeout=300)
    return rec


DISTRIBUTED = ["retrieve.engine=ray", "retrieve.search_actors=2", "retrieve.search_cpus=0.5", "retrieve.rows_per_block=256",
               "decode.engine=ray", "decode.shards=2", "decode.shard_cpus=0.5",
               "ray.offload=[calibrate,export,evaluate]", "ray.offload_cpus=1",
               "decode.decoders=[top1,csls,sinkhorn,structure]"]


COMPARED = ("retrieve/all-targets/s2t.parquet", "retrieve/all-targets/t2s.parquet", "decode/all-targets/structure.parquet",
            "decode/all-targets/sinkhorn.match.parquet", "decode/standard/csls.parquet")


def compare_runs(out: Path, ref: Path) -> dict:
    """Per file of COMPARED: bit-equal, the same ids (sources, candidates / matched targets, in
    order) and the largest score difference; and whether metrics.json is equal. FAISS's exact
    search sums each score in an order that can depend on how Ray Data batched the queries (a
    retried block is batched anew), so a score may differ in its last bits while every id agrees."""
    import numpy as np
    import pyarrow.parquet as pq

    from hiea_ray.io import column_to_numpy

    eq = {}
    for f in COMPARED:
        a, b = pq.read_table(out / f), pq.read_table(ref / f)
        rec = {"equal": a.equals(b), "rows": a.num_rows}
        if a.num_rows == b.num_rows:
            ids = [c for c in a.column_names if c != "score"]
            rec["same_ids"] = all(
                np.array_equal(column_to_numpy(a[c]) if a.schema.field(c).type.num_fields else a[c].to_numpy(),
                               column_to_numpy(b[c]) if b.schema.field(c).type.num_fields else b[c].to_numpy())
                for c in ids)
            sa, sb = (column_to_numpy(t["score"]) if t.schema.field("score").type.num_fields else t["score"].to_numpy()
                      for t in (a, b))
            finite = np.isfinite(sa) & np.isfinite(sb)
            rec["max_abs_score_diff"] = float(np.abs(sa[finite] - sb[finite]).max()) if finite.any() else 0.0
        eq[f] = rec
    eq["metrics.json"] = json.loads((out / "metrics.json").read_text()) == json.loads((ref / "metrics.json").read_text())
    return eq


def same_answers(eq: dict, tol: float = 1e-5) -> bool:
    """The same ids everywhere, scores within ``tol``, the same metrics."""
    files = [v for k, v in eq.items() if k != "metrics.json"]
    return bool(eq.get("metrics.json")) and all(v.get("same_ids") and v.get("max_abs_score_diff", 1) <= tol for v in files)


def retrieve_decode_phase(cluster, by_id, client, add_worker, tmp: Path, entities: int, repeat: int) -> dict:
    """retrieve.engine=ray, decode.engine=ray and the later stages offloaded (``DISTRIBUTED``) on a
    larger pair: the reference on one node, then per repeat two jobs on the cluster, one losing the
    node of a Searcher actor once the first part of the retrieve stage is written, one losing the
    node of a DecodeShard actor; each must SUCCEED with the reference's lists and metrics."""
    import pyarrow.parquet as pq

    from hiea_ray.config import VerbalizeConfig
    from hiea_ray.core.tiny import build_tiny_encoder
    from hiea_ray.core.verbalize import build_contexts, verbalize_table
    from hiea_ray.kg.readers import read_pair
    from hiea_ray.kg.synthetic import generate

    data, model = tmp / "pair-rd", tmp / "tiny-rd"
    generate(data, n_entities=entities, seed=1)
    texts = verbalize_table(build_contexts(read_pair(data)), VerbalizeConfig())
    build_tiny_encoder(model, texts["name"].to_pylist()[:20000] + texts["text"].to_pylist()[:20000], seed=0)
    extra = [*DISTRIBUTED, "embed.cpus_per_actor=1", "verbalize.num_actors=2"]
    t0 = time.time()
    ref = subprocess.run(align_cmd(data, tmp / "ref-rd", model, ["ray.num_cpus=2", *DISTRIBUTED]), capture_output=True,
                         text=True, timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "1"})
    rec: dict = {"entities": entities, "overrides": DISTRIBUTED, "one_node": {"rc": ref.returncode, "wall_s": round(time.time() - t0, 1)},
                 "runs": []}
    if ref.returncode != 0:
        rec["one_node"]["stderr"] = ref.stderr[-2000:]
        return rec
    ref_metrics = json.loads((tmp / "ref-rd" / "metrics.json").read_text())

    def kill_node(nid):
        node = by_id.get(nid)
        if node is None:
            return f"no node {nid}"
        cluster.remove_node(node, allow_graceful=False)
        add_worker()  # a replacement joins, as the autoscaler / KubeRay would bring one
        return nid[:12]

    def same_as_ref(out: Path) -> dict:
        return compare_runs(out, tmp / "ref-rd")

    # the same job on the cluster with no node lost: its wall time beside the one-node run, and where
    # the retrieve stage's searches and the offloaded decode ran
    out = tmp / "rd-no-kill"
    job = run_job(client, align_cmd(data, out, model, extra), kill_when=lambda: False, kill=lambda: None, timeout=1800)
    if job["status"].endswith("SUCCEEDED"):
        job.pop("logs_tail", None)
        job["equal_to_one_node"] = same_as_ref(out)
        job["stage_wall_s"] = {st: json.loads((out / st / "manifest.json").read_text())["wall_s"]
                               for st in ("embed", "retrieve", "decode", "calibrate")}
        job["stage_wall_s_one_node"] = {st: json.loads((tmp / "ref-rd" / st / "manifest.json").read_text())["wall_s"]
                                        for st in ("embed", "retrieve", "decode", "calibrate")}
        job["retrieve_stats"] = {k: v for k, v in json.loads((out / "retrieve" / "manifest.json").read_text())["stats"].items()
                                 if k not in ("rows",)}
        job["decode_stats"] = {k: v for k, v in json.loads((out / "decode" / "manifest.json").read_text())["stats"].items()
                               if k not in ("rows",)}
    rec["cluster_no_kill"] = job
    print("no kill", job["status"], job.get("equal_to_one_node"), flush=True)
    for r in range(repeat):
        for phase in ("retrieve", "decode"):
            out = tmp / f"rd-{phase}-{r}"
            parts_seen: dict = {}

            def when(phase=phase, out=out):
                d = out / f".{phase}.tmp"
                if phase == "retrieve":
                    parts = list(d.glob("*/s2t.parts/*.parquet")) if d.is_dir() else []
                    parts_seen["at_kill"] = len(parts)
                    return bool(parts)
                return d.is_dir() and node_of_actor("DecodeShard") is not None

            def kill(phase=phase):
                nid = node_of_actor("Searcher" if phase == "retrieve" else "DecodeShard")
                return kill_node(nid) if nid else f"no running {phase} worker found"

            job = run_job(client, align_cmd(data, out, model, extra), kill_when=when, kill=kill, timeout=1800)
            job.pop("logs_tail", None) if job["status"].endswith("SUCCEEDED") else None
            job.update(phase=phase, repeat=r, parts_written_at_kill=parts_seen.get("at_kill"))
            if job["status"].endswith("SUCCEEDED"):
                job["equal_to_one_node"] = same_as_ref(out)
                st = json.loads((out / phase / "manifest.json").read_text())["stats"]
                job["stage_stats"] = {k: st[k] for k in ("queries_searched_now", "offloaded", "rows", "shards_per_node",
                                                         "shard_peak_rss_gib", "decoder_wall_s") if k in st}
            rec["runs"].append(job)
            print(phase, r, job["status"], job.get("killed_node"), job.get("equal_to_one_node"), flush=True)
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entities", type=int, default=600)
    ap.add_argument("--serve", action="store_true", help="also serve the run on the cluster and lose a node under load")
    ap.add_argument("--train", action="store_true", help="also lose a node during retriever training")
    ap.add_argument("--retrieve-decode", type=int, default=0, metavar="N",
                    help="also N repeats of losing a node mid-retrieve and mid-decode (retrieve.engine and decode.engine ray)")
    ap.add_argument("--rd-entities", type=int, default=30000, help="the synthetic pair of the --retrieve-decode phase")
    ap.add_argument("--skip-embed-phase", action="store_true", help="skip the embed / serve / train phases' align job")
    ap.add_argument("--result", default=str(ROOT / "benchmarks" / "results" / "cluster_failover.json"))
    args = ap.parse_args(argv)

    import pyarrow.parquet as pq
    import ray
    from ray.cluster_utils import Cluster
    from ray.job_submission import JobSubmissionClient

    from hiea_ray.config import VerbalizeConfig
    from hiea_ray.core.tiny import build_tiny_encoder
    from hiea_ray.core.verbalize import build_contexts, verbalize_table
    from hiea_ray.kg.readers import read_pair
    from hiea_ray.kg.synthetic import generate

    tmp = Path(tempfile.mkdtemp(prefix="hiea_failover_"))
    data, model = tmp / "pair", tmp / "tiny"
    generate(data, n_entities=args.entities, seed=0)
    pair = read_pair(data)
    texts = verbalize_table(build_contexts(pair), VerbalizeConfig())
    build_tiny_encoder(model, texts["name"].to_pylist() + texts["text"].to_pylist(), seed=0)
    doc: dict = {"command": "python benchmarks/cluster_failover.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "date": time.strftime("%Y-%m-%d"), "entities": args.entities}

    doc["provenance"] = provenance()
    # 2. one node: the same entrypoint on a local Ray of its own
    if not args.skip_embed_phase:
        t0 = time.time()
        ref = subprocess.run(align_cmd(data, tmp / "ref", model, ["ray.num_cpus=2"]), capture_output=True, text=True,
                             timeout=1200, env={**os.environ, "OMP_NUM_THREADS": "1"})
        doc["one_node"] = {"rc": ref.returncode, "wall_s": round(time.time() - t0, 1)}
        if ref.returncode != 0:
            print(ref.stderr[-3000:])
            return 1
        ref_metrics = json.loads((tmp / "ref" / "metrics.json").read_text())

    # 3. head (no CPUs: the driver only) + two worker nodes
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1", "object_store_memory": 150 * 2**20})
    try:
        workers = [cluster.add_node(num_cpus=2, object_store_memory=150 * 2**20) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        client = JobSubmissionClient(f"http://{cluster.head_node.address_info['webui_url']}")
        by_id = {w.node_id: w for w in workers}

        def kill_holder(fragment):
            def kill():
                nid = node_of_actor(fragment)
                node = by_id.get(nid)
                if node is None:  # not found: record it, kill nothing (a random kill proves nothing)
                    return f"no alive {fragment} actor found"
                cluster.remove_node(node, allow_graceful=False)
                return node.node_id[:12]
            return kill

        if args.retrieve_decode:
            def add_rd_worker():
                node = cluster.add_node(num_cpus=2, object_store_memory=150 * 2**20)
                by_id[node.node_id] = node
                workers.append(node)
                cluster.wait_for_nodes()

            doc["cluster_retrieve_decode"] = retrieve_decode_phase(cluster, by_id, client, add_rd_worker, tmp,
                                                                   args.rd_entities, args.retrieve_decode)
        out = tmp / "cluster"
        job = {"status": "skipped"} if args.skip_embed_phase else run_job(
            client, align_cmd(data, out, model, ["embed.cpus_per_actor=1", "verbalize.num_actors=2"]),
            kill_when=lambda: any((out / ".embed.tmp" / "parts").glob("*.parquet")) if (out / ".embed.tmp").is_dir() else False,
            kill=kill_holder("Embedder"), timeout=1200)
        doc["cluster_align"] = job
        if job["status"].endswith("SUCCEEDED"):
            m = json.loads((out / "metrics.json").read_text())
            em = json.loads((out / "embed" / "manifest.json").read_text())["stats"]
            doc["cluster_align"].update({
                "metrics_equal_one_node": m == ref_metrics,
                "hits@1": {d: m[d]["hits@1"] for d in ("top1", "csls", "sinkhorn")},
                "hits@1_one_node": {d: ref_metrics[d]["hits@1"] for d in ("top1", "csls", "sinkhorn")},
                "embed_rows_per_node": em["rows_per_node"],
                # the encoder processes that embedded rows: beyond the pool = restarted / replaced actors
                "embed_rows_per_encoder_process": em.get("rows_per_encoder_process"),
                "embed_encoder_actor_restarts": em.get("encoder_actor_restarts"),
                "embed_encoder_processes_beyond_pool": em.get("encoder_processes_beyond_pool"),
                "head_node": cluster.head_node.node_id[:12],
            })
            vecs = {r: pq.read_table(r / "embed" / "parts").sort_by("id") for r in (out, tmp / "ref")}
            import numpy as np

            from hiea_ray.io import column_to_numpy

            doc["cluster_align"]["embed_max_abs_diff"] = float(np.abs(column_to_numpy(vecs[out]["embedding"])
                                                                      - column_to_numpy(vecs[tmp / "ref"]["embedding"])).max())
        if args.serve and job["status"].endswith("SUCCEEDED"):
            def add_worker():
                node = cluster.add_node(num_cpus=2, object_store_memory=150 * 2**20)
                by_id[node.node_id] = node
                workers.append(node)

            add_worker()  # the align job lost one: two workers again
            cluster.wait_for_nodes()
            doc["cluster_serve"] = serve_phase(cluster, add_worker, out, tmp)
        if args.train:
            replacement = cluster.add_node(num_cpus=2, object_store_memory=150 * 2**20)
            by_id[replacement.node_id] = replacement
            workers.append(replacement)
            cluster.wait_for_nodes()
            tout = tmp / "train"
            at_kill: dict = {"ckpt": None}
            tjob = run_job(client, [sys.executable, str(ROOT / "jobs" / "train.py"), "retriever", "--data", str(data),
                                    "--out", str(tout), "-q",
                                    *sets([f"embed.model={model}", *TINY, "train.epochs_per_round=12", "train.rounds=1",
                                           "train.eval_every=4", "train.scaling.max_failures=2", "train.hard_negatives=0",
                                           "train.scaling.cpus_per_worker=1", "train.scaling.torch_threads=1"])],
                           # a checkpoint registered by Ray Train's controller (its snapshot names a
                           # latest checkpoint), not merely written: a file on disk is not yet restorable
                           kill_when=lambda: at_kill.update(ckpt=registered_checkpoint(tout / ".train.tmp")) or at_kill["ckpt"],
                           kill=kill_holder("RayTrainWorker"), timeout=1800)
            hist = tout / "train" / "history.json"
            if hist.is_file():
                last = json.loads(hist.read_text())["rounds"][-1]
                tjob.update({"resumed_at_steps": last["last"]["resumed"], "steps": last["last"]["step"],
                             "best_valid_mrr": last["best"]["valid_mrr"]})
            tjob["registered_checkpoint_at_kill"] = at_kill["ckpt"]
            doc["cluster_train"] = tjob
        doc["actors_at_kills"] = SEEN
    finally:
        ray.shutdown()
        cluster.shutdown()
    Path(args.result).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in doc.items()}, indent=1, default=str)[:4000])
    shutil.rmtree(tmp, ignore_errors=True)
    ok = args.skip_embed_phase or (doc["cluster_align"]["status"].endswith("SUCCEEDED")
                                   and doc["cluster_align"].get("metrics_equal_one_node"))
    if args.retrieve_decode:
        runs = doc.get("cluster_retrieve_decode", {}).get("runs", [])
        ok = ok and len(runs) == 2 * args.retrieve_decode and all(
            r["status"].endswith("SUCCEEDED") and r.get("equal_to_one_node") and same_answers(r["equal_to_one_node"])
            for r in runs)
    if args.serve:
        sv = doc.get("cluster_serve", {})
        ok = ok and sv.get("load", {}).get("lost") == 0 and sv.get("recovery_s") is not None
    if args.train:
        ok = ok and bool(doc.get("cluster_train", {}).get("resumed_at_steps"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
