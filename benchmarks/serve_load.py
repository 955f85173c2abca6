"""Load test of the Serve tier (issue 13) on a finished run, on loopback: a bounded load (fixed
request count and time cap per scenario; it stops by itself) at concurrency 1, 8, 32.

    .venv/bin/python benchmarks/serve_load.py --run runs/zh_en-serve --pair zh_en

Scenarios (the requests are KG1 ids of the run's served protocol, answered through HTTP):
  small    sources the run's router judged certain (answered by the small models alone)
  llm      sources the router sent to the LLM (one forward pass each)
  mix      a seeded random sample of all sources: the natural mix
  all-llm  the same mix with "tier": "llm" (the router off: every query to the LLM)
and the LLM tier with @serve.batch off (serve.llm_batch_size=1), redeployed, on the llm queries.
Also: served answers against the offline run (tier, candidates, match) on a sample.

Writes benchmarks/results/serve_load_<pair>.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(run: Path, sets: list[str], port: int):
    from ray import serve

    from hiea_ray.serve.app import build_app

    serve.run(build_app(run, sets), name="hiea", route_prefix="/")
    return f"http://127.0.0.1:{port}/v1/align"


def offline(run: Path, protocol: str) -> dict:
    import pyarrow.parquet as pq

    from hiea_ray.io import column_to_numpy, read_dir, read_lists

    route = pq.read_table(run / "route" / protocol / "route.parquet").to_pydict()
    q, cand, _ = read_lists(run / "decode" / protocol / "structure.parquet")
    out = {"route": route, "cand": dict(zip(q.tolist(), cand))}
    parts = run / "llm" / protocol / "parts"
    if (run / "llm" / "manifest.json").is_file():
        t = read_dir(parts)
        out["llm"] = {int(s): (o, lp) for s, o, lp in zip(t["src"].to_pylist(), column_to_numpy(t["options"]),
                                                         column_to_numpy(t["logp"]))}
    return out


def agreement(answers: list[dict], ids: list[int], off: dict) -> dict:
    """Served vs offline: tier, top-k candidates (small tier), match (the LLM's pick as the run's merge reads it)."""
    from hiea_ray.core.hiea import merge

    route = off["route"]
    pos = {s: i for i, s in enumerate(route["src"])}
    tier = cands = match = llm_match = n_llm = 0
    for s, a in zip(ids, answers):
        i = pos[s]
        certain = bool(route["certain"][i])
        tier += a["tier"] == ("small" if certain else "llm")
        if certain:
            cands += [c["id"] for c in a["candidates"]] == [int(x) for x in off["cand"][s][: len(a["candidates"])]]
            match += (a["match"] or {}).get("id") == route["answer"][i]
        elif "llm" in off and s in off["llm"]:
            o, lp = off["llm"][s]
            src, none = np.array([s]), np.zeros(0, np.int64)
            pick = merge(src, o[None], np.zeros((1, len(o))), none, none, src, src, o[None],
                         np.array([int((o >= 0).sum()) + 1]), lp[None]).llm_pick[0]
            want = int(pick) if pick >= 0 else None
            llm_match += (a["match"] or {}).get("id") == want
            n_llm += 1
    n_small = int(sum(bool(route["certain"][pos[s]]) for s in ids))
    return {"queries": len(ids), "tier_equal": tier, "small_queries": n_small, "small_candidates_equal": cands,
            "small_match_equal": match, "llm_queries_with_offline_answer": n_llm, "llm_match_equal": llm_match}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--pair", default="zh_en")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--small-requests", type=int, default=300)
    ap.add_argument("--llm-requests", type=int, default=96)
    ap.add_argument("--mix-requests", type=int, default=300)
    ap.add_argument("--max-seconds", type=float, default=120.0, help="time cap per scenario")
    ap.add_argument("--check", type=int, default=200, help="queries checked against the offline run")
    ap.add_argument("--set", action="append", default=[], help="serve.* overrides for every deployment")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from hiea_ray.serve.engine import ServeRun
    from hiea_ray.serve.load import run_load

    run = Path(args.run).resolve()
    ctx = ServeRun(run, args.set)
    if not ctx.has_llm:
        raise SystemExit(f"{run}: the run has no router / LLM tier to load-test")
    off = offline(run, ctx.protocol)
    route = off["route"]
    src = np.asarray(route["src"])
    certain = np.asarray(route["certain"])
    rng = np.random.default_rng(0)
    small_ids = rng.choice(src[certain], args.small_requests, replace=len(src[certain]) < args.small_requests).tolist()
    llm_ids = rng.choice(src[~certain], args.llm_requests, replace=len(src[~certain]) < args.llm_requests).tolist()
    mix_ids = rng.choice(src, args.mix_requests, replace=False).tolist()
    levels = [int(c) for c in args.concurrency.split(",")]
    out_json = Path(args.out or ROOT / "benchmarks" / "results" / f"serve_load_{args.pair}.json")
    result: dict = {"run": str(run), "pair": args.pair, "protocol": ctx.protocol, "cpu_count": os.cpu_count(),
                    "llm_fraction_of_run": round(float((~certain).mean()), 4), "settings": args.set,
                    "scenarios": {}}

    def save():
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(result, indent=2))

    def scenario(name, url, ids, c, tier="auto", n=None):
        bodies = [{"id": int(s)} if tier == "auto" else {"id": int(s), "tier": tier} for s in ids[: n or len(ids)]]
        r = run_load(url, bodies, c, args.max_seconds)
        answers = r.pop("answers")
        tiers = [a["tier"] for a in answers if a]
        r["served_by_llm"] = tiers.count("llm")
        server = [a["timings_ms"] for a in answers if a]
        r["server_ms_mean"] = {k: round(float(np.mean([t[k] for t in server])), 2) for k in server[0]} if server else {}
        result["scenarios"].setdefault(name, {})[str(c)] = r
        print(f"{name:<12} c={c:<3} n={r['ok']:<4} lost={r['lost']} p50={r['p50_ms']} p95={r['p95_ms']} "
              f"p99={r['p99_ms']} rps={r['rps']}", flush=True)
        save()
        return answers

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": ctx.cfg.serve.request_timeout_s})
    try:
        t0 = time.time()
        url = deploy(run, args.set, port)
        result["deploy_s"] = round(time.time() - t0, 1)
        # warm-up (first forward passes allocate), then the agreement check
        run_load(url, [{"id": int(s)} for s in mix_ids[:8]], 2, 60)
        check_ids = mix_ids[: args.check]
        chk = run_load(url, [{"id": int(s)} for s in check_ids], 4, 600)
        result["agreement_with_offline"] = agreement(chk.pop("answers"), check_ids, off)
        print("agreement", result["agreement_with_offline"], flush=True)
        for c in levels:
            scenario("small", url, small_ids, c, n=min(len(small_ids), 60 if c == 1 else len(small_ids)))
            scenario("llm", url, llm_ids, c, n=min(len(llm_ids), 24 if c == 1 else len(llm_ids)))
            scenario("mix", url, mix_ids, c, n=min(len(mix_ids), 60 if c == 1 else len(mix_ids)))
        scenario("all-llm", url, mix_ids, levels[-1], tier="llm", n=args.llm_requests)
        result["llm_batches"] = serve.get_deployment_handle("LLM", app_name="hiea").stats.remote().result()
        serve.delete("hiea")
        url = deploy(run, [*args.set, "serve.llm_batch_size=1"], port)
        run_load(url, [{"id": int(s)} for s in llm_ids[:4]], 2, 60)
        scenario("llm-unbatched", url, llm_ids, levels[-1])
        scenario("all-llm-unbatched", url, mix_ids, levels[-1], tier="llm", n=args.llm_requests)
    finally:
        serve.shutdown()
        ray.shutdown()
    s = result["scenarios"]
    top = str(levels[-1])
    result["summary"] = {
        "small_p50_ms_c1": s["small"]["1"]["p50_ms"],
        "routed_vs_all_llm_throughput_c%s" % top: round(s["mix"][top]["rps"] / max(s["all-llm"][top]["rps"], 1e-9), 2),
        "batched_vs_unbatched_llm_throughput_c%s" % top: round(s["llm"][top]["rps"] / max(s["llm-unbatched"][top]["rps"], 1e-9), 2),
        "lost": sum(r["lost"] for sc in s.values() for r in sc.values()),
    }
    save()
    plot(result, out_json.with_suffix(".png"))
    print(json.dumps(result["summary"], indent=2))
    return 0


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["scenarios"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, style in (("small", "o-"), ("mix", "s-"), ("llm", "^-")):
        cs = sorted(int(c) for c in s.get(name, {}))
        a1.plot(cs, [s[name][str(c)]["p50_ms"] for c in cs], style, label=f"{name} p50")
        a1.plot(cs, [s[name][str(c)]["p95_ms"] for c in cs], style, alpha=0.4, label=f"{name} p95")
    a1.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="latency (ms)", title="latency by tier")
    a1.legend(fontsize=7)
    top = str(max(int(c) for c in s["mix"]))
    bars = [("routed mix", s["mix"][top]["rps"]), ("all-LLM", s["all-llm"][top]["rps"]),
            ("LLM batched", s["llm"][top]["rps"]), ("LLM unbatched", s["llm-unbatched"][top]["rps"])]
    a2.bar([b[0] for b in bars], [b[1] for b in bars], color=["C0", "C3", "C2", "C1"])
    a2.set(ylabel="requests / s", title=f"throughput at concurrency {top}")
    fig.suptitle(f"hiea-ray serve, DBP15K {result['pair']} ({result['cpu_count']} CPUs, loopback)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
