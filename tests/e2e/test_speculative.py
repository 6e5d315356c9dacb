"""Speculative decoding through the official `openai` Python SDK, against a running `wick serve`
that speculates (a draft model, or n-gram prompt lookup).

Run by tests/tests/openai_python.rs, which starts the real binary with the default model
dequantized to f32 (`--dtype f32`) and `--draft-model` (the same GGUF kept quantized) or
`--speculative ngram`, and sets:
  WICK_BASE_URL   e.g. http://127.0.0.1:PORT/v1
  WICK_MODEL_ID   the served model name
  WICK_API_KEY    the key the server was started with
  WICK_EXPECTED   JSON [{"prompt": ..., "content": ...}, ...]: what `wick generate --chat
                  --dtype f32` (plain greedy decoding, no speculation) produced for each prompt,
                  WICK_MAX_TOKENS tokens at most
  WICK_MAX_TOKENS the max_tokens of those generations

Speculation changes how many forwards a request takes, never its tokens: every answer must be
plain decoding's, streamed or not, alone or batched. Which steps speculate is the engine's
choice (it times steps with and without and follows the faster, after speculating in the first
steps of each batch size), so the Rust driver checks that proposals were accepted once this file
has run, over the whole run; here the counters are checked for shape.
"""
import json
import os
import sys
import unittest
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
from prometheus_client.parser import text_string_to_metric_families

BASE = os.environ["WICK_BASE_URL"]
MODEL = os.environ["WICK_MODEL_ID"]
KEY = os.environ["WICK_API_KEY"]
EXPECTED = json.loads(os.environ["WICK_EXPECTED"])
MAX_TOKENS = int(os.environ["WICK_MAX_TOKENS"])
client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=120)

DRAFT = "vllm:spec_decode_num_draft_tokens_total"
ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"


def spec_counters():
    """(proposed, accepted) for the served model, parsed by the official Prometheus parser."""
    root = BASE.rsplit("/v1", 1)[0]
    text = urllib.request.urlopen(root + "/metrics", timeout=10).read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model_name") == MODEL:
                found[s.name] = s.value
    return found[DRAFT], found[ACCEPTED]


def chat(prompt, **kw):
    return client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=MAX_TOKENS,
        **kw,
    )


def streamed(prompt):
    """(text, finish reason, completion tokens) of a streamed greedy chat."""
    chunks = list(chat(prompt, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, finishes, chunks[-1].usage.completion_tokens


class Speculative(unittest.TestCase):
    def test_a_draft_is_not_a_model_of_its_own(self):
        self.assertEqual([m.id for m in client.models.list().data], [MODEL])

    def test_greedy_answers_are_plain_decodings_streamed_or_not(self):
        for case in EXPECTED:
            with self.subTest(prompt=case["prompt"]):
                full = chat(case["prompt"])
                content = full.choices[0].message.content
                self.assertEqual(content, case["content"])
                text, finishes, tokens = streamed(case["prompt"])
                self.assertEqual(text, content)
                self.assertEqual(finishes, [full.choices[0].finish_reason])
                self.assertEqual(tokens, full.usage.completion_tokens)

    def test_spec_decode_counters_are_labelled_and_consistent(self):
        proposed, accepted = spec_counters()
        print(f"\nso far: {proposed:.0f} proposed, {accepted:.0f} accepted", file=sys.stderr)
        self.assertGreaterEqual(accepted, 0)
        self.assertLessEqual(accepted, proposed)

    def test_each_answer_reports_its_own_accepted_and_rejected_proposals(self):
        # OpenAI's prediction-token fields, typed by the SDK: one request after another, the
        # proposals add up to what the counter moved by; the accepted ones in the completions
        # are at most what the engine accepted (it also counts those past an answer's end).
        before = spec_counters()
        answers = [chat(c["prompt"]) for c in EXPECTED]
        after = spec_counters()
        usages = [a.usage.completion_tokens_details for a in answers]
        kept = sum(u.accepted_prediction_tokens for u in usages)
        rejected = sum(u.rejected_prediction_tokens for u in usages)
        self.assertEqual(kept + rejected, after[0] - before[0])
        self.assertLessEqual(kept, after[1] - before[1])
        for a in answers:
            details = a.usage.completion_tokens_details
            self.assertLess(details.accepted_prediction_tokens, a.usage.completion_tokens)
        last = list(chat(EXPECTED[0]["prompt"], stream=True, stream_options={"include_usage": True}))[-1]
        details = last.usage.completion_tokens_details
        self.assertIsNotNone(details)
        self.assertGreaterEqual(details.accepted_prediction_tokens, 0)

    def test_concurrent_requests_speculate_in_one_batch_and_answer_the_same(self):
        prompts = [c["prompt"] for c in EXPECTED]
        with ThreadPoolExecutor(len(prompts)) as pool:
            answers = list(pool.map(lambda p: chat(p).choices[0].message.content, prompts))
        self.assertEqual(answers, [c["content"] for c in EXPECTED])


if __name__ == "__main__":
    unittest.main(verbosity=2)
