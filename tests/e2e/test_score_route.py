"""A score-mode route (`verify = "score"`) through the official `openai` Python SDK, against a
running `wick serve` whose route WICK_ROUTE has the cheap model WICK_CHEAP first and the
fallback WICK_FALLBACK last, `min_mean_logprob = WICK_MIN_MEAN`.

Run by tests/tests/openai_python.rs, which writes the configuration and sets:
  WICK_BASE_URL, WICK_API_KEY   where the server is and its key
  WICK_ROUTE, WICK_CHEAP, WICK_FALLBACK, WICK_MIN_MEAN   the route above

The SDK reads wick's headers through `with_raw_response`: an answer carries the fallback's
score of the cheap answer (`x-wick-score`), stands exactly when the score clears the threshold
(and is then the cheap model's own answer), and escalates otherwise; streamed or not the same;
/metrics counts each verdict.
"""
import os
import unittest
import urllib.request

import openai
from prometheus_client.parser import text_string_to_metric_families

BASE = os.environ["WICK_BASE_URL"]
KEY = os.environ["WICK_API_KEY"]
ROUTE = os.environ["WICK_ROUTE"]
CHEAP = os.environ["WICK_CHEAP"]
FALLBACK = os.environ["WICK_FALLBACK"]
MIN_MEAN = float(os.environ["WICK_MIN_MEAN"])
client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=120)

PROMPTS = [
    "What is the capital of France? Answer in one word.",
    "Name a primary color. One word.",
    "What is the largest planet in the solar system?",
]


def ask(model, prompt, **kw):
    return client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=60,
        **kw,
    )


def score(raw):
    """`x-wick-score` as a dict of floats."""
    header = raw.headers.get("x-wick-score")
    assert header, dict(raw.headers)
    return {k: float(v) for k, v in (kv.split("=") for kv in header.split(", "))}


def verdicts():
    """wick_router_verifications_total for the route, by outcome (the official parser)."""
    root = BASE.rsplit("/v1", 1)[0]
    req = urllib.request.Request(root + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "wick_router_verifications_total" and s.labels.get("route") == ROUTE:
                found[s.labels["outcome"]] = s.value
    return found


class ScoreRoute(unittest.TestCase):
    def test_an_answer_stands_exactly_when_the_fallback_scores_it_well(self):
        before = verdicts()
        outcomes = {"accepted": 0, "rejected": 0}
        for prompt in PROMPTS:
            cheap = ask(CHEAP, prompt).parse().choices[0].message.content
            raw = ask(ROUTE, prompt)
            answer = raw.parse()
            s = score(raw)
            self.assertGreater(s["tokens"], 0)
            self.assertLessEqual(s["min"], s["mean"])
            if s["mean"] >= MIN_MEAN:
                outcomes["accepted"] += 1
                self.assertEqual(raw.headers.get("x-wick-backend"), CHEAP, prompt)
                self.assertEqual(answer.choices[0].message.content, cheap, prompt)
            else:
                outcomes["rejected"] += 1
                self.assertEqual(raw.headers.get("x-wick-backend"), FALLBACK, prompt)
                self.assertEqual(raw.headers.get("x-wick-escalation"), f"{CHEAP}:low_score_mean")
                if raw.headers.get("x-wick-continued") is None:
                    fallback = ask(FALLBACK, prompt).parse().choices[0].message.content
                    self.assertEqual(answer.choices[0].message.content, fallback, prompt)
                else:
                    # Continued: the cheap answer's text up to the rejected token, then the
                    # fallback's; the usage counts the kept tokens as the answer's.
                    content = answer.choices[0].message.content
                    self.assertTrue(os.path.commonprefix([content, cheap]), (content, cheap))
                    kept = int(raw.headers["x-wick-continued"].split("=")[1].split("/")[0])
                    self.assertGreater(answer.usage.completion_tokens, kept)
        self.assertTrue(outcomes["accepted"] and outcomes["rejected"], outcomes)
        after = verdicts()
        for outcome, n in outcomes.items():
            self.assertEqual(after.get(outcome, 0) - before.get(outcome, 0), n, outcome)

    def test_a_stream_is_held_scored_and_replayed_or_escalated(self):
        for prompt in PROMPTS:
            whole = ask(ROUTE, prompt)
            raw = ask(ROUTE, prompt, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
            self.assertEqual(raw.headers.get("x-wick-score"), whole.headers.get("x-wick-score"))
            self.assertEqual(raw.headers.get("x-wick-backend"), whole.headers.get("x-wick-backend"))
            if raw.headers.get("x-wick-backend") == CHEAP:
                self.assertEqual(text, whole.parse().choices[0].message.content, prompt)
            else:
                # A stream escalates from scratch: the fallback's own answer.
                fallback = ask(FALLBACK, prompt).parse().choices[0].message.content
                self.assertEqual(text, fallback, prompt)


if __name__ == "__main__":
    unittest.main(verbosity=2)
