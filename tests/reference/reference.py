"""Float64 numpy reference for wick's Llama forward pass: greedy decoding golden outputs.

An independent implementation (only numpy, gguf, tokenizers, jinja2; no candle, no llama.cpp) of
the Llama architecture (and Qwen2, see below) over the dequantized tensors of a GGUF file:

* embeddings from token_embd.weight; output head tied to it when output.weight is absent;
* per layer: RMSNorm -> attention (GQA, causal, scale 1/sqrt(head_dim), RoPE) -> residual,
  RMSNorm -> MLP down(silu(gate(x)) * up(x)) -> residual; final RMSNorm output_norm.weight;
* RoPE in the interleaved form (pairs (x[2i], x[2i+1]), theta_i = base^(-2i/head_dim)), i.e.
  llama.cpp's rope type NORM, because the HF->GGUF converter permutes the Q/K weight rows;
* a KV cache, so the prompt is one batched prefill and each generated token one step.

Qwen2 (general.architecture = "qwen2", hyper-parameters under `qwen2.*`) is the same network
with two differences: the Q/K/V projections add their biases (blk.N.attn_{q,k,v}.bias), and RoPE
is the half-split form (pairs (x[i], x[i + head_dim/2])), llama.cpp's rope type NEOX, because the
converter does not permute Qwen2's Q/K rows.

For each fixed prompt (plain and chat-templated ones, the chat template rendered with jinja2 from
tokenizer.chat_template) it decodes greedily for N_NEW_TOKENS steps, not stopping at EOS, and
records per step the chosen token, its log-probability (float64 log_softmax), the top-5 tokens
with their log-probabilities and the top-1/top-2 margin. JSON goes to stdout:

    {"model_sha256": ..., "n_new_tokens": 32,
     "cases": [{"name", "chat", "prompt_text", "prompt_ids",
                "steps": [{"token", "logprob", "top5": [[id, logprob], ...], "margin"}, ...],
                "text"}, ...]}

Regenerate (from the repository root; takes about two minutes on two CPU cores):

    scripts/fetch-default-model
    .venv/bin/python tests/reference/reference.py [model.gguf] > tests/reference/golden.json

The model path defaults to where scripts/fetch-default-model puts SmolLM2-135M-Instruct.Q4_1.gguf.
For the Qwen2 fallback model, fewer prompts and steps keep the Rust test fast (a few minutes):

    scripts/fetch-fallback-model
    .venv/bin/python tests/reference/reference.py --qwen > tests/reference/golden_qwen2.json
"""

import json
import sys
from dataclasses import dataclass

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gguf_tokenizer import build_tokenizer, default_model_path, fallback_model_path, file_sha256

N_NEW_TOKENS = 32
QWEN_NEW_TOKENS = 8
TOP_K = 5

# (name, messages or plain text). Chat prompts are rendered with add_generation_prompt=True.
PROMPTS = [
    ("plain_capital", "The capital of France is"),
    ("plain_code", "def fibonacci(n):"),
    ("plain_digits", "Q: What is 12 + 35?\nA:"),
    ("plain_non_ascii", "Café, naïve, 東京, and emoji 🙂 are"),
    ("plain_punctuation", "Hello!!! How are you??? (fine; thanks)"),
    ("chat_capital", [{"role": "user", "content": "What is the capital of France?"}]),
    (
        "chat_system_colors",
        [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "List three colors."},
        ],
    ),
    ("chat_arithmetic", [{"role": "user", "content": "What is 7 times 8?"}]),
]

# For the (larger, code) Qwen2 model: a few prompts, code among them.
QWEN_PROMPTS = [
    ("plain_capital", "The capital of France is"),
    ("plain_code", "def fibonacci(n):"),
    ("plain_digits", "Q: What is 12 + 35?\nA:"),
    ("plain_non_ascii", "Café, naïve, 東京, and emoji 🙂 are"),
    ("chat_capital", [{"role": "user", "content": "What is the capital of France?"}]),
    (
        "chat_code",
        [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Write a Python function that reverses a string."},
        ],
    ),
]


