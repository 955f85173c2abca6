"""evaluate: Hits@k / MRR of every decoder's lists and P/R/F1 of its 1-to-1 output, per protocol.

With the LLM tier on, a decoder "hiea" (``core.hiea.merge``: certain sources keep the small
models' answers, uncertain ones the LLM's) with the LLM and the small model on the routed test
sources and the tier's cost (calls, prompt tokens, wall time).

Output ``metrics.json`` (decoder -> metrics of the first protocol, every protocol in full under
``all_protocols``; also copied to the run root) and ``metrics.png``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

import numpy as np

from hiea_ray.core.metrics import decoder_metrics, label_free_metrics, metrics_document
from hiea_ray.io import column_to_numpy, read_lists, rows_of
from hiea_ray.plots import plot_metrics
from hiea_ray.run import RunContext, hiea_merged
from hiea_ray.stages.base import StageDef


def run(ctx: RunContext, tmp: Path) -> dict:
    cfg = ctx.cfg
    test = ctx.pair().links_of("test")
    gold_src, gold_tgt = test["src"].to_numpy(), test["tgt"].to_numpy()
    metrics: dict = {}
    label_free = len(gold_src) == 0  # data.test_links: none
    for protocol in cfg.evaluate.protocols:
        d = ctx.run / "decode" / protocol
        for name in cfg.decode.decoders:
            q, cand, _ = read_lists(d / f"{name}.parquet")
            match = pq.read_table(d / f"{name}.match.parquet")
            if label_free:
                metrics.setdefault(protocol, {})[name] = label_free_metrics(q, match["src"].to_numpy(),
                                                                            match["score"].to_numpy())
                continue
            metrics.setdefault(protocol, {})[name] = decoder_metrics(
                q, cand, match["src"].to_numpy(), match["tgt"].to_numpy(), gold_src, gold_tgt, cfg.evaluate.hits_at
            )
        if cfg.llm.enabled:
            if label_free:
                h = hiea_merged(ctx, protocol)
                metrics[protocol]["hiea"] = {**label_free_metrics(h.q, h.merged.match_src),
                                             "routed": int(len(h.uncertain)), "abstained": int(len(h.merged.abstained))}
            else:
                metrics[protocol]["hiea"] = hiea_metrics(ctx, protocol, gold_src, gold_tgt)
    decoders = cfg.decode.decoders + (["hiea"] if cfg.llm.enabled else [])
    doc = metrics_document(metrics, cfg.retrieve.k, decoders, cfg.evaluate.protocols)
    if label_free:
        doc["label_free"] = ("no gold test links (data.test_links: none): the figures are label-free; "
                             "RUN/alignment/summary.json has the estimated precision of the exported links")
    (tmp / "metrics.json").write_text(json.dumps(doc, indent=2, sort_keys=True))
    plot_metrics(metrics, tmp / "metrics.png")
    return {"rows": len(gold_src)}


def hiea_metrics(ctx: RunContext, protocol: str, gold_src, gold_tgt) -> dict:
    """The merged decoder's metrics, the LLM and the small model on the routed test sources, and
    the LLM tier's cost."""
    cfg = ctx.cfg
    h = hiea_merged(ctx, protocol)
    primary, q, cand, m, llm, uncertain, fusion = h.primary, h.q, h.cand, h.merged, h.llm, h.uncertain, h.fusion
    out = decoder_metrics(q, m.cand, m.match_src, m.match_tgt, gold_src, gold_tgt, cfg.evaluate.hits_at)
    gold = dict(zip(gold_src.tolist(), gold_tgt.tolist()))
    llm_src = llm["src"].to_numpy()
    on_test = np.array([s in gold for s in llm_src.tolist()], bool)
    g = np.array([gold.get(s, -2) for s in llm_src.tolist()])
    small_top1 = cand[rows_of(q, llm_src), 0]
    hiea_top1 = m.cand[rows_of(q, llm_src), 0]
    stats = json.loads((ctx.run / "llm" / "manifest.json").read_text())["stats"]["protocols"][protocol] \
        if (ctx.run / "llm" / "manifest.json").is_file() else {}
    out.update({
        "primary": primary, "fusion": fusion,
        "sources": int(len(q)), "routed": int(len(uncertain)), "llm_fraction": round(len(uncertain) / max(len(q), 1), 4),
        "routed_test": int(on_test.sum()),
        "llm_hits@1_routed": float(np.mean(m.llm_pick[on_test] == g[on_test])) if on_test.any() else None,
        "small_hits@1_routed": float(np.mean(small_top1[on_test] == g[on_test])) if on_test.any() else None,
        "hiea_hits@1_routed": float(np.mean(hiea_top1[on_test] == g[on_test])) if on_test.any() else None,
        "gold_in_prompt_routed": float(np.mean((column_to_numpy(llm["options"])[on_test] == g[on_test, None]).any(1)))
        if on_test.any() else None,
        "abstained": int(len(m.abstained)),
        "llm_calls": int(len(llm_src)),
        **{k: stats[k] for k in ("prompt_tokens_mean", "prompt_tokens_max", "wall_s", "entities_per_s") if k in stats},
    })
    return out


def publish(ctx: RunContext) -> dict:
    """metrics.json to the run root; returns it."""
    src = ctx.run / "evaluate" / "metrics.json"
    dst = ctx.run / "metrics.json"
    if not dst.is_file() or dst.read_bytes() != src.read_bytes():
        shutil.copy(src, dst)
    return json.loads(src.read_text())


STAGE = StageDef(name="evaluate", body=run, reads=("decode", "route", "llm"),
                 config=("evaluate", "llm.enabled", "llm.fusion", "route.primary"), publish=publish)
