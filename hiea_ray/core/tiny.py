"""Tiny randomly initialised encoder for tests and scale benchmarks.

``build_tiny_encoder(folder, corpus)`` builds a small BERT-style WordPiece tokenizer for
``corpus`` with the ``tokenizers`` library (BertNormalizer: lowercase + strip accents;
BertPreTokenizer: whitespace/punctuation split; [PAD] [UNK] [CLS] [SEP] [MASK];
``[CLS] $A [SEP]`` template), a randomly initialised ``BertModel`` from
``torch.manual_seed(seed)``, and saves both with ``save_pretrained`` into ``folder``: a normal HF
model folder that ``hiea_ray.core.encoder.Encoder(model=folder)`` loads. No network, no
downloaded weights.

Deterministic: the same corpus (in any order) and arguments give byte-identical files. That is
why the vocabulary is chosen here rather than by ``tokenizers.trainers.WordPieceTrainer``: that
trainer numbers the ``##`` continuation characters in hash-map order, which changes how merge
ties are broken, so its vocabulary differs from one process to the next on the same corpus.
Here the vocabulary is: the special tokens, every character and ``##`` character of the corpus,
then the word prefixes and ``##`` word suffixes that save the most pieces over the corpus
(count x (length - 1), ties by token), up to ``vocab_size``. WordPiece's greedy longest-match
encoding only needs that token set.

The vectors carry no meaning beyond shared word pieces: use this encoder to test plumbing and to
time the pipeline at scale, never to judge alignment quality.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MAX_LENGTH = 512


def _bert_tokenizer(vocab: dict[str, int] | None = None):
    """A BERT-style ``tokenizers.Tokenizer`` over ``vocab`` (specials only when None)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = vocab or {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # whitespace + punctuation
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def wordpiece_vocab(corpus: list[str], vocab_size: int) -> dict[str, int]:
    """Deterministic WordPiece vocabulary (token -> id) for ``corpus``; see the module docstring."""
    base = _bert_tokenizer()
    words: Counter = Counter()
    for text in corpus:
        norm = base.normalizer.normalize_str(text)
        words.update(w for w, _ in base.pre_tokenizer.pre_tokenize_str(norm))
    chars = sorted({c for w in words for c in w})
    tokens = SPECIAL_TOKENS + chars + ["##" + c for c in chars]
    gain: Counter = Counter()
    for w, c in words.items():
        for end in range(2, len(w) + 1):  # prefixes of >= 2 characters (the word itself included)
            gain[w[:end]] += c * (end - 1)
        for start in range(1, len(w) - 1):  # continuation suffixes of >= 2 characters
            gain["##" + w[start:]] += c * (len(w) - start - 1)
    ranked = sorted(gain.items(), key=lambda kv: (-kv[1], kv[0]))
    room = max(0, vocab_size - len(tokens))
    tokens += [t for t, _ in ranked[:room]]
    return {t: i for i, t in enumerate(tokens)}


def build_tiny_encoder(
    folder: str | Path,
    corpus: list[str],
    vocab_size: int = 2000,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
) -> str:
    """Build the tokenizer for ``corpus`` and a random BERT, save both into ``folder``; returns it."""
    import torch
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    if hidden % heads:
        raise ValueError(f"hidden={hidden} must be a multiple of heads={heads}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = wordpiece_vocab(list(corpus), vocab_size)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=_bert_tokenizer(vocab),
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_LENGTH,
    )
    hf_tok.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=MAX_LENGTH,
        pad_token_id=vocab["[PAD]"],
    )
    torch.manual_seed(seed)
    model = BertModel(config)  # with the pooler, so loading it reports no missing weights
    model.eval()
    model.save_pretrained(folder)
    return str(folder)


def build_tiny_causal_lm(
    folder: str | Path,
    corpus: list[str],
    vocab_size: int = 2000,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
    extra_special: tuple[str, ...] = (),
) -> str:
    """A tiny random Llama with a byte-level-free WordPiece-style tokenizer built on ``corpus``
    (lowercase off: option letters stay letters), for the LLM tier's tests. ``extra_special``
    (e.g. the prompt's slot token) become single tokens."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<unk>", "<s>", "</s>", *extra_special]
    words: Counter = Counter()
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    for text in corpus:
        words.update(w for w, _ in pre.pre_tokenize_str(text))
    chars = sorted({c for w in words for c in w})
    tokens = specials + chars + ["##" + c for c in chars]
    ranked = sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))
    tokens += [w for w, _ in ranked if w not in set(tokens)][: max(0, vocab_size - len(tokens))]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", continuing_subword_prefix="##"))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##")
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=list(extra_special), model_max_length=MAX_LENGTH,
    )
    hf_tok.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=MAX_LENGTH,
        pad_token_id=vocab["<pad>"], bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.eval()
    model.save_pretrained(folder)
    return str(folder)