@dataclass
class Config:
    arch: str
    n_layers: int
    n_embd: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_base: float
    rms_eps: float

    @classmethod
    def from_gguf(cls, reader: GGUFReader) -> "Config":
        arch = reader.fields["general.architecture"].contents()
        if arch not in ("llama", "qwen2"):
            raise ValueError(f"unsupported architecture {arch!r}")

        def get(key, default=None):
            field = reader.fields.get(f"{arch}.{key}")
            return default if field is None else field.contents()

        n_embd = int(get("embedding_length"))
        n_heads = int(get("attention.head_count"))
        head_dim = n_embd // n_heads
        if int(get("rope.dimension_count", head_dim)) != head_dim:
            raise ValueError("partial rotary embeddings are not supported")
        return cls(
            arch=arch,
            n_layers=int(get("block_count")),
            n_embd=n_embd,
            n_heads=n_heads,
            n_kv_heads=int(get("attention.head_count_kv", n_heads)),
            head_dim=head_dim,
            rope_base=float(get("rope.freq_base", 10000.0)),
            rms_eps=float(get("attention.layer_norm_rms_epsilon")),
        )


def load_tensors(reader: GGUFReader) -> dict[str, np.ndarray]:
    """Dequantize every tensor to float64.

    GGUF lists dimensions fastest-varying first (ne0 = input features for a matrix), so the numpy
    array has the reversed shape: rows are output features and `x @ w.T` applies the layer.
    """
    tensors = {}
    for tensor in reader.tensors:
        array = dequantize(tensor.data, tensor.tensor_type)
        expected = tuple(int(d) for d in reversed(tensor.shape))
        if array.shape != expected:
            raise ValueError(f"{tensor.name}: dequantized shape {array.shape}, expected {expected}")
        tensors[tensor.name] = array.astype(np.float64)
    return tensors


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - np.max(x)
    return shifted - np.log(np.sum(np.exp(shifted)))


