"""The HIEA tier on a finished run of benchmarks/configs/dbp15k-hiea.yaml: router, LLM vs small
model on the routed sources, the merged "hiea" decoder, its cost, and the curve of merged Hits@1
against the share routed.

    hiea-ray align --data ../shared/datasets/DBP15K/zh_en --config benchmarks/configs/dbp15k-hiea.yaml --out runs/zh_en-hiea-ft
    .venv/bin/python benchmarks/hiea_tier.py --pair zh_en --run runs/zh_en-hiea-ft [--extra 300]

Everything but the curve comes from the run's own outputs (route/report.json, llm_train/history.json,
metrics.json, the stage manifests). The curve ranks the test sources by the router's P(right) and
routes the least certain share s to the LLM: for s up to the share the run routed, the LLM answers
are the run's own; beyond it, the small model's answers shifted by the change the merge (the LLM
fused with the small model at the run's weight) made on ``--extra`` randomly drawn certain sources
(scored here with the run's trained LLM, one forward pass each) is the estimate (dashed).
Writes benchmarks/results/hiea_tier_<pair>[-<tag>].json and .png. The test links are used for evaluation
only: nothing is chosen on them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from hiea_ray.config import Config, config_from_dict  # noqa: E402
from hiea_ray.core.hiea import fusion_weight, merge  # noqa: E402
from hiea_ray.core.router import primary_decoder  # noqa: E402
from hiea_ray.io import column_to_numpy, read_dir, read_lists, rows_of  # noqa: E402
from hiea_ray.kg.model import KGPair  # noqa: E402

CHATEA_CALLS = "up to 31+ generated LLM calls per entity (ChatEA, as reported in the HIEA paper)"


def extra_llm_answers(run: Path, cfg: Config, protocol: str, src: np.ndarray, fusion: float) -> tuple[np.ndarray, np.ndarray]:
    """The run's trained LLM on extra sources (its prompts built as the llm stage builds them):
    per source, the LLM's own pick (-1 = none) and the merge's top-1 at ``fusion``."""
    import torch

    from hiea_ray.core.llm import resolve_llm
    from hiea_ray.run import RunContext
    from hiea_ray.ops.llm import LLMScorer
    from hiea_ray.run import trained_model
    from hiea_ray.run import prompt_format, seed_and_certain
    from hiea_ray.train.llm import neighbourhoods, prompt_table

    ctx = RunContext(cfg, "", run)
    lc = cfg.llm
    q, cand, score = read_lists(run / "decode" / protocol / f"{primary_decoder(cfg.route.primary, cfg.decode.decoders)}.parquet")
    ids, _, vecs = ctx.embeddings()
    nb = neighbourhoods(ctx.pair(), seed_and_certain(ctx, protocol), lc.max_facts)
    fmt = prompt_format(trained_model(ctx), lc.adapter_tokens)
    table = prompt_table(src, cand[rows_of(q, src)], None, nb, fmt, lc.prompt_tokens, ids, vecs, lc.candidates,
                         lc.scaling.seed)
    from dataclasses import asdict

    torch.set_num_threads(lc.torch_threads or 2)
    scorer = LLMScorer(asdict(lc), resolve_llm(lc.model), trained_model(ctx), int(vecs.shape[1]))
    out = scorer(table)
    none = np.zeros(0, np.int64)  # the LLM's own pick, as the hiea merge reads it
    m = merge(q, cand, score, none, none, src, out["src"].to_numpy(), column_to_numpy(out["options"]),
              out["n_options"].to_numpy(), column_to_numpy(out["logp"]), fusion)
    return m.llm_pick, m.cand[rows_of(q, out["src"].to_numpy()), 0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pair", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--extra", type=int, default=300, help="certain test sources scored by the LLM for the curve")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="results file hiea_tier_<pair>-<tag>.json (a variant of the config)")
    args = ap.parse_args(argv)
    run = Path(args.run)
    cfg = config_from_dict(json.loads((run / "config.resolved.json").read_text()), str(run / "config.resolved.json"))
    protocol = cfg.evaluate.protocols[0]
    metrics = json.loads((run / "metrics.json").read_text())
    route_rep = json.loads((run / "route" / "report.json").read_text())["protocols"][protocol]
    # the LLM trained in this run, or (llm.train: false) the run whose llm_train/model it uses
    trained_in = run / "llm_train" if cfg.llm.train else Path(cfg.llm.trained).parent
    history = json.loads((trained_in / "history.json").read_text())
    fusion = fusion_weight(cfg.llm.fusion, trained_in / "model")
    manifests = {s: json.loads((run / s / "manifest.json").read_text()) for s in ("route", "llm")}
    pair = KGPair.read(run / "ingest")
    test = pair.links_of("test")
    gold = dict(zip(test["src"].to_pylist(), test["tgt"].to_pylist()))

    # the curve: test sources by P(right), the least certain share s answered by the LLM
    route = pq.read_table(run / "route" / protocol / "route.parquet")
    r_src, r_prob, r_ans = route["src"].to_numpy(), route["prob"].to_numpy(), route["answer"].to_numpy()
    certain = route["certain"].to_numpy(zero_copy_only=False)
    on_test = np.isin(r_src, test["src"].to_numpy())
    llm = read_dir(run / "llm" / protocol / "parts").sort_by("src")

    q, cand, score = read_lists(run / "decode" / protocol / f"{metrics['hiea']['primary']}.parquet")
    m = pq.read_table(run / "decode" / protocol / f"{metrics['hiea']['primary']}.match.parquet")
    merged = merge(q, cand, score, m["src"].to_numpy(), m["tgt"].to_numpy(), r_src[~certain], llm["src"].to_numpy(),
                   column_to_numpy(llm["options"]), llm["n_options"].to_numpy(), column_to_numpy(llm["logp"]),
                   fusion)
    llm_top = dict(zip(r_src[~certain].tolist(), merged.cand[rows_of(q, r_src[~certain]), 0].tolist()))
    # information only (test links; nothing is chosen by it): Hits@1 on the routed test sources
    # when the LLM's distribution is fused with the small model's at other weights
    routed_test = np.array([s in gold for s in r_src[~certain].tolist()])
    rs = r_src[~certain][routed_test]
    g_routed = np.array([gold[x] for x in rs.tolist()])
    fusion_sweep = {}
    for w in (0.0, 0.25, 0.5, 0.75, 1.0):
        f = merge(q, cand, score, m["src"].to_numpy(), m["tgt"].to_numpy(), r_src[~certain], llm["src"].to_numpy(),
                  column_to_numpy(llm["options"]), llm["n_options"].to_numpy(), column_to_numpy(llm["logp"]), w)
        fusion_sweep[str(w)] = round(float(np.mean(f.cand[rows_of(q, rs), 0] == g_routed)), 4)
    # the ceiling of llm.candidates C: routed test sources whose gold is in the primary list's top C
    top = cand[rows_of(q, rs)]
    gold_by_depth = {str(d): round(float(np.mean((top[:, :d] == g_routed[:, None]).any(1))), 4)
                     for d in (1, 5, 8, 10, 20, top.shape[1]) if d <= top.shape[1]} if len(rs) else {}
    rng = np.random.default_rng(args.seed)
    pool = r_src[certain & on_test]
    extra_src = np.sort(rng.choice(pool, min(args.extra, len(pool)), replace=False)) if args.extra and len(pool) else pool[:0]
    t0 = time.time()
    extra_pick, extra_fused = (extra_llm_answers(run, cfg, protocol, extra_src, fusion) if len(extra_src)
                               else (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    extra_wall = time.time() - t0
    g_extra = np.array([gold[s] for s in extra_src.tolist()])
    extra_llm_acc = float(np.mean(extra_pick == g_extra)) if len(extra_src) else None
    # the merge's answer there (LLM fused with the small model at the run's weight): what the curve uses
    extra_hiea_acc = float(np.mean(extra_fused == g_extra)) if len(extra_src) else None
    extra_small_acc = float(np.mean(r_ans[rows_of(r_src, extra_src)] == g_extra)) if len(extra_src) else None
    ts = r_src[on_test]
    order = np.argsort(r_prob[on_test], kind="stable")  # least certain first
    small_right = np.array([gold[s] == a for s, a in zip(ts.tolist(), r_ans[on_test].tolist())])[order]
    measured = np.array([s in llm_top for s in ts[order].tolist()])
    llm_right = np.array([llm_top.get(s, -2) == gold[s] for s in ts[order].tolist()])
    n = len(ts)
    eps = manifests["llm"]["stats"]["protocols"][protocol]["entities_per_s"] or float("nan")
    curve = []
    for share in np.linspace(0, 1, 21):
        k = int(round(share * n))
        measured_part = measured[:k]
        if measured_part.all():
            right = llm_right[:k].sum() + small_right[k:].sum()
            kind = "measured"
        else:  # beyond the routed set: the merge changes the small model's accuracy there by what it
            # changed on the extra sample (merge - small), not replaced by the sample's accuracy: the
            # sources just above the threshold are right less often than a random certain one
            j = int(measured_part.sum())
            delta = (extra_hiea_acc - extra_small_acc) if extra_hiea_acc is not None else 0.0
            right = llm_right[:j].sum() + small_right[j:].sum() + (k - j) * delta
            kind = "estimated"
        curve.append({"share_routed": round(float(share), 3), "hits@1": round(float(right / n), 4), "kind": kind,
                      "llm_calls": k, "llm_hours_on_this_cpu": round(k / eps / 3600, 3)})
    h = metrics["hiea"]
    res = {
        "pair": args.pair, "run": str(run), "protocol": protocol,
        "small_model": {name: metrics[name]["hits@1"] for name in cfg.decode.decoders},
        "router": {"test_certain_fraction": route_rep["test"]["certain_fraction"], "test_precision": route_rep["test"]["precision"],
                   "labelled_precision_out_of_fold": route_rep["labelled"]["precision"],
                   "labelled_certain_fraction": route_rep["labelled"]["certain_fraction"],
                   "labelled_sources": route_rep["labelled"]["sources"], "threshold": route_rep["threshold"],
                   "routed_to_llm": route_rep["routed_to_llm"], "wall_s": manifests["route"]["wall_s"]},
        "llm_train": {"trained_in": str(trained_in), "readout": cfg.llm.readout, "validation": history.get("validation", "links"),
                      "valid_examples": history["valid_examples"], "fusion": history.get("fusion"),
                      "examples": history["train_examples"], "valid_acc": history["best"]["valid_acc"],
                      "valid_rank_hits1": history["best"].get("valid_rank_hits1"),
                      "valid_small_acc": history["valid_small_acc"], "wall_s": history["wall_s"],
                      "steps": len(history["curve"]), "s_per_step": round(history["wall_s"] / max(len(history["curve"]), 1), 2)},
        "routed": {"sources": h["routed_test"], "llm_hits@1": h["llm_hits@1_routed"], "small_hits@1": h["small_hits@1_routed"],
                   "hiea_hits@1": h["hiea_hits@1_routed"], "gold_in_prompt": h["gold_in_prompt_routed"],
                   "abstained": h["abstained"], "gold_in_primary_top_c_by_c": gold_by_depth,
                   "llm_answer_letter_histogram": np.bincount(column_to_numpy(llm["logp"]).argmax(1),
                                                              minlength=cfg.llm.candidates + 1).tolist()},
        "hiea": {k: h[k] for k in ("hits@1", "hits@10", "mrr", "precision", "recall", "f1") if k in h},
        "cost": {"llm_calls": h["llm_calls"], "llm_calls_per_routed_entity": 1, "llm_calls_per_certain_entity": 0,
                 "llm_fraction": h["llm_fraction"], "prompt_tokens_mean": h.get("prompt_tokens_mean"),
                 "prompt_tokens_max": h.get("prompt_tokens_max"), "llm_wall_s": h.get("wall_s"),
                 "llm_entities_per_s": h.get("entities_per_s"), "chatea": CHATEA_CALLS},
        "fusion": fusion,
        "routed_hits@1_by_fusion_weight_information_only": fusion_sweep,
        "extra_certain_sample": {"sources": int(len(extra_src)), "llm_hits@1": extra_llm_acc, "hiea_hits@1": extra_hiea_acc,
                                 "small_hits@1": extra_small_acc,
                                 "wall_s": round(extra_wall, 1)},
        "curve": curve,
    }
    out = ROOT / "benchmarks" / "results" / f"hiea_tier_{args.pair}{'-' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps(res, indent=2))
    plot(res, out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in res.items() if k != "curve"}, indent=2))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = res["curve"]
    x = np.array([p["share_routed"] for p in c]) * 100
    y = np.array([p["hits@1"] for p in c])
    meas = np.array([p["kind"] == "measured" for p in c])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(x[meas], y[meas], "o-", color="#36c", label="measured (the run's LLM answers)")
    if (~meas).any():
        last = np.flatnonzero(meas)[-1]
        a.plot(x[last:], y[last:], "o--", color="#36c", alpha=0.5, label="estimated (small model + the merge's change on a sample of certain sources)")
    routed = res["cost"]["llm_fraction"] * 100
    a.axvline(routed, color="red", ls=":", lw=1, label=f"router's choice ({routed:.1f}%)")
    a.axhline(y[0], color="grey", ls=":", lw=1, label=f"small model alone ({y[0]:.3f})")
    a.set_xlabel("share of test sources routed to the LLM (%)")
    a.set_ylabel("merged Hits@1")
    a.set_title(f"HIEA merge, DBP15K {res['pair']}")
    a.legend(fontsize=7)
    b.plot(x, [p["llm_calls"] for p in c], "o-", color="#c63")
    b.set_xlabel("share routed (%)")
    b.set_ylabel("LLM forward passes (1 per routed entity)")
    b2 = b.twinx()
    b2.plot(x, [p["llm_hours_on_this_cpu"] for p in c], alpha=0)
    b2.set_ylabel("hours on this 2-core CPU")
    b.set_title("LLM cost")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
