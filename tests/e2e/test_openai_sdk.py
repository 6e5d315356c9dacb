"""wick's HTTP API through the official `openai` Python SDK, against a running `wick serve`.

Run by tests/tests/openai_python.rs, which starts the real binary on the default model and sets:
  WICK_BASE_URL   e.g. http://127.0.0.1:PORT/v1
  WICK_MODEL_ID   the served model name
  WICK_EXPECTED   JSON {"prompt": ..., "content": ...}: what `wick generate --chat` produced
                  greedily for that prompt (the golden-tested engine path), 24 tokens
  WICK_API_KEY    the key the server was started with
"""
import http.client
import json
import os
import socket
import time
import urllib.parse
import unittest
import urllib.error
import urllib.request

import openai
from prometheus_client.parser import text_string_to_metric_families

BASE = os.environ["WICK_BASE_URL"]
MODEL = os.environ["WICK_MODEL_ID"]
EXPECTED = json.loads(os.environ["WICK_EXPECTED"])
KEY = os.environ["WICK_API_KEY"]
client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=120)


def metrics():
    """/metrics parsed by the official Prometheus client's parser: {(name, labels): value}."""
    root = BASE.rsplit("/v1", 1)[0]
    text = urllib.request.urlopen(root + "/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(m, name, **labels):
    """A sample by name and labels (the server's `model_name` label is implied)."""
    return m[(name, tuple(sorted({"model_name": MODEL, **labels}.items())))]


def raw(method, path, body=None, headers=None):
    """A request the SDK cannot make (malformed JSON, odd methods): (status, parsed JSON body)."""
    root = BASE.rsplit("/v1", 1)[0]
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(root + path, data=body, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null"), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), dict(e.headers)


def wait_until_idle(timeout=30):
    deadline = time.time() + timeout
    while True:
        m = metrics()
        if metric(m, "vllm:num_requests_running") == 0 and metric(m, "wick:kv_cache_blocks_used") == 0:
            return m
        if time.time() > deadline:
            raise AssertionError(f"engine not idle: {m}")
        time.sleep(0.1)


def chat(**kw):
    kw.setdefault("model", MODEL)
    kw.setdefault("messages", [{"role": "user", "content": EXPECTED["prompt"]}])
    return client.chat.completions.create(**kw)


class Models(unittest.TestCase):
    def test_list_and_retrieve(self):
        ids = [m.id for m in client.models.list().data]
        self.assertEqual(ids, [MODEL])
        self.assertEqual(client.models.retrieve(MODEL).id, MODEL)
        with self.assertRaises(openai.NotFoundError):
            client.models.retrieve("no-such-model")


class Chat(unittest.TestCase):
    def test_greedy_matches_the_engine(self):
        r = chat(temperature=0, max_tokens=24)
        self.assertTrue(r.id.startswith("chatcmpl-"))
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(r.model, MODEL)
        self.assertEqual(r.choices[0].message.role, "assistant")
        self.assertEqual(r.choices[0].message.content, EXPECTED["content"])
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 24)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + 24)

    def test_stream_equals_non_stream(self):
        full = chat(temperature=0, max_tokens=24)
        chunks = list(chat(temperature=0, max_tokens=24, stream=True, stream_options={"include_usage": True}))
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, full.choices[0].message.content)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finishes, ["length"])
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, 24)
        self.assertEqual(len({c.id for c in chunks}), 1)

    def test_seeded_n_is_reproducible_and_choices_differ(self):
        kw = dict(temperature=1.0, max_tokens=16, n=3, seed=7, extra_body={"ignore_eos": True})
        a, b = chat(**kw), chat(**kw)
        self.assertEqual([c.index for c in a.choices], [0, 1, 2])
        self.assertEqual([c.message.content for c in a.choices], [c.message.content for c in b.choices])
        self.assertGreater(len({c.message.content for c in a.choices}), 1)
        self.assertEqual(a.usage.completion_tokens, 3 * 16)

    def test_stop_string_is_cut(self):
        content = EXPECTED["content"]
        words = [w for w in content.split() if len(w) >= 3]
        stop = words[len(words) // 2]
        r = chat(temperature=0, max_tokens=24, stop=[stop])
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertEqual(r.choices[0].message.content, content[: content.index(stop)])

    def test_logprobs(self):
        r = chat(temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
        lp = r.choices[0].logprobs.content
        self.assertEqual(len(lp), 8)
        for entry in lp:
            self.assertLessEqual(entry.logprob, 0.0)
            tops = [t.logprob for t in entry.top_logprobs]
            self.assertEqual(len(tops), 3)
            self.assertEqual(tops, sorted(tops, reverse=True))
            # Greedy: the chosen token is the most likely one.
            self.assertAlmostEqual(entry.logprob, tops[0], places=5)
        self.assertEqual("".join(e.token for e in lp), r.choices[0].message.content)

    def test_content_parts_and_developer_role(self):
        a = chat(temperature=0, max_tokens=8,
                 messages=[{"role": "user", "content": [{"type": "text", "text": EXPECTED["prompt"]}]}])
        self.assertEqual(a.choices[0].message.content, EXPECTED["content"][: len(a.choices[0].message.content)])
        r = chat(temperature=0, max_tokens=4, messages=[{"role": "developer", "content": "Be brief."},
                                                         {"role": "user", "content": "Hi"}])
        self.assertEqual(r.usage.completion_tokens, 4)


class Completions(unittest.TestCase):
    def test_several_prompts_stream_and_echo(self):
        prompts = ["The capital of France is", "def fibonacci(n):"]
        r = client.completions.create(model=MODEL, prompt=prompts, max_tokens=12, temperature=0)
        self.assertTrue(r.id.startswith("cmpl-"))
        self.assertEqual([c.index for c in r.choices], [0, 1])
        self.assertEqual(r.usage.completion_tokens, 24)
        streamed = ["", ""]
        for chunk in client.completions.create(model=MODEL, prompt=prompts, max_tokens=12, temperature=0, stream=True):
            for c in chunk.choices:
                streamed[c.index] += c.text
        self.assertEqual(streamed, [c.text for c in r.choices])
        e = client.completions.create(model=MODEL, prompt=prompts[0], max_tokens=12, temperature=0, echo=True,
                                      logprobs=2)
        self.assertEqual(e.choices[0].text, prompts[0] + r.choices[0].text)
        # With echo, logprobs cover the prompt's tokens too.
        self.assertEqual(len(e.choices[0].logprobs.tokens), e.usage.prompt_tokens + 12)

    def test_echo_logprobs_score_the_prompt(self):
        """echo + logprobs gives each prompt token's logprob given the ones before it (what
        lm-eval-harness' loglikelihood uses); the reference is the logprob the same token gets
        when it is generated after the shorter prompt."""
        prompt = "The capital of France is"
        g = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, temperature=0, logprobs=3)
        generated = g.choices[0].logprobs
        e = client.completions.create(model=MODEL, prompt=prompt + generated.tokens[0], max_tokens=2,
                                      temperature=0, echo=True, logprobs=3)
        lp = e.choices[0].logprobs
        n_prompt = e.usage.prompt_tokens
        self.assertEqual(len(lp.tokens), n_prompt + 2)
        self.assertEqual(e.choices[0].text[: len(prompt)], prompt)
        self.assertIsNone(lp.token_logprobs[0])
        self.assertIsNone(lp.top_logprobs[0])
        for i in range(1, n_prompt + 2):
            self.assertLessEqual(lp.token_logprobs[i], 0.0)
            self.assertIn(lp.tokens[i], lp.top_logprobs[i])
        self.assertEqual(lp.text_offset[0], 0)
        self.assertEqual(lp.text_offset, sorted(lp.text_offset))
        self.assertEqual(lp.text_offset[n_prompt], len(prompt + generated.tokens[0]))
        # The last prompt token is the one generated above: same logprob, same alternatives.
        self.assertEqual(lp.tokens[n_prompt - 1], generated.tokens[0])
        self.assertAlmostEqual(lp.token_logprobs[n_prompt - 1], generated.token_logprobs[0], delta=1e-4)
        for token, value in generated.top_logprobs[0].items():
            self.assertAlmostEqual(lp.top_logprobs[n_prompt - 1][token], value, delta=1e-4)

    def test_default_max_tokens_is_16(self):
        r = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0,
                                      extra_body={"ignore_eos": True})
        self.assertEqual(r.usage.completion_tokens, 16)


