"""The PNGs a run writes (metrics per decoder, training curves); matplotlib with the Agg backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_metrics(metrics: dict, path: Path) -> None:
    """Hits@1 / Hits@10 / MRR / F1 per decoder, one panel per protocol (the run's metrics.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = list(metrics)
    fig, axes = plt.subplots(1, len(protocols), figsize=(5 * len(protocols), 3.5), squeeze=False)
    for ax, p in zip(axes[0], protocols):
        names = list(metrics[p])
        hits = sorted({k for n in names for k in metrics[p][n] if k.startswith("hits@")}, key=lambda k: int(k[5:]))
        keys = hits[:1] + hits[-1:] if len(hits) > 1 else hits
        keys += ["mrr", "f1"] if hits else ["share_matched"]  # label-free runs: what was matched
        width = 0.8 / len(keys)
        for j, key in enumerate(keys):
            vals = [metrics[p][n].get(key, 0) for n in names]
            ax.bar(np.arange(len(names)) + j * width, vals, width, label=key)
            for x, v in zip(np.arange(len(names)) + j * width, vals):
                ax.text(x, v + 0.01, f"{v:.3f}", ha="center", va="bottom", fontsize=6, rotation=90)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
        ax.set_ylim(0, 1.25)
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_title(p)
        ax.legend(fontsize=7, loc="upper center", ncol=len(keys), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_retriever_curve(initial: dict, history: list[dict], path: Path) -> None:
    """Training loss per step and the best validation MRR per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    offset = 0
    for h in history:
        c = np.array(h.get("curve") or [[0, np.nan]], dtype=float)
        a.plot(c[:, 0] + offset, c[:, 1], lw=0.8, label=f"round {h['round']}")
        offset += c[-1, 0]
    a.set_xlabel("step")
    a.set_ylabel("InfoNCE loss")
    a.legend(fontsize=7)
    mrr = [initial["valid_mrr"]] + [h["best"]["valid_mrr"] for h in history]
    b.plot(range(len(mrr)), mrr, marker="o")
    b.set_xticks(range(len(mrr)), ["base"] + [f"round {h['round']}" for h in history])
    b.set_ylabel("validation MRR")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reranker_curve(history: dict, path: Path) -> None:
    """Listwise loss per step, and validation Hits@1 of the best checkpoint vs the retriever's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    c = np.array(history.get("curve") or [[0, np.nan]], dtype=float)
    a.plot(c[:, 0], c[:, 1], lw=0.8)
    a.set_xlabel("step")
    a.set_ylabel("listwise loss")
    vals = [history["retriever_valid"]["valid_hits@1"], history["best"]["valid_hits@1"]]
    b.bar(["retriever", "reranker"], vals, color=["#999", "#37c"])
    for x, v in enumerate(vals):
        b.text(x, v + 0.01, f"{v:.3f}", ha="center")
    b.set_ylim(0, 1.1)
    b.set_ylabel("validation Hits@1 (top-k lists)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_route(report: dict, path: Path) -> None:
    """Precision of the certain set against its share of the sources (labelled out-of-fold and
    test), one panel per protocol, the chosen threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = list(report["protocols"])
    fig, axes = plt.subplots(1, len(protocols), figsize=(5 * len(protocols), 3.5), squeeze=False)
    for ax, p in zip(axes[0], protocols):
        rep = report["protocols"][p]
        for key, label in (("labelled_curve", "labelled (out-of-fold)"), ("test_curve", "test (evaluation only)")):
            pts = [(c["certain_fraction"], c["precision"]) for c in rep[key] if c["precision"] is not None]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=label)
        ax.axhline(report["target_precision"], color="grey", ls=":", lw=1, label="target precision")
        ax.axvline(1 - rep["llm_fraction"], color="red", ls="--", lw=1, label="chosen: certain share")
        ax.set_xlabel("share of sources answered by the small models")
        ax.set_ylabel("precision of that share")
        ax.set_title(f"route {p}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_llm_curve(history: dict, path: Path) -> None:
    """LoRA + adapter training: loss per step, and validation accuracy of the best checkpoint
    against the small model's on the same examples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    curve = np.asarray(history.get("curve") or [[0, np.nan]], float)
    a.plot(curve[:, 0], curve[:, 1], lw=0.6, alpha=0.5, label="loss")
    if len(curve) >= 10:
        w = max(5, len(curve) // 20)
        a.plot(curve[w - 1 :, 0], np.convolve(curve[:, 1], np.ones(w) / w, mode="valid"), label=f"mean of {w}")
    a.set_xlabel("step")
    a.set_title("answer-token cross-entropy")
    a.legend(fontsize=7)
    best = history.get("best", {})
    vals = [history.get("valid_small_acc", 0.0), best.get("valid_rank_hits1", best.get("valid_acc", 0.0))]
    b.bar(["small model", "LLM (best ckpt)"], vals, color=["#999", "#36c"])
    for x, v in enumerate(vals):
        b.text(x, v + 0.01, f"{v:.3f}", ha="center", fontsize=8)
    b.set_ylim(0, 1.1)
    b.set_title("validation Hits@1 (same examples)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_verbalizer_curve(history: dict, path: Path) -> None:
    """LoRA tuning of the LLM verbalizer: loss per step, and the best / last checkpoints'
    validation next-token accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    curve = np.asarray(history.get("curve") or [[0, np.nan]], float)
    a.plot(curve[:, 0], curve[:, 1], lw=0.8, label="loss")
    a.set_xlabel("step")
    a.set_title("description next-token cross-entropy")
    names, vals = ["best", "last"], [history.get(k, {}).get("valid_token_acc", 0.0) for k in ("best", "last")]
    b.bar(names, vals, color=["#36c", "#999"])
    for x, v in enumerate(vals):
        b.text(x, v + 0.01, f"{v:.3f}", ha="center", fontsize=8)
    b.set_ylim(0, 1.1)
    b.set_title("validation next-token accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
