"""Build a Hugging Face `tokenizers.Tokenizer` from the tokenizer metadata in a GGUF file.

Reference helper for wick's tokenizer tests; it depends only on `gguf` and `tokenizers`
(no candle, no llama.cpp). The tokenizer is configured the way Hugging Face's own
tokenizer.json is for the models we use:

* model: byte-level BPE, vocab from `tokenizer.ggml.tokens` (token -> index), merges from
  `tokenizer.ggml.merges` ("left right" strings); no unk token, no dropout, no byte fallback.
* pre-tokenizer, by `tokenizer.ggml.pre`:
    - "smollm":    Sequence[Digits(individual_digits=True),
                            ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]
    - "llama-bpe": Sequence[Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
                            ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]
                   (and BPE `ignore_merges=True`, as in Llama 3's tokenizer.json and llama.cpp)
    - "qwen2":     normalizer NFC, then
                   Sequence[Split(Regex(QWEN2_PATTERN), behavior="isolated"),
                            ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]
                   (as in Qwen2/2.5's tokenizer.json; llama.cpp runs the same regex, no NFC)
    - "gpt2" / "default" / missing: ByteLevel(add_prefix_space=False)
* decoder: ByteLevel.
* post-processor: none, unless `tokenizer.ggml.add_bos_token` is true, in which case BOS is
  prepended by a TemplateProcessing post-processor.
* every token whose `tokenizer.ggml.token_type` is 3 (control) or 4 (user defined) is an
  added token with special=True, normalized=False, so it matches as a single id in raw text.

Usage:
    from gguf import GGUFReader
    from gguf_tokenizer import build_tokenizer
    tok = build_tokenizer(GGUFReader(path))

Also holds small helpers shared by the reference scripts (default model path, file hash).
"""

import hashlib
import os

from gguf import GGUFReader
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

# GGUF token types (llama.cpp's llama_token_type).
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

# Llama 3 pre-tokenizer regex (tokenizer.json of Meta-Llama-3 / llama.cpp "llama-bpe").
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2 pre-tokenizer regex (tokenizer.json of Qwen2/Qwen2.5, llama.cpp "qwen2"): Llama 3's, except
# that every digit is its own piece.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _field(reader: GGUFReader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def build_tokenizer(reader: GGUFReader) -> Tokenizer:
    model_kind = _field(reader, "tokenizer.ggml.model")
    if model_kind != "gpt2":
        raise ValueError(f"unsupported tokenizer.ggml.model {model_kind!r} (only byte-level BPE 'gpt2')")
    pre = _field(reader, "tokenizer.ggml.pre", "default")

    tokens = _field(reader, "tokenizer.ggml.tokens")
    token_types = _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("duplicate strings in tokenizer.ggml.tokens")

    tokenizer = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            fuse_unk=False,
            byte_fallback=False,
            ignore_merges=(pre == "llama-bpe"),
        )
    )

    if pre == "smollm":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
    elif pre == "llama-bpe":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
            ]
        )
    elif pre == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
            ]
        )
    elif pre in ("gpt2", "default"):
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        raise ValueError(f"unsupported tokenizer.ggml.pre {pre!r}")

    tokenizer.decoder = decoders.ByteLevel()

    if _field(reader, "tokenizer.ggml.add_bos_token", False):
        bos_id = int(_field(reader, "tokenizer.ggml.bos_token_id"))
        bos = tokens[bos_id]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )

    special = [
        AddedToken(tokens[i], special=True, normalized=False, single_word=False, lstrip=False, rstrip=False)
        for i, kind in enumerate(token_types)
        if kind in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)
    ]
    tokenizer.add_special_tokens(special)
    return tokenizer


def _cache_dir() -> str:
    return os.environ.get("WICK_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "wick"
    )


def default_model_path() -> str:
    """Where scripts/fetch-default-model puts the default model (same cache-dir rules)."""
    return os.path.join(_cache_dir(), "SmolLM2-135M-Instruct.Q4_1.gguf")


def fallback_model_path() -> str:
    """Where scripts/fetch-fallback-model puts the Qwen2 fallback model."""
    return os.path.join(_cache_dir(), "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