class Errors(unittest.TestCase):
    def check(self, exc, param, call, code=None):
        with self.assertRaises(exc) as ctx:
            call()
        err = ctx.exception.body
        self.assertEqual(err.get("param"), param, err)
        if code:
            self.assertEqual(err.get("code"), code, err)
        return err

    def test_errors_are_openai_shaped(self):
        self.check(openai.BadRequestError, "temperature", lambda: chat(temperature=5))
        self.check(openai.BadRequestError, "temperature", lambda: chat(extra_body={"temperature": "hot"}))
        self.check(openai.NotFoundError, "model", lambda: chat(model="gpt-4"), code="model_not_found")
        self.check(openai.BadRequestError, "messages", lambda: chat(max_tokens=10**7), code="context_length_exceeded")
        self.check(openai.BadRequestError, "messages[0].role", lambda: chat(messages=[{"role": "wizard", "content": "x"}]))
        # serde's own paths and wick's checks spell an index the same way.
        self.check(openai.BadRequestError, "messages[0].content",
                   lambda: chat(messages=[{"role": "user", "content": [{"type": "text"}]}]))
        self.check(openai.BadRequestError, "prompt",
                   lambda: client.completions.create(model=MODEL, prompt="a", max_tokens=10**7),
                   code="context_length_exceeded")
        for bias in (100.5, -101, 1e9):
            self.check(openai.BadRequestError, "logit_bias", lambda: chat(logit_bias={"0": bias}))
        self.check(openai.BadRequestError, "suffix", lambda: client.completions.create(model=MODEL, prompt="a", suffix="b"))
        self.check(openai.BadRequestError, "best_of", lambda: client.completions.create(model=MODEL, prompt="a", best_of=3))
        self.check(openai.BadRequestError, "functions",
                   lambda: chat(functions=[{"name": "f", "parameters": {"type": "object"}}]))
        self.check(openai.BadRequestError, "top_logprobs", lambda: chat(logprobs=True, top_logprobs=21))


