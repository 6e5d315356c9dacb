#!/usr/bin/env python3
"""How far llama.cpp's own quantized path is from the f32 reference, on the golden prompts.

Calibrates the quantized golden test (engine/tests/golden.rs): it runs every case of
golden.json through a llama-server started on the same GGUF, greedy, and measures exactly what
the Rust test measures -- tokens until the reference's top-1/top-2 margin drops under 0.5 nats,
and the worst |logprob difference| of the reference's top-5 tokens, by rank.

    llama-server -m SmolLM2-135M-Instruct.Q4_1.gguf -c 4096 -np 1 -t 2 --port 8081 &
    python3 tests/reference/llama_cpp_deviation.py http://127.0.0.1:8081 [golden_qwen2.json]

Standard library only. Not part of the test suite (llama.cpp is a peer, not a dependency).
"""
import json
import pathlib
import sys
import urllib.request

MARGIN = 0.5


def complete(url, prompt_ids, n):
    body = json.dumps({"prompt": prompt_ids, "n_predict": n, "temperature": 0,
                       "n_probs": 100, "cache_prompt": False}).encode()
    req = urllib.request.Request(url + "/completion", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)["completion_probabilities"]


def main():
    url = sys.argv[1].rstrip("/") if len(sys.argv) > 1 else "http://127.0.0.1:8081"
    name = sys.argv[2] if len(sys.argv) > 2 else "golden.json"
    golden = json.loads((pathlib.Path(__file__).parent / name).read_text())
    worst = [0.0] * 5
    compared = 0
    for case in golden["cases"]:
        steps = complete(url, case["prompt_ids"], len(case["steps"]))
        note = "all steps"
        for i, (ref, got) in enumerate(zip(case["steps"], steps)):
            if ref["margin"] < MARGIN:
                note = f"close call at step {i}"
                break
            if got["id"] != ref["token"]:
                note = f"TOKEN DIFFERS at step {i}: {got['id']} vs {ref['token']}"
                break
            lp = {t["id"]: t["logprob"] for t in got["top_logprobs"]}
            for rank, (tid, ref_lp) in enumerate(ref["top5"]):
                if tid in lp:
                    worst[rank] = max(worst[rank], abs(lp[tid] - ref_lp))
            compared += 1
        print(f"{case['name']}: {note}")
    print(f"{compared} steps compared; worst |logprob diff| by rank: "
          + ", ".join(f"{w:.3f}" for w in worst))


if __name__ == "__main__":
    main()
