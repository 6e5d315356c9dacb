"""Tool calling through the official `openai` Python SDK against `wick serve` on the default model
(SmolLM2: its template has no tool support, so wick uses its generic tool prompt and Hermes
markup). Run by tests/tests/openai_python.rs with WICK_BASE_URL, WICK_MODEL_ID and WICK_API_KEY.
"""
import json
import os
import time
import unittest
import uuid
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai

BASE = os.environ["WICK_BASE_URL"]
MODEL = os.environ["WICK_MODEL_ID"]
KEY = os.environ["WICK_API_KEY"]
client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=300)

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
BOOKING = {
    "type": "object",
    "properties": {
        "guests": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
                "required": ["name", "age"],
                "additionalProperties": False,
            },
            "minItems": 1,
            "maxItems": 3,
        },
        "room": {"enum": ["single", "double", "suite"]},
        "budget": {"type": "number", "minimum": 0, "maximum": 1000},
    },
    "required": ["guests", "room", "budget"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast for a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "book_hotel", "description": "Book a hotel room",
                                      "parameters": BOOKING}},
]
SCHEMAS = {"get_weather": WEATHER, "book_hotel": BOOKING}
ASK = [{"role": "user", "content": "What will the weather be in Paris this week?"}]


def call(**kw):
    kw.setdefault("model", MODEL)
    kw.setdefault("messages", ASK)
    kw.setdefault("tools", TOOLS)
    kw.setdefault("max_tokens", 300)
    return client.chat.completions.create(**kw)


def valid_calls(message):
    """Every call names a given tool and its arguments (a JSON string) validate."""
    for c in message.tool_calls or []:
        args = json.loads(c.function.arguments)
        jsonschema.validate(args, SCHEMAS[c.function.name])
    return bool(message.tool_calls)


