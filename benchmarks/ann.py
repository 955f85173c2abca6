"""Approximate retrieval against exact search: recall@k, build and query time, memory.

    .venv/bin/python benchmarks/ann.py --run runs/scale-folder --run runs/scale-1e6

For each run (an `embed` stage output: KG1 vectors are the queries, KG2 vectors the base) and
each index of the table (the `retrieve.index` factory strings the retrieve stage takes, with
their search settings), on 2 FAISS threads:
- build: wall time of train + add, the index's serialized size and the process RSS it added;
- query: wall time of top-k for --time-queries KG1 vectors (drawn at random), as queries/s and
  the projected time for every KG1 entity (searches are independent batches: linear in queries);
- recall@k and recall@1 of the exact top-k on --recall-queries other KG1 vectors (exact = Flat).
Writes benchmarks/results/ann.json (after every row: a killed run keeps what it measured) and
ann.png (recall@k against projected query time, one panel per n).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from hiea_ray.config import RetrieveConfig  # noqa: E402
from hiea_ray.core.retrieval import build_index, factory_string  # noqa: E402
from hiea_ray.io import column_to_numpy  # noqa: E402


def probes_table(n: int, d: int) -> list[dict]:
    """``--table probes``: exact and the auto IVF index probed ever wider (what recall@k costs on
    real vectors, whose neighbours spread over more lists than a random encoder's)."""
    nlist = int(factory_string(RetrieveConfig(index="auto", exact_max_targets=0, gpu="no"), n)[3:].split(",")[0])
    return [{"index": "Flat"}] + [{"index": f"IVF{nlist},Flat", "ivf_nprobe": p} for p in (64, 128, 256, 512)]


def hnsw_table(n: int, d: int) -> list[dict]:
    """``--table hnsw``: exact and HNSW32 searched ever wider (efSearch >= k)."""
    return [{"index": "Flat"}] + [{"index": "HNSW32", "hnsw_ef_search": e} for e in (128, 256, 512)]


def table(n: int, d: int) -> list[dict]:
    """The indexes measured for a base of n d-dim vectors (nlist ~ 4 sqrt(n)): exact; IVF with
    full vectors, with 8-bit scalar-quantized vectors (4x smaller) and with product-quantized
    ones (d/2 bytes); HNSW. One build per index; the search settings vary on it."""
    nlist = int(factory_string(RetrieveConfig(index="auto", exact_max_targets=0, gpu="no"), n)[3:].split(",")[0])
    rows = [{"index": "Flat"}]
    rows += [{"index": f"IVF{nlist},Flat", "ivf_nprobe": p} for p in (8, 16, 32, 64)]
    rows += [{"index": "HNSW32", "hnsw_ef_search": e} for e in (64, 128, 256)]
    rows += [{"index": f"IVF{nlist},SQ8", "ivf_nprobe": p} for p in (32, 64)]
    rows += [{"index": f"IVF{nlist},PQ{d // 2}", "ivf_nprobe": 64}]
    return rows


def rss() -> int:
    return psutil.Process().memory_info().rss


def recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    hit = sum(len(np.intersect1d(f[:k], e[:k])) for f, e in zip(found, exact))
    return hit / (len(exact) * k)


def load_vectors(parts: Path) -> tuple[np.ndarray, np.ndarray]:
    """(KG1 vectors, KG2 vectors) of an embed stage, id order, one part file at a time (peak
    memory ~ the vectors themselves, not the whole table twice)."""
    import pyarrow.parquet as pq

    files = sorted(parts.glob("*.parquet"))
    meta = [pq.read_table(f, columns=["id", "kg"]) for f in files]
    ids = np.concatenate([m["id"].to_numpy() for m in meta])
    kg = np.concatenate([m["kg"].to_numpy() for m in meta])
    d = pq.ParquetFile(files[0]).schema_arrow.field("embedding").type.list_size
    order = np.argsort(ids, kind="stable")
    pos = np.empty(len(ids), np.int64)
    pos[order] = np.arange(len(ids))  # row of each stored vector in id order
    out = {g: np.empty((int((kg == g).sum()), d), np.float32) for g in (1, 2)}
    rank = {g: np.cumsum(kg[order] == g) - 1 for g in (1, 2)}  # id-order rank within its KG
    at = 0
    for f, m in zip(files, meta):
        v = column_to_numpy(pq.read_table(f, columns=["embedding"])["embedding"]).astype(np.float32, copy=False)
        rows = pos[at : at + len(v)]
        for g in (1, 2):
            sel = kg[at : at + len(v)] == g
            out[g][rank[g][rows[sel]]] = v[sel]
        at += len(v)
    return out[1], out[2]


def measure_run(run: Path, args, out: list, write) -> None:
    q_all, base = load_vectors(run / "embed" / "parts")
    gc.collect()
    n, d = base.shape
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(q_all))
    rq = np.ascontiguousarray(q_all[pick[: args.recall_queries]])
    tq = np.ascontiguousarray(q_all[pick[args.recall_queries : args.recall_queries + args.time_queries]])
    k = args.k
    print(f"{run}: {len(q_all):,} queries x {n:,} base, {d}-dim; recall on {len(rq):,}, timing on {len(tq):,}",
          flush=True)
    exact = None
    done = {(r["n"], r["factory"], r.get("ivf_nprobe"), r.get("hnsw_ef_search")) for r in out}
    groups: dict[str, list[dict]] = {}
    for spec in {"probes": probes_table, "hnsw": hnsw_table}.get(args.table, table)(n, d):
        groups.setdefault(spec["index"], []).append(spec)
    for name, specs in groups.items():  # one build per index, its search settings varied
        todo = [sp for sp in specs if (n, factory_string(RetrieveConfig(index=name), n), sp.get("ivf_nprobe"),
                                       sp.get("hnsw_ef_search")) not in done]
        if not todo and name != "Flat":
            continue
        cfg = RetrieveConfig(k=k, gpu="no", index=name)
        gc.collect()
        r0 = rss()
        t0 = time.perf_counter()
        index = build_index(base, cfg)
        build_s = time.perf_counter() - t0
        added = rss() - r0
        size = faiss.serialize_index(index).nbytes
        for spec in specs:
            if "ivf_nprobe" in spec:
                faiss.extract_index_ivf(index).nprobe = spec["ivf_nprobe"]
            if "hnsw_ef_search" in spec:
                faiss.downcast_index(index).hnsw.efSearch = spec["hnsw_ef_search"]
            t0 = time.perf_counter()
            index.search(tq, k)
            query_s = time.perf_counter() - t0
            _, found = index.search(rq, k)
            if name == "Flat":
                exact = found
            if spec not in todo:
                continue
            row = {
                "n": n, "queries": len(q_all), "dim": d, "k": k, **spec,
                "factory": factory_string(cfg, n),
                "build_s": round(build_s, 2),
                "index_mib": round(size / 2**20, 1),
                "rss_added_mib": round(added / 2**20, 1),
                "query_per_s": round(len(tq) / query_s, 1),
                "all_queries_s": round(len(q_all) * query_s / len(tq), 1),
                f"recall@{k}": round(recall(found, exact, k), 4),
                "recall@1": round(float(np.mean(found[:, 0] == exact[:, 0])), 4),
            }
            out.append(row)
            write()
            print(json.dumps(row), flush=True)
        del index


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({r["n"] for r in rows})
    fig, axes = plt.subplots(1, len(ns), figsize=(5.5 * len(ns), 4), squeeze=False)
    for ax, n in zip(axes[0], ns):
        sub = [r for r in rows if r["n"] == n]
        k = sub[0]["k"]
        for fam, color in (("Flat", "black"), ("IVF", "tab:blue"), ("HNSW", "tab:green"), ("SQ8", "tab:orange"),
                           ("PQ", "tab:red")):
            pts = [r for r in sub if family(r["factory"]) == fam]
            if not pts:
                continue
            for r in pts:
                ax.scatter(r["all_queries_s"] + r["build_s"], r[f"recall@{k}"], color=color)
                ax.annotate(r["factory"].replace(",", " ") + _setting(r), (r["all_queries_s"] + r["build_s"],
                            r[f"recall@{k}"]), fontsize=6)
            ax.scatter([], [], color=color, label=fam)
        ax.set_xscale("log")
        ax.set_xlabel(f"build + top-{k} of all {sub[0]['queries']:,} queries (s, 2 cores)")
        ax.set_ylabel(f"recall@{k} of exact top-{k}")
        ax.set_title(f"{n:,} base vectors, {sub[0]['dim']}-dim")
        ax.axhline(0.95, color="grey", lw=0.5, ls="--")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def family(factory: str) -> str:
    if factory == "Flat":
        return "Flat"
    for f in ("HNSW", "SQ8", "PQ"):
        if f in factory:
            return f
    return "IVF"


def _setting(r: dict) -> str:
    if r.get("ivf_nprobe"):
        return f" p{r['ivf_nprobe']}"
    if r.get("hnsw_ef_search"):
        return f" ef{r['hnsw_ef_search']}"
    return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", required=True, help="a run folder with an embed stage (repeatable)")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--recall-queries", type=int, default=2000)
    ap.add_argument("--time-queries", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--table", choices=["all", "probes", "hnsw"], default="all",
                    help="all: every index family; probes: exact and the auto IVF index at nprobe 64..512; "
                         "hnsw: exact and HNSW32 at efSearch 128..512")
    ap.add_argument("--result", default=str(ROOT / "benchmarks" / "results" / "ann.json"))
    args = ap.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    result = Path(args.result)
    doc = json.loads(result.read_text()) if result.is_file() else {}
    rows = doc.get("rows", [])

    def write():
        result.write_text(json.dumps({"k": args.k, "threads": args.threads, "cpu": os.cpu_count(),
                                      "recall_queries": args.recall_queries, "time_queries": args.time_queries,
                                      "rows": rows}, indent=1))

    for run in args.run:
        measure_run(Path(run), args, rows, write)
    write()
    plot(rows, result.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