class BadInputs(unittest.TestCase):
    """Each bad input gets its status and OpenAI's error shape; the server keeps serving."""

    CASES = [
        # (method, path, body, status, param)
        ("POST", "/v1/chat/completions", b"{not json", 400, None),
        ("POST", "/v1/chat/completions", b"[1, 2]", 400, None),
        ("POST", "/v1/chat/completions", json.dumps({"model": MODEL, "messages": []}).encode(), 400, "messages"),
        ("POST", "/v1/chat/completions", json.dumps({"model": MODEL, "messages": "hi"}).encode(), 400, "messages"),
        ("POST", "/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                                      "max_tokens": -1}).encode(), 400, "max_tokens"),
        ("POST", "/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                                      "n": 0}).encode(), 400, "n"),
        ("POST", "/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                                      "top_p": 7}).encode(), 400, "top_p"),
        ("POST", "/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                                      "logit_bias": {"abc": 1}}).encode(), 400, "logit_bias"),
        ("POST", "/v1/completions", json.dumps({"model": MODEL, "prompt": [[10**9]]}).encode(), 400, "prompt"),
        ("POST", "/v1/completions", json.dumps({"model": MODEL, "prompt": []}).encode(), 400, "prompt"),
        ("POST", "/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": None}]}).encode(),
         400, "messages[0].content"),
        ("POST", "/v1/chat/completions", json.dumps({"model": MODEL, "messages": [{"role": "system"}]}).encode(),
         400, "messages[0].content"),
        ("DELETE", "/v1/models", None, 405, None),
        ("GET", "/v1/nothing-here", None, 404, None),
    ]

    def test_table(self):
        for method, path, body, status, param in self.CASES:
            with self.subTest(body=body, path=path):
                got, err, _ = raw(method, path, body)
                self.assertEqual(got, status, err)
                self.assertEqual(set(err["error"]), {"message", "type", "param", "code"}, err)
                if param:
                    self.assertEqual(err["error"]["param"], param, err)

    def test_any_content_type_with_a_json_body(self):
        # Deliberate (docs/server.md): the body is JSON whatever the Content-Type says, so
        # `curl -d` (form-encoded) and clients that send none work; a body that is not JSON is a 400.
        body = json.dumps({"model": MODEL, "prompt": "a", "max_tokens": 1}).encode()
        for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
            with self.subTest(content_type=content_type):
                got, out, _ = raw("POST", "/v1/completions", body, {"Content-Type": content_type})
                self.assertEqual(got, 200, out)
                self.assertEqual(out["object"], "text_completion")
        got, err, _ = raw("POST", "/v1/completions", b"model=x&prompt=a", {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(got, 400, err)

    def test_a_prompt_surely_over_the_context_is_refused_unread(self):
        # 5 MB of text cannot fit the context whatever it encodes to: refused from its length
        # (the message says "at least"), before seconds of tokenizing; chat and completions each
        # name their own field.
        text = "word " * 1_000_000
        for path, body, param in (
            ("/v1/completions", {"model": MODEL, "prompt": text}, "prompt"),
            ("/v1/completions", {"model": MODEL, "prompt": ["short", text]}, "prompt"),
            ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": text}]}, "messages"),
        ):
            with self.subTest(path=path, param=param):
                got, err, _ = raw("POST", path, json.dumps(body).encode())
                self.assertEqual(got, 400, err)
                self.assertEqual(err["error"]["param"], param, err)
                self.assertEqual(err["error"]["code"], "context_length_exceeded", err)
                self.assertIn("at least", err["error"]["message"], err)

    def test_too_large_body_is_413(self):
        # Announced the way curl announces large bodies (`Expect: 100-continue`): the server
        # answers from Content-Length alone, before any of the body is sent. Sending the 9 MiB
        # outright races the server, which answers 413 and closes while the client still writes
        # (a broken pipe on the client, as with any HTTP server that does not drain refused bodies).
        host, port = urllib.parse.urlsplit(BASE).netloc.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.putrequest("POST", "/v1/completions")
        conn.putheader("Authorization", f"Bearer {KEY}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(9 << 20))
        conn.putheader("Expect", "100-continue")
        conn.endheaders()
        r = conn.getresponse()
        err = json.loads(r.read())
        conn.close()
        self.assertEqual(r.status, 413, err)
        self.assertEqual(err["error"]["code"], "payload_too_large")

    def test_request_id_is_echoed(self):
        _, _, headers = raw("GET", "/v1/models", headers={"x-request-id": "e2e-42"})
        self.assertEqual(headers.get("x-request-id"), "e2e-42")
        _, _, headers = raw("GET", "/v1/models")
        self.assertTrue(headers.get("x-request-id", "").startswith("req-"))


class AuthAndMetrics(unittest.TestCase):
    def test_wrong_key_is_401(self):
        bad = openai.OpenAI(base_url=BASE, api_key="wrong", max_retries=0)
        with self.assertRaises(openai.AuthenticationError) as ctx:
            bad.models.list()
        self.assertEqual(ctx.exception.body.get("code"), "invalid_api_key")

    def test_a_non_streamed_request_whose_client_left_is_cancelled(self):
        # A long prompt, not streamed: the client closes its socket while the prompt is still
        # being computed. The request must leave the engine then (blocks freed, nothing
        # generated), not run its prefill and all of max_tokens for nobody.
        before = wait_until_idle()
        prompt = "The history of the city is long and full of events. " * 250
        body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 200, "ignore_eos": True}).encode()
        url = urllib.parse.urlparse(BASE)
        s = socket.create_connection((url.hostname, url.port))
        s.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
        deadline = time.time() + 30
        while metric(metrics(), "vllm:num_requests_running") < 1:
            self.assertLess(time.time(), deadline, "the request never ran")
            time.sleep(0.05)
        s.close()
        after = wait_until_idle(timeout=10)
        generated = metric(after, "vllm:generation_tokens_total") - metric(before, "vllm:generation_tokens_total")
        self.assertLess(generated, 200, "the request ran to max_tokens after its client left")

    def test_disconnect_frees_blocks_and_metrics_count(self):
        chat(max_tokens=2, extra_body={"ignore_eos": True})  # One request that finishes by length.
        before = wait_until_idle()
        stream = chat(max_tokens=400, stream=True, extra_body={"ignore_eos": True})
        got = 0
        for chunk in stream:
            got += 1
            if got == 4:
                break
        stream.close()  # The client goes away mid-generation.
        after = wait_until_idle()
        generated = metric(after, "vllm:generation_tokens_total") - metric(before, "vllm:generation_tokens_total")
        self.assertGreaterEqual(generated, 3)
        self.assertLess(generated, 400, "the aborted request kept generating")
        ok = after[("http_requests_total", (("handler", "/v1/chat/completions"), ("status", "200")))]
        self.assertGreaterEqual(ok, 1)
        self.assertGreater(metric(after, "wick:kv_cache_blocks_total"), 0)
        self.assertGreaterEqual(metric(after, "vllm:time_to_first_token_seconds_count"), 1)
        self.assertGreaterEqual(metric(after, "vllm:request_success_total", finished_reason="length"), 1)
        # Queue time is observed for finished requests and is part of their end-to-end latency.
        self.assertGreaterEqual(metric(after, "vllm:request_queue_time_seconds_count"), 1)
        self.assertLessEqual(
            metric(after, "vllm:request_queue_time_seconds_sum"), metric(after, "vllm:e2e_request_latency_seconds_sum")
        )


if __name__ == "__main__":
    unittest.main(verbosity=2)
