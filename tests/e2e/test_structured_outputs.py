"""Structured outputs (`response_format`) through the official `openai` Python SDK, against a
running `wick serve` on the default model (a 135M model: without constraints it rarely produces
valid JSON; with them it always must).

Run by tests/tests/openai_python.rs with WICK_BASE_URL, WICK_MODEL_ID and WICK_API_KEY set.
"""
import json
import os
import unittest
from concurrent.futures import ThreadPoolExecutor
from typing import List, Literal

import jsonschema
import openai
import pydantic

BASE = os.environ["WICK_BASE_URL"]
MODEL = os.environ["WICK_MODEL_ID"]
KEY = os.environ["WICK_API_KEY"]
client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=300)

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "score": {"type": "number", "minimum": 0, "maximum": 100},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "zip": {"type": "integer", "minimum": 0, "maximum": 99999}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "role", "score", "tags", "address"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
MESSAGES = [{"role": "user", "content": "Describe a user of our system as JSON."}]


def person(seed, **kw):
    return client.chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0.8, seed=seed, max_tokens=300, response_format=FORMAT, **kw
    )


class StructuredOutputs(unittest.TestCase):
    def test_json_schema_20_seeded_runs_validate(self):
        with ThreadPoolExecutor(max_workers=20) as pool:
            responses = list(pool.map(person, range(20)))
        for r in responses:
            choice = r.choices[0]
            self.assertEqual(choice.finish_reason, "stop", choice.message.content)
            jsonschema.validate(json.loads(choice.message.content), SCHEMA)
        # Sampling at 0.8 with different seeds: not one answer repeated 20 times.
        self.assertGreater(len({r.choices[0].message.content for r in responses}), 1)

    def test_stream_equals_non_stream_for_the_same_seed(self):
        whole = person(5).choices[0].message.content
        streamed = "".join(c.choices[0].delta.content or "" for c in person(5, stream=True) if c.choices)
        self.assertEqual(streamed, whole)
        jsonschema.validate(json.loads(streamed), SCHEMA)

    def test_sdk_parse_with_a_pydantic_model(self):
        # Bounded fields: a 135M model can repeat a digit or a list item until max_tokens.
        class Address(pydantic.BaseModel):
            city: str = pydantic.Field(max_length=20)
            zip: int = pydantic.Field(ge=0, le=99999)

        class Pet(pydantic.BaseModel):
            name: str = pydantic.Field(max_length=20)
            species: Literal["cat", "dog", "bird"]
            ages: List[int] = pydantic.Field(max_length=3)
            home: Address

        r = client.chat.completions.parse(
            model=MODEL,
            messages=[{"role": "user", "content": "Tell me about a pet."}],
            response_format=Pet,
            temperature=0,
            max_tokens=300,
        )
        self.assertIsInstance(r.choices[0].message.parsed, Pet)

    def test_json_object_parses_on_both_endpoints(self):
        r = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=300, temperature=0.8, seed=3, n=4,
            response_format={"type": "json_object"},
        )
        # Any object: strings are unbounded, so a choice may run to max_tokens inside one; every
        # choice that ends by itself is a complete object.
        stopped = [c for c in r.choices if c.finish_reason == "stop"]
        self.assertGreaterEqual(len(stopped), 2, [c.message.content for c in r.choices])
        for c in stopped:
            self.assertIsInstance(json.loads(c.message.content), dict)
        r = client.completions.create(
            model=MODEL, prompt="A JSON object describing a cat:", max_tokens=300, temperature=0,
            extra_body={"response_format": {"type": "json_object"}},
        )
        self.assertEqual(r.choices[0].finish_reason, "stop", r.choices[0].text)
        self.assertIsInstance(json.loads(r.choices[0].text), dict)

    def test_recursive_schemas_compile_and_their_answers_validate(self):
        # $ref recursion, to the root and through $defs: llguidance compiles them lazily, so the
        # request starts at once (it used to be feared to take seconds and then fail with
        # NoExtensionBias). A small model may nest until max_tokens: what ends must validate.
        tree = {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 12},
            "children": {"type": "array", "items": {"$ref": "#"}, "maxItems": 2}},
            "required": ["name", "children"], "additionalProperties": False}
        chain = {"$defs": {"node": {"type": "object", "properties": {
            "v": {"type": "integer", "minimum": 0, "maximum": 9},
            "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}},
            "required": ["v", "next"], "additionalProperties": False}}, "$ref": "#/$defs/node"}
        ended = 0
        for name, schema, seeds in [("tree", tree, 6), ("chain", chain, 2)]:
            fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
            for seed in range(seeds):
                r = client.chat.completions.create(
                    model=MODEL, seed=seed, temperature=1.0, max_tokens=300, response_format=fmt,
                    messages=[{"role": "user", "content": f"Give a small {name} as JSON."}])
                choice = r.choices[0]
                self.assertIn(choice.finish_reason, ("stop", "length"))
                if choice.finish_reason == "stop":
                    jsonschema.validate(json.loads(choice.message.content), schema)
                    ended += 1
        self.assertGreater(ended, 0)

    def test_bad_formats_are_400s_naming_the_param(self):
        cases = [
            ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}, "response_format"),
            ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.schema"),
            ({"type": "yaml"}, "response_format.type"),
        ]
        for fmt, param in cases:
            with self.assertRaises(openai.BadRequestError) as ctx:
                client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, response_format=fmt)
            self.assertEqual(ctx.exception.body.get("param"), param, fmt)

    def test_tool_history_renders_and_malformed_calls_are_400s(self):
        tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        # A conversation that already holds a call and its result renders (arguments as the JSON
        # string OpenAI sends); a malformed call is a 400 naming the message.
        call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
        history = MESSAGES + [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ]
        r = client.chat.completions.create(model=MODEL, messages=history, max_tokens=3, tools=[tool],
                                           tool_choice="none")
        self.assertEqual(len(r.choices), 1)
        history[1] = {"role": "assistant", "content": None, "tool_calls": [{"type": "function"}]}
        with self.assertRaises(openai.BadRequestError) as ctx:
            client.chat.completions.create(model=MODEL, messages=history, max_tokens=3)
        self.assertEqual(ctx.exception.body.get("param"), "messages[1].tool_calls")


if __name__ == "__main__":
    unittest.main(verbosity=2)