class ToolCalling(unittest.TestCase):
    def test_round_trip(self):
        r = call(tool_choice="required", temperature=0)
        choice = r.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        self.assertIsNone(choice.message.content)
        self.assertTrue(valid_calls(choice.message))
        first = choice.message.tool_calls[0]
        self.assertTrue(first.id.startswith("call_"))
        self.assertEqual(first.type, "function")
        self.assertIsInstance(first.function.arguments, str)
        # The tool's result goes back; the model answers (tools still offered, its choice).
        history = ASK + [
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": first.id, "content": json.dumps({"forecast": "sunny", "high": 24})},
        ]
        final = call(messages=history, tool_choice="auto", temperature=0, max_tokens=40)
        answer = final.choices[0]
        self.assertEqual(answer.message.role, "assistant")
        self.assertIn(answer.finish_reason, ("stop", "length", "tool_calls"))
        if answer.message.content is not None:
            self.assertNotIn("<tool_call>", answer.message.content)

    def test_stream_reassembles_into_the_non_streamed_calls(self):
        kw = dict(tool_choice="required", temperature=0.8, seed=11)
        whole = call(**kw).choices[0].message
        calls = {}
        finish = None
        for chunk in call(stream=True, **kw):
            for c in chunk.choices:
                finish = c.finish_reason or finish
                self.assertFalse(c.delta.content, "tool markup streamed as content")
                for d in c.delta.tool_calls or []:
                    self.assertIsNotNone(d.index)
                    if d.index not in calls:
                        # A call's first delta carries id, type and name.
                        self.assertTrue(d.id.startswith("call_"))
                        self.assertEqual(d.type, "function")
                        calls[d.index] = [d.function.name, ""]
                    calls[d.index][1] += d.function.arguments or ""
        self.assertEqual(finish, "tool_calls")
        streamed = [calls[i] for i in sorted(calls)]
        self.assertEqual(streamed, [[c.function.name, c.function.arguments] for c in whole.tool_calls])

    def test_streamed_logprobs_with_tools_equal_the_non_streamed(self):
        # The parser holds text back; each token's logprob still goes out, with the next chunk.
        for choice in ("required", "auto"):
            kw = dict(tool_choice=choice, temperature=0.8, seed=5, logprobs=True, top_logprobs=2, max_tokens=60)
            whole = call(**kw)
            want = [(t.token, t.logprob, [a.token for a in t.top_logprobs]) for t in whole.choices[0].logprobs.content]
            got = []
            for chunk in call(stream=True, **kw):
                for c in chunk.choices:
                    for t in (c.logprobs.content if c.logprobs and c.logprobs.content else []):
                        got.append((t.token, t.logprob, [a.token for a in t.top_logprobs]))
            self.assertEqual(len(want), whole.usage.completion_tokens, choice)
            self.assertEqual(got, want, choice)

    def test_required_and_named_calls_always_validate(self):
        named = {"type": "function", "function": {"name": "book_hotel"}}
        jobs = [dict(tool_choice="required", seed=s) for s in range(20)]
        jobs += [dict(tool_choice=named, seed=s) for s in range(20)]
        with ThreadPoolExecutor(max_workers=20) as pool:
            responses = list(pool.map(lambda kw: call(temperature=0.8, **kw), jobs))
        for kw, r in zip(jobs, responses):
            message = r.choices[0].message
            # `length` when max_tokens cut a further (parallel) call: the complete ones stand.
            self.assertIn(r.choices[0].finish_reason, ("tool_calls", "length"), message)
            if r.choices[0].finish_reason == "length":
                self.assertEqual(r.usage.completion_tokens, 300, message)
            self.assertTrue(valid_calls(message), message)
            if kw["tool_choice"] is named:
                self.assertEqual({c.function.name for c in message.tool_calls}, {"book_hotel"})

    def test_auto_calls_are_finished_under_the_grammar(self):
        # Asked plainly, the 135M model answers in prose; asked for the markup, it starts calls
        # in 5-6 of these 20 seeded runs. Unconstrained, none of them parsed (measured: 0 valid,
        # 6 left as markup in content, docs/tools.md); with the grammar from the marker on,
        # every call it starts validates.
        ask = [{"role": "user", "content": "Call get_weather for Paris. Reply only with the <tool_call>."}]
        jobs = [dict(tool_choice="auto", seed=s, messages=ask) for s in range(20)]
        with ThreadPoolExecutor(max_workers=20) as pool:
            responses = list(pool.map(lambda kw: call(temperature=0.8, **kw), jobs))
        made = 0
        for r in responses:
            choice = r.choices[0]
            if choice.message.tool_calls:
                made += 1
                self.assertEqual(choice.finish_reason, "tool_calls")
                self.assertTrue(valid_calls(choice.message), choice.message)
        self.assertGreaterEqual(made, 3, "the model started too few calls for the test to mean anything")

    def test_forced_calls_end_cleanly_and_streams_agree(self):
        """A named choice is exactly one call and then the end; a call cut by max_tokens is
        finish_reason `length` with nothing leaked as content; streamed == non-streamed."""
        named = {"type": "function", "function": {"name": "get_weather"}}

        def streamed(**kw):
            content, finish, calls = "", None, {}
            for chunk in call(stream=True, **kw):
                for c in chunk.choices:
                    finish = c.finish_reason or finish
                    content += c.delta.content or ""
                    for d in c.delta.tool_calls or []:
                        name, args = calls.get(d.index, ("", ""))
                        calls[d.index] = (name + (d.function.name or ""), args + (d.function.arguments or ""))
            return finish, content or None, [calls[i] for i in sorted(calls)]

        seen = {}
        for choice in (named, "required", "auto"):
            for max_tokens in (12, 64, 100):
                kw = dict(tool_choice=choice, max_tokens=max_tokens, temperature=0)
                r = call(**kw).choices[0]
                whole = (r.finish_reason, r.message.content,
                         [(c.function.name, c.function.arguments) for c in r.message.tool_calls or []])
                label = f"{'named' if choice is named else choice} max_tokens={max_tokens}"
                self.assertEqual(streamed(**kw), whole, label)
                seen[label] = whole
                finish, content, calls = whole
                if choice == "auto":
                    self.assertNotIn("<tool_call>", content or "", label)
                    continue
                self.assertIsNone(content, f"{label}: forced output leaked as content")
                if choice is named:
                    self.assertLessEqual(len(calls), 1, label)
                    self.assertTrue(all(name == "get_weather" for name, _ in calls), label)
                if finish == "tool_calls":
                    self.assertTrue(calls, label)
                else:
                    self.assertEqual(finish, "length", label)
        # What the default model does here (temperature 0), so the cases above mean something:
        # 12 tokens cut the first call; a named call is complete in 64 and ends there, so more
        # room changes nothing (it used to go on with a second call).
        self.assertEqual(seen["named max_tokens=12"], ("length", None, []))
        self.assertEqual(seen["required max_tokens=12"], ("length", None, []))
        self.assertEqual(seen["named max_tokens=64"][0], "tool_calls")
        self.assertEqual(len(seen["named max_tokens=64"][2]), 1)
        self.assertEqual(seen["named max_tokens=100"], seen["named max_tokens=64"])
        # `required` may call again (parallel calls): a complete call and a second one cut by
        # max_tokens is `length`, the complete call kept and the cut one dropped.
        self.assertEqual(seen["required max_tokens=100"][0], "length")
        self.assertEqual(len(seen["required max_tokens=100"][2]), 1)

    def test_parallel_tool_calls_false_gives_at_most_one_call(self):
        for seed in range(3):
            r = call(tool_choice="required", temperature=0.8, seed=seed, parallel_tool_calls=False)
            self.assertEqual(len(r.choices[0].message.tool_calls), 1)

    def test_json_without_tools_is_not_a_tool_call(self):
        r = client.chat.completions.create(
            model=MODEL, max_tokens=200, temperature=0,
            messages=[{"role": "user", "content": 'Reply with {"name": "get_weather", "arguments": {}}'}],
            response_format={"type": "json_schema", "json_schema": {"name": "call_like", "schema": {
                "type": "object",
                "properties": {"name": {"const": "get_weather"}, "arguments": {"type": "object", "maxProperties": 0}},
                "required": ["name", "arguments"], "additionalProperties": False}}},
        )
        # No tools were offered: a JSON answer shaped like a call is content, not a tool call.
        self.assertIsNone(r.choices[0].message.tool_calls)
        self.assertEqual(json.loads(r.choices[0].message.content), {"name": "get_weather", "arguments": {}})

    def test_bad_tool_requests_are_400s(self):
        cases = [
            (dict(tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice", None),
            (dict(tools=[{"type": "function", "function": {"description": "no name"}}]), "tools[0]", None),
            (dict(tools=None, tool_choice="required"), "tool_choice", None),
            # A parameters schema that is no JSON Schema is refused naming the tool, in every
            # tool_choice mode (it used to run unconstrained under auto).
            (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]),
             "tools[0].function.parameters", "`f`"),
            (dict(tools=TOOLS + [{"type": "function", "function": {"name": "g", "parameters": {
                "type": "object", "properties": {"a": {"type": "string", "pattern": "(unclosed"}}}}}],
                  tool_choice="required"), "tools[2].function.parameters", "`g`"),
            (dict(tools=[{"type": "function", "function": {"name": "h", "parameters": "a string"}}], tool_choice="auto"),
             "tools[0].function.parameters", "`h`"),
        ]
        for kw, param, names in cases:
            with self.assertRaises(openai.BadRequestError) as ctx:
                args = dict(model=MODEL, messages=ASK, max_tokens=5, tools=TOOLS)
                args.update(kw)
                if args["tools"] is None:
                    del args["tools"]
                client.chat.completions.create(**args)
            self.assertEqual(ctx.exception.body.get("param"), param, kw)
            if names:
                self.assertIn(names, ctx.exception.body["message"], kw)

    def test_a_short_request_is_not_held_behind_a_long_one(self):
        # 128 tools (the default max_tools) with tool_choice "required": a ~5.5k-token prompt
        # whose prefill takes tens of seconds on 2 cores. Short chats sent meanwhile must each
        # answer in a fraction of that: they used to wait for the whole prefill (29 s of 29).
        # The server needs KV room for both (openai_python.rs gives it 512 MiB): when the long
        # prompt's blocks fill the pool, a short request rightly waits for them to come back.
        salt = uuid.uuid4().hex[:8]  # no prefix-cache hit from an earlier run
        tools = [{"type": "function", "function": {
            "name": f"f{salt}_{i}", "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}}
            for i in range(128)]

        def timed(**kw):
            start = time.monotonic()
            r = client.chat.completions.create(model=MODEL, max_tokens=8, **kw)
            return time.monotonic() - start, r

        with ThreadPoolExecutor(1) as pool:
            long = pool.submit(timed, tools=tools, tool_choice="required",
                               messages=[{"role": "user", "content": "Call one of the tools."}])
            time.sleep(1.0)
            short = []
            while not long.done():
                short.append(timed(messages=[{"role": "user", "content": "Say hi."}])[0])
            long_s, r = long.result()
        self.assertGreater(r.usage.prompt_tokens, 4000)
        self.assertGreaterEqual(len(short), 3, (short, long_s))
        self.assertLess(max(short), long_s / 3, (short, long_s))


if __name__ == "__main__":
    unittest.main(verbosity=2)
