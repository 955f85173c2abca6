"""Template vs LLM verbalization (issue #16) on a fixed seeded subset of a real pair, same encoder.

    .venv/bin/python benchmarks/llm_verbalize.py --data ../shared/datasets/DBP15K/zh_en \
        --out runs/verbalize-zh_en [--sources 1500 --others 1500 --throughput-rows 64]

1. Ingests the pair (the pipeline's ingest stage) into OUT/run.
2. Subset: ``--sources`` test links (seeded); targets = their gold + ``--others`` other KG2
   entities (seeded). Each entity's facts come from the whole KG (the verbalize stage's contexts).
3. Generates one description per subset entity with the verbalize stage's own Ray Data chain
   (``ops.verbalize.generate_parts``: actor pool, transformers greedy decoding, resumable parts in
   OUT/parts: a killed benchmark continues where it stopped), SmolLM2-135M-Instruct by default.
4. Texts: template (the stage's template), llm (the description), llm+template; each encoded with
   the same encoder (default all-MiniLM-L6-v2, zero-shot); every source ranked against the 3,000
   targets by cosine; Hits@1, Hits@10, MRR.
5. Generation throughput on the first ``--throughput-rows`` entities: 1 worker (all threads) vs
   2 workers (one thread each): entities/s and new tokens/s per worker (its generate() seconds)
   and overall (wall, actor start included).
6. What the generator got wrong, measured: empty generations, the entity's name dropped, facts'
   names kept, words not in the prompt; worst-ranked examples go to OUT/examples.md (dataset
   content: not in the repo).

7. ``--finetune-links N`` (a second invocation, after 1-6): N seeded train links and 100 valid
   links get LLM texts too; for each text mode the retriever is fine-tuned on them with the
   train stage's own job (``train.retriever.train_retriever``: Ray Train, InfoNCE, mined hard
   negatives, settings of benchmarks/configs/dbp15k-retriever.yaml) and the same subset is scored
   again with the fine-tuned encoder.

Writes benchmarks/results/llm_verbalize_<pair>.json and .png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from hiea_ray.config import load_config  # noqa: E402
from hiea_ray.core.describe import describe_body  # noqa: E402
from hiea_ray.core.verbalize import build_contexts, verbalize_row  # noqa: E402
from hiea_ray.io import finished_ids, read_dir  # noqa: E402
from hiea_ray.kg.model import KGPair  # noqa: E402
from hiea_ray.ops.verbalize import final_text, generate_parts  # noqa: E402
from hiea_ray.stages.verbalize import generation_stats, write_contexts  # noqa: E402

log = logging.getLogger("hiea_ray")


def subset(pair: KGPair, n_src: int, n_other: int, seed: int):
    test = pair.links_of("test")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(test.num_rows, min(n_src, test.num_rows), replace=False))
    src, gold = test["src"].to_numpy()[pick], test["tgt"].to_numpy()[pick]
    ent = pair.entities
    kg2 = ent.filter(pc.equal(ent["kg"], 2))["id"].to_numpy()
    rest = np.setdiff1d(kg2, gold)
    others = np.sort(rng.choice(rest, min(n_other, len(rest)), replace=False))
    return src, gold, np.sort(np.concatenate([gold, others]))


def generate(contexts: pa.Table, out: Path, cfg, model: str) -> tuple[pa.Table, float, int]:
    """Resumable generation of ``contexts`` into out/parts (the stage's chain)."""
    write_contexts(contexts, out / "contexts", cfg.llm.rows_per_batch)
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    done = finished_ids(parts)
    t0 = time.time()
    if len(done) < contexts.num_rows:
        log.info("generating %d of %d descriptions", contexts.num_rows - len(done), contexts.num_rows)
        generate_parts(out / "contexts", parts, cfg, model, None, done)
    return read_dir(parts), time.time() - t0, contexts.num_rows - len(done)


def ranks(encoder, src_texts, tgt_texts, gold_pos, batch) -> np.ndarray:
    s = encoder.encode(src_texts, batch)
    t = encoder.encode(tgt_texts, batch)
    sim = s @ t.T  # 1,500 x 3,000: an evaluation of a fixed subset, not the alignment path
    g = sim[np.arange(len(gold_pos)), gold_pos]
    return 1 + (sim > g[:, None]).sum(1)


def metrics(r: np.ndarray) -> dict:
    return {"hits@1": float(np.mean(r <= 1)), "hits@10": float(np.mean(r <= 10)), "mrr": float(np.mean(1.0 / r))}


_WORD = re.compile(r"\w+", re.UNICODE)


def faults(table: pa.Table, names: dict[int, str]) -> dict:
    """What the generator did with the facts it was shown (on every generated text)."""
    gen = table["generated"].to_pylist()
    facts = table["facts"].to_pylist()
    ids = table["id"].to_pylist()
    name_kept, novel, nbr_kept, n_nbr = [], [], 0, 0
    for i, g, f in zip(ids, gen, facts):
        gl = (g or "").lower()
        name = (names.get(i) or "").lower()
        name_kept.append(bool(name) and name in gl)
        prompt_words = set(_WORD.findall(describe_body(names.get(i) or "", f).lower()))
        words = _WORD.findall(gl)
        novel.append(sum(w not in prompt_words for w in words) / max(len(words), 1))
        for fact in f:
            for v in fact.split(": ", 1)[-1].split(", "):
                n_nbr += 1
                nbr_kept += v.lower() in gl
    loops = sum(1 for g in gen if len(g.split()) >= 8 and len(set(g.split())) <= len(g.split()) / 2)
    return {"empty": int(sum(1 for g in gen if not g)), "name_kept_share": round(float(np.mean(name_kept)), 3),
            "repetition_loops": int(loops),  # 8+ words, each distinct word used twice or more on average
            "fact_values_kept_share": round(nbr_kept / max(n_nbr, 1), 3),
            "novel_word_share_mean": round(float(np.mean(novel)), 3)}


def mode_texts(contexts: pa.Table, gen: dict[int, str], cfg) -> dict[str, dict[int, str]]:
    """The three texts of every entity, from the same facts."""
    texts = {"template": {}, "llm": {}, "llm+template": {}}
    for r in contexts.to_pylist():
        i, t = r["id"], verbalize_row(r, cfg)
        texts["template"][i] = t
        texts["llm"][i] = final_text("llm", r["name"], gen[i], t)
        texts["llm+template"][i] = final_text("llm+template", r["name"], gen[i], t)
    return texts


def finetune(pair, contexts_all, src, gold, tgt, out: Path, cfg, model: str, args) -> dict:
    """Retriever fine-tuning per text mode on N train links (+100 valid links), then the subset again."""
    import ray

    from hiea_ray.core.encoder import Encoder
    from hiea_ray.ops.data import init_ray
    from hiea_ray.train.retriever import train_retriever

    rng = np.random.default_rng(args.seed + 1)
    links = pair.links
    parts = []
    for split, n in (("train", args.finetune_links), ("valid", 100)):
        t = links.filter(pc.equal(links["split"], split))
        parts.append(t.take(np.sort(rng.choice(t.num_rows, min(n, t.num_rows), replace=False))))
    sub_links = pa.concat_tables(parts)
    ids = np.unique(np.concatenate([sub_links["src"].to_numpy(), sub_links["tgt"].to_numpy()]))
    full = build_contexts(pair)
    ctx_train = full.filter(pc.is_in(full["id"], value_set=pa.array(ids)))
    init_ray(cfg)
    table, wall, n = generate(ctx_train, out / "finetune", cfg.verbalize, model)
    log.info("fine-tune texts: %d generated in %.0f s", n, wall)
    gen = dict(zip(table["id"].to_pylist(), table["generated"].to_pylist()))
    sub = read_dir(out / "parts")
    gen.update(zip(sub["id"].to_pylist(), sub["generated"].to_pylist()))
    both = pa.concat_tables([ctx_train, contexts_all.filter(pc.invert(pc.is_in(contexts_all["id"], value_set=pa.array(ids))))])
    texts = mode_texts(both, gen, cfg.verbalize)
    rcfg = load_config(str(ROOT / "benchmarks" / "configs" / "dbp15k-retriever.yaml"), args.set)
    pos = {t: j for j, t in enumerate(tgt.tolist())}
    gold_pos = np.array([pos[g] for g in gold.tolist()])
    res = {"train_links": int(np.sum(sub_links["split"].to_numpy(zero_copy_only=False) == "train")), "valid_links": 100,
           "texts_generated": n, "generation_wall_s": round(wall, 1), "metrics": {}}
    for mode, tx in texts.items():
        ids_sorted = sorted(tx)
        ent_kg = dict(zip(both["id"].to_pylist(), both["kg"].to_pylist()))
        ttable = pa.table({"id": pa.array(ids_sorted, pa.int64()), "kg": pa.array([ent_kg[i] for i in ids_sorted], pa.int8()),
                           "name": [""] * len(ids_sorted), "text": [tx[i] for i in ids_sorted]})
        d = out / "finetune" / mode.replace("+", "_")
        t0 = time.time()
        if not (d / "model").is_dir():
            train_retriever(rcfg, ttable, sub_links, d)
        enc = Encoder(str(d / "model"), cfg.embed.pooling, cfg.embed.max_length, amp="none")
        r = ranks(enc, [tx[i] for i in src.tolist()], [tx[i] for i in tgt.tolist()], gold_pos, cfg.embed.batch_size)
        res["metrics"][mode] = {**metrics(r), "train_wall_s": round(time.time() - t0, 1)}
        log.info("fine-tuned %s: %s", mode, res["metrics"][mode])
    ray.shutdown()
    return res


def throughput(contexts: pa.Table, out: Path, cfg, model: str, rows: int) -> dict:
    """1 worker x all threads vs 2 workers x 1 thread on the same first ``rows`` entities."""
    import ray

    res = {}
    sub = contexts.slice(0, rows)
    for label, actors, threads in (("1_worker", 1, os.cpu_count()), ("2_workers", 2, 1)):
        # logical CPUs below the node's count: Ray Data's read / write tasks need one beside the actors
        c = replace(cfg, llm=replace(cfg.llm, num_actors=actors, torch_threads=threads, cpus_per_actor=0.5,
                                     rows_per_batch=max(1, rows // (2 * actors))))
        d = out / f"throughput-{label}"
        import shutil

        shutil.rmtree(d, ignore_errors=True)
        table, wall, n = generate(sub, d, c, model)
        st = generation_stats(table, wall, n)
        res[label] = {"actors": actors, "torch_threads_per_actor": threads, "rows": n, "wall_s": round(wall, 1),
                      "entities_per_s_wall": st["entities_per_s"], "per_worker": st["per_worker"],
                      "tokens_per_s_total": round(sum(w["tokens_per_s"] for w in st["per_worker"].values()), 1),
                      "entities_per_s_total": round(sum(w["entities_per_s"] for w in st["per_worker"].values()), 2)}
        log.info("throughput %s: %s", label, res[label])
    ray.shutdown()
    return res


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    modes = list(res["metrics"])
    keys = ["hits@1", "hits@10", "mrr"]
    w = 0.8 / len(keys)
    for j, k in enumerate(keys):
        vals = [res["metrics"][m][k] for m in modes]
        a.bar(np.arange(len(modes)) + j * w, vals, w, label=k)
        for x, v in zip(np.arange(len(modes)) + j * w, vals):
            a.text(x, v + 0.01, f"{v:.3f}", ha="center", fontsize=7)
    ft = (res.get("finetuned") or {}).get("metrics") or {}
    if ft:
        vals = [ft[m]["hits@1"] for m in modes]
        a.scatter(np.arange(len(modes)), vals, marker="*", s=60, color="k", zorder=3,
                  label=f"hits@1 after fine-tuning ({res['finetuned']['train_links']} links)")
    a.set_xticks(np.arange(len(modes)) + w, modes)
    a.set_ylim(0, 1.1)
    a.set_title(f"{res['pair']}: {res['sources']} sources vs {res['targets']} targets, {res['encoder']} zero-shot",
                fontsize=8)
    a.legend(fontsize=7, loc="lower right")
    tp = res.get("throughput") or {}  # absent until measured (--throughput-only)
    labels = list(tp)
    ents = [tp[k]["entities_per_s_total"] for k in labels]
    toks = [tp[k]["tokens_per_s_total"] for k in labels]
    b.bar(np.arange(len(labels)) - 0.2, ents, 0.4, label="entities/s (sum of workers)")
    b2 = b.twinx()
    b2.bar(np.arange(len(labels)) + 0.2, toks, 0.4, color="#c63", label="new tokens/s")
    b.set_xticks(np.arange(len(labels)), labels)
    b.set_ylabel("entities/s")
    b2.set_ylabel("new tokens/s")
    b.set_title(f"generation throughput, {res['model']} on {os.cpu_count()} CPUs", fontsize=8)
    for x, (e, t) in enumerate(zip(ents, toks)):
        b.text(x - 0.2, e, f"{e:.2f}", ha="center", va="bottom", fontsize=7)
        b2.text(x + 0.2, t, f"{t:.0f}", ha="center", va="bottom", fontsize=7)
    h1, l1 = b.get_legend_handles_labels()
    h2, l2 = b2.get_legend_handles_labels()
    b.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "configs" / "dbp15k-template.yaml"))
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--sources", type=int, default=1500)
    ap.add_argument("--others", type=int, default=1500)
    ap.add_argument("--throughput-rows", type=int, default=96, help="0: skip the 1 vs 2 worker measurement")
    ap.add_argument("--throughput-only", action="store_true",
                    help="measure only throughput, adding it to an existing results file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default=None)
    ap.add_argument("--faults-only", action="store_true", help="recount what the generator got wrong")
    ap.add_argument("--finetune-links", type=int, default=0,
                    help="fine-tune the retriever per text mode on N train links (adds to an existing results file)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from hiea_ray.core.encoder import Encoder, resolve_model, set_threads
    from hiea_ray.core.llm import resolve_llm
    from hiea_ray.ops.data import init_ray
    from hiea_ray.pipeline import Pipeline

    out = Path(args.out)
    cfg = load_config(args.config, ["verbalize.mode=llm", *args.set])
    pair_name = Path(args.data).name
    Pipeline(cfg, args.data, out / "run").run_all(until="ingest")
    pair = KGPair.read(out / "run" / "ingest")
    src, gold, tgt = subset(pair, args.sources, args.others, args.seed)
    keep = np.concatenate([src, tgt])
    contexts = build_contexts(pair)
    contexts = contexts.filter(pc.is_in(contexts["id"], value_set=pa.array(keep)))
    model = resolve_llm(cfg.verbalize.llm.model)
    init_ray(cfg)
    res_path = Path(args.results or ROOT / "benchmarks" / "results" / f"llm_verbalize_{pair_name}.json")
    if args.finetune_links:
        res = json.loads(res_path.read_text())
        res["finetuned"] = finetune(pair, contexts, src, gold, tgt, out, cfg, model, args)
        res_path.write_text(json.dumps(res, indent=2))
        plot(res, res_path.with_suffix(".png"))
        print(json.dumps(res["finetuned"], indent=2))
        return 0
    if args.faults_only:  # the fault counts again, from the generated parts (no generation)
        res = json.loads(res_path.read_text())
        res["faults"] = faults(read_dir(out / "parts"), dict(zip(contexts["id"].to_pylist(), contexts["name"].to_pylist())))
        res_path.write_text(json.dumps(res, indent=2))
        print(json.dumps(res["faults"], indent=2))
        return 0
    if args.throughput_only:
        res = json.loads(res_path.read_text())
        res["throughput"] = throughput(contexts, out, cfg.verbalize, model, args.throughput_rows)
        res_path.write_text(json.dumps(res, indent=2))
        plot(res, res_path.with_suffix(".png"))
        print(json.dumps(res["throughput"], indent=2))
        return 0
    res = {"pair": pair_name, "sources": len(src), "targets": len(tgt), "seed": args.seed,
           "model": cfg.verbalize.llm.model if cfg.verbalize.llm.model != "default" else "SmolLM2-135M-Instruct",
           "encoder": cfg.embed.model if cfg.embed.model != "default" else "all-MiniLM-L6-v2",
           "verbalize": {k: v for k, v in cfg.verbalize.__dict__.items() if k != "llm"},
           "verbalize_llm": {k: getattr(cfg.verbalize.llm, k) for k in ("prompt_tokens", "max_new_tokens",
                                                                         "batch_size_gen")}}
    t0 = time.time()
    table, wall, n = generate(contexts, out, cfg.verbalize, model)
    res["generation"] = {"wall_s": round(wall, 1), **generation_stats(table, wall, n)}
    log.info("generation: %s", res["generation"])
    import ray

    ray.shutdown()
    # texts of the three modes, from the same facts
    gen = dict(zip(table["id"].to_pylist(), table["generated"].to_pylist()))
    names = dict(zip(contexts["id"].to_pylist(), contexts["name"].to_pylist()))
    texts = mode_texts(contexts, gen, cfg.verbalize)
    set_threads(os.cpu_count())
    enc = Encoder(resolve_model(cfg.embed.model), cfg.embed.pooling, cfg.embed.max_length, amp="none")
    pos = {t: j for j, t in enumerate(tgt.tolist())}
    gold_pos = np.array([pos[g] for g in gold.tolist()])
    res["metrics"], rk = {}, {}
    for mode, tx in texts.items():
        rk[mode] = ranks(enc, [tx[i] for i in src.tolist()], [tx[i] for i in tgt.tolist()], gold_pos, cfg.embed.batch_size)
        res["metrics"][mode] = metrics(rk[mode])
        log.info("%s: %s", mode, res["metrics"][mode])
    res["words_mean"] = {m: round(float(np.mean([len(t.split()) for t in tx.values()])), 1) for m, tx in texts.items()}
    res["faults"] = faults(table, names)
    worse = rk["llm"] - rk["template"]
    res["llm_worse_than_template_share"] = round(float(np.mean(worse > 0)), 3)
    res["llm_better_than_template_share"] = round(float(np.mean(worse < 0)), 3)
    res_path.parent.mkdir(parents=True, exist_ok=True)
    res_path.write_text(json.dumps(res, indent=2))
    # the worst cases, beside the run (dataset content stays out of the repo)
    lines = ["# Sources whose gold fell furthest with the LLM text (rank template -> llm)", ""]
    fact_of = dict(zip(table["id"].to_pylist(), table["facts"].to_pylist()))
    for j in np.argsort(-worse)[:15]:
        s, g = int(src[j]), int(gold[j])
        lines += [f"## {names[s]} -> gold {names[g]} (rank {rk['template'][j]} -> {rk['llm'][j]})", "",
                  "Source facts: " + "; ".join(fact_of[s]), "", f"Source LLM: {gen[s]}", "",
                  "Gold facts: " + "; ".join(fact_of[g]), "", f"Gold LLM: {gen[g]}", ""]
    (out / "examples.md").write_text("\n".join(lines))
    if args.throughput_rows > 0:
        init_ray(cfg)
        res["throughput"] = throughput(contexts, out, cfg.verbalize, model, args.throughput_rows)
    res["wall_s"] = round(time.time() - t0, 1)
    res_path.write_text(json.dumps(res, indent=2))
    plot(res, res_path.with_suffix(".png"))
    print(json.dumps({k: res[k] for k in ("metrics", "generation", "faults")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