class Llama:
    def __init__(self, reader: GGUFReader):
        self.cfg = Config.from_gguf(reader)
        self.w = load_tensors(reader)
        self.embd = self.w["token_embd.weight"]  # (vocab, n_embd)
        self.output = self.w.get("output.weight", self.embd)  # tied when output.weight is absent
        cfg = self.cfg
        i = np.arange(cfg.head_dim // 2, dtype=np.float64)
        self.inv_freq = cfg.rope_base ** (-2.0 * i / cfg.head_dim)  # theta_i

    def new_cache(self) -> list[dict[str, np.ndarray]]:
        shape = (0, self.cfg.n_kv_heads, self.cfg.head_dim)
        return [{"k": np.zeros(shape), "v": np.zeros(shape)} for _ in range(self.cfg.n_layers)]

    def rope(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """RoPE on x of shape (tokens, heads, head_dim). Llama: interleaved, rotates
        (x[2i], x[2i+1]); Qwen2: half-split, rotates (x[i], x[i + head_dim/2])."""
        angles = positions[:, None] * self.inv_freq[None, :]  # (tokens, head_dim/2)
        cos = np.cos(angles)[:, None, :]
        sin = np.sin(angles)[:, None, :]
        half = self.cfg.head_dim // 2
        if self.cfg.arch == "qwen2":
            first, second = slice(0, half), slice(half, None)
        else:
            first, second = slice(0, None, 2), slice(1, None, 2)
        a, b = x[..., first], x[..., second]
        out = np.empty_like(x)
        out[..., first] = a * cos - b * sin
        out[..., second] = a * sin + b * cos
        return out

    def project(self, x: np.ndarray, name: str) -> np.ndarray:
        """x @ W^T, plus the bias when the file has one (Qwen2's Q/K/V)."""
        out = x @ self.w[name + ".weight"].T
        bias = self.w.get(name + ".bias")
        return out if bias is None else out + bias

    def attention(self, layer: int, x: np.ndarray, positions: np.ndarray, cache: dict) -> np.ndarray:
        cfg, w = self.cfg, self.w
        n = x.shape[0]
        p = f"blk.{layer}."
        q = self.project(x, p + "attn_q").reshape(n, cfg.n_heads, cfg.head_dim)
        k = self.project(x, p + "attn_k").reshape(n, cfg.n_kv_heads, cfg.head_dim)
        v = self.project(x, p + "attn_v").reshape(n, cfg.n_kv_heads, cfg.head_dim)
        q = self.rope(q, positions)
        k = self.rope(k, positions)
        cache["k"] = np.concatenate([cache["k"], k])
        cache["v"] = np.concatenate([cache["v"], v])
        keys, values = cache["k"], cache["v"]  # (total, n_kv_heads, head_dim)
        total = keys.shape[0]

        # Query head h reads kv head h // group (consecutive query heads share a kv head).
        group = cfg.n_heads // cfg.n_kv_heads
        keys = np.repeat(keys, group, axis=1)  # (total, n_heads, head_dim)
        values = np.repeat(values, group, axis=1)

        scores = np.einsum("qhd,khd->hqk", q, keys) / np.sqrt(cfg.head_dim)
        key_pos = np.arange(total)
        causal = key_pos[None, :] <= positions[:, None]  # (n, total)
        scores = np.where(causal[None, :, :], scores, -np.inf)
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        out = np.einsum("hqk,khd->qhd", probs, values).reshape(n, cfg.n_embd)
        return out @ w[p + "attn_output.weight"].T

    def mlp(self, layer: int, x: np.ndarray) -> np.ndarray:
        w, p = self.w, f"blk.{layer}."
        gate = x @ w[p + "ffn_gate.weight"].T
        up = x @ w[p + "ffn_up.weight"].T
        return (silu(gate) * up) @ w[p + "ffn_down.weight"].T

    def forward(self, ids: list[int], cache: list[dict]) -> np.ndarray:
        """Runs `ids` after the tokens already in `cache`; returns the last position's logits."""
        cfg, w = self.cfg, self.w
        start = cache[0]["k"].shape[0]
        positions = np.arange(start, start + len(ids), dtype=np.float64)
        h = self.embd[np.asarray(ids)]
        for layer in range(cfg.n_layers):
            p = f"blk.{layer}."
            h = h + self.attention(layer, rms_norm(h, w[p + "attn_norm.weight"], cfg.rms_eps), positions, cache[layer])
            h = h + self.mlp(layer, rms_norm(h, w[p + "ffn_norm.weight"], cfg.rms_eps))
        h_last = rms_norm(h[-1], w["output_norm.weight"], cfg.rms_eps)
        return self.output @ h_last


def greedy(model: Llama, prompt_ids: list[int], n_new: int) -> list[dict]:
    cache = model.new_cache()
    logits = model.forward(prompt_ids, cache)
    steps = []
    for step in range(n_new):
        logprobs = log_softmax(logits)
        order = np.argsort(-logprobs, kind="stable")[:TOP_K]  # ties go to the lower id
        token = int(order[0])
        steps.append(
            {
                "token": token,
                "logprob": float(logprobs[token]),
                "top5": [[int(t), float(logprobs[t])] for t in order],
                "margin": float(logprobs[order[0]] - logprobs[order[1]]),
            }
        )
        if step + 1 < n_new:
            logits = model.forward([token], cache)
    return steps


def render_chat(reader: GGUFReader, messages: list[dict]) -> str:
    fields = reader.fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(fields["tokenizer.chat_template"].contents())
    return template.render(
        messages=messages,
        add_generation_prompt=True,
        bos_token=tokens[int(fields["tokenizer.ggml.bos_token_id"].contents())],
        eos_token=tokens[int(fields["tokenizer.ggml.eos_token_id"].contents())],
    )


def main() -> None:
    args = sys.argv[1:]
    qwen = "--qwen" in args
    args = [a for a in args if a != "--qwen"]
    default = fallback_model_path() if qwen else default_model_path()
    path = args[0] if args else default
    prompts, n_new = (QWEN_PROMPTS, QWEN_NEW_TOKENS) if qwen else (PROMPTS, N_NEW_TOKENS)
    reader = GGUFReader(path)
    tokenizer = build_tokenizer(reader)
    model = Llama(reader)

    cases = []
    for name, prompt in prompts:
        chat = not isinstance(prompt, str)
        prompt_text = render_chat(reader, prompt) if chat else prompt
        prompt_ids = tokenizer.encode(prompt_text).ids
        steps = greedy(model, prompt_ids, n_new)
        text = tokenizer.decode([s["token"] for s in steps], skip_special_tokens=False)
        print(f"{name}: {text!r}", file=sys.stderr)
        cases.append(
            {
                "name": name,
                "chat": chat,
                "prompt_text": prompt_text,
                "prompt_ids": prompt_ids,
                "steps": steps,
                "text": text,
            }
        )

    out = {"model_sha256": file_sha256(path), "n_new_tokens": n_new, "cases": cases}
    json.dump(out, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
