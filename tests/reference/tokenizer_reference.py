"""Golden tokenizer outputs for wick, from Hugging Face `tokenizers` built on GGUF metadata.

Encodes a fixed corpus (digits, code, emoji, CJK, Arabic, accented Latin, whitespace runs,
special tokens embedded in text, the empty string, a long mixed paragraph) with the tokenizer
from gguf_tokenizer.build_tokenizer and writes, as JSON on stdout:

    {"model_sha256": ..., "cases": [{"text": ..., "ids": [...], "decoded": ...}, ...]}

where "decoded" is tokenizer.decode(ids, skip_special_tokens=False) (for Qwen2, whose tokenizer
normalizes to NFC first, the NFC form of the text). Independent of candle and
llama.cpp: only gguf and tokenizers (pinned in requirements.txt).

Regenerate (from the repository root):

    scripts/fetch-default-model
    .venv/bin/python tests/reference/tokenizer_reference.py [model.gguf] > tests/reference/tokenizer_golden.json

The model path defaults to where scripts/fetch-default-model puts SmolLM2-135M-Instruct.Q4_1.gguf.
The Qwen2 fallback model (byte-level BPE, pre-tokenizer "qwen2"):

    scripts/fetch-fallback-model
    .venv/bin/python tests/reference/tokenizer_reference.py --qwen > tests/reference/tokenizer_golden_qwen2.json
"""

import json
import sys
import unicodedata

from gguf import GGUFReader

from gguf_tokenizer import build_tokenizer, default_model_path, fallback_model_path, file_sha256

CORPUS = [
    # Plain text and leading-space behaviour.
    "Hello world",
    "Hello",
    " Hello",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say it's fine, won't they?",
    # Digits (SmolLM splits every digit on its own).
    "12345",
    "3.14159",
    "in 2024 there were 1,000,000",
    "Call 555-0123 or +1 (800) 123-4567 before 23:59 on 2024-02-29.",
    "0x1F 0b1010 1e-9 -42 007",
    # Code.
    'def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n',
    'fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!("{:?}", v);\n}\n',
    "if (a && b) { return a->c[i++]; } // done",
    "SELECT id, name FROM users WHERE age >= 18;",
    # Emoji: simple, skin tone, ZWJ sequences, flags.
    "I love 🦀 and 🐍!",
    "🙂🙂🙂",
    "👍🏽 thumbs",
    "family: 👨‍👩‍👧‍👦, technologist: 🧑‍💻",
    "flags: 🇫🇷🇯🇵🇺🇸",
    # CJK, Arabic, other scripts, accented Latin.
    "東京は日本の首都です。",
    "你好，世界！",
    "한국어 텍스트",
    "مرحبا بالعالم",
    "Привет, мир!",
    "Café, naïve, façade, São Paulo, Zürich, Ångström",
    "ﬁ ligature and e\u0301 combining accent",
    # Whitespace runs.
    "a  b   c    d",
    "tab\tseparated\t\tvalues",
    "\n\n\n",
    "line one\nline two\r\nline three",
    "trailing spaces   ",
    "   leading spaces",
    " ",
    "\t \n \t",
    # Special tokens embedded in text.
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "text <|endoftext|> more text",
    "not special: <|im_start and im_end|>",
    # Empty string.
    "",
    # Long mixed paragraph.
    (
        "On 14 July 1789, crowds in Paris stormed the Bastille; by 2024 the city hosted the "
        "Olympics 🏅. Meanwhile in 東京, engineers wrote `let x = vec![1, 2, 3];` and "
        "print(f\"{x:>10}\")\tbefore lunch.  Prices: €12.50, £9.99, ¥1,000 — \"quoted\" "
        "and 'single' text… مرحبا! Naïve café owners said: <|im_end|> is just a token.\n\n"
        "THE END   "
    ),
]


def main() -> None:
    args = sys.argv[1:]
    qwen = "--qwen" in args
    args = [a for a in args if a != "--qwen"]
    path = args[0] if args else (fallback_model_path() if qwen else default_model_path())
    reader = GGUFReader(path)
    tokenizer = build_tokenizer(reader)
    nfc = reader.fields["tokenizer.ggml.pre"].contents() == "qwen2"

    cases = []
    for text in CORPUS:
        ids = tokenizer.encode(text).ids
        cases.append({"text": text, "ids": ids, "decoded": tokenizer.decode(ids, skip_special_tokens=False)})

    # Sanity checks on the configuration.
    by_text = {case["text"]: case["ids"] for case in cases}
    vocab = tokenizer.get_vocab()
    assert by_text["12345"] == [vocab[d] for d in "12345"], "digits must be split individually"
    assert by_text["Hello world"][0] == vocab["Hello"], "no prefix space may be added"
    assert by_text["<|im_start|>user\nhi<|im_end|>"][0] == vocab["<|im_start|>"]
    assert by_text["<|im_start|>user\nhi<|im_end|>"][-1] == vocab["<|im_end|>"]
    assert by_text[""] == []
    for case in cases:
        expected = unicodedata.normalize("NFC", case["text"]) if nfc else case["text"]
        assert case["decoded"] == expected, f"round trip failed for {case['text']!r}"

    json.dump({"model_sha256": file_sha256(path), "cases": cases}, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
