"""The HIEA LLM itself: option tokens and their log-probabilities in one forward pass, the slot
readout (``ScoreHead``), the knowledge adapter (``KnowledgeAdapter``, ``inject``), ``HieaLLM``,
the prompt format, and loading a trained tier (``load_hiea_llm``, ``attach_hiea``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hiea_ray.core.prompt import LETTERS, SLOT
from hiea_ray.core.llm.tokens import load_tokenizer


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
