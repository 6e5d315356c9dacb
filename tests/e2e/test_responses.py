"""The Responses API (/v1/responses) through the official `openai` Python SDK against `wick serve`
on the default model (SmolLM2: tiny, so these tests check structure and consistency, never the
quality of an answer). Run by tests/tests/openai_python.rs with WICK_BASE_URL, WICK_MODEL_ID and
WICK_API_KEY.
"""
import json
import os
import unittest
import urllib.error
import urllib.request

import jsonschema
import openai
import pydantic
from prometheus_client.parser import text_string_to_metric_families

BASE = os.environ["WICK_BASE_URL"]
MODEL = os.environ["WICK_MODEL_ID"]
KEY = os.environ["WICK_API_KEY"]
ROOT = BASE.rsplit("/v1", 1)[0]
client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, timeout=300)

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather forecast for a city",
          "parameters": WEATHER, "strict": True}]
ASK = "What will the weather be in Paris tomorrow?"


def create(**kw):
    kw.setdefault("model", MODEL)
    kw.setdefault("temperature", 0)
    return client.responses.create(**kw)


def raw(method, path, body=None):
    """A request the SDK cannot make (malformed JSON): (status, parsed JSON body)."""
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    req = urllib.request.Request(ROOT + path, data=body, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def metrics():
    text = urllib.request.urlopen(ROOT + "/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(m, name, **labels):
    """A sample by name and labels; the engine's (vllm:*) carry the model's name, HTTP's do not."""
    if name.startswith("vllm:"):
        labels = {"model_name": MODEL, **labels}
    return m.get((name, tuple(sorted(labels.items()))), 0)


def calls(response):
    return [(o.name, o.arguments) for o in response.output if o.type == "function_call"]


class Create(unittest.TestCase):
    def test_text_response_and_echoed_settings(self):
        r = create(input="Say hello in one short sentence.", max_output_tokens=40, top_p=0.9,
                   instructions="You are terse.", metadata={"case": "text"})
        self.assertTrue(r.id.startswith("resp_"))
        self.assertEqual(r.object, "response")
        self.assertIn(r.status, ("completed", "incomplete"))
        self.assertEqual([o.type for o in r.output], ["message"])
        message = r.output[0]
        self.assertEqual(message.role, "assistant")
        self.assertEqual(message.content[0].type, "output_text")
        self.assertEqual(message.content[0].annotations, [])
        self.assertTrue(r.output_text)
        self.assertEqual(r.output_text, message.content[0].text)
        u = r.usage
        self.assertGreater(u.input_tokens, 0)
        self.assertLessEqual(u.output_tokens, 40)
        self.assertEqual(u.total_tokens, u.input_tokens + u.output_tokens)
        self.assertEqual(u.output_tokens_details.reasoning_tokens, 0)
        self.assertGreaterEqual(u.input_tokens_details.cached_tokens, 0)
        # The request's settings come back as OpenAI echoes them.
        self.assertEqual((r.model, r.temperature, r.top_p, r.max_output_tokens), (MODEL, 0, 0.9, 40))
        self.assertEqual((r.instructions, r.metadata), ("You are terse.", {"case": "text"}))
        self.assertEqual((r.tool_choice, r.tools, r.parallel_tool_calls, r.store), ("auto", [], True, True))
        self.assertEqual(r.text.format.type, "text")
        self.assertIsNone(r.previous_response_id)

    def test_max_output_tokens_is_incomplete(self):
        r = create(input="Write a long story about a dragon who learns to bake bread.", max_output_tokens=8)
        self.assertEqual(r.status, "incomplete")
        self.assertEqual(r.incomplete_details.reason, "max_output_tokens")
        self.assertEqual(r.usage.output_tokens, 8)
        self.assertEqual(r.output[0].status, "incomplete")
        self.assertTrue(r.output_text)

    def test_items_input_equals_the_same_conversation_as_a_string(self):
        text = "Name one colour."
        a = create(input=text, max_output_tokens=16)
        b = create(input=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}],
                   max_output_tokens=16)
        self.assertEqual((a.output_text, a.usage.input_tokens), (b.output_text, b.usage.input_tokens))

    def test_logprobs_on_request(self):
        r = create(input="Say yes.", max_output_tokens=6, include=["message.output_text.logprobs"], top_logprobs=2)
        logprobs = r.output[0].content[0].logprobs
        self.assertEqual(len(logprobs), r.usage.output_tokens)
        self.assertTrue(all(len(t.top_logprobs) == 2 for t in logprobs))
        self.assertEqual("".join(t.token for t in logprobs), r.output_text)


class Stream(unittest.TestCase):
    def events_and_final(self, **kw):
        kw.setdefault("model", MODEL)
        kw.setdefault("temperature", 0)
        with client.responses.stream(**kw) as stream:
            events = list(stream)
            final = stream.get_final_response()
        return events, final

    def test_stream_reassembles_into_the_non_streamed_text(self):
        kw = dict(input="Say hello in one short sentence.", max_output_tokens=60)
        whole = create(**kw)
        self.assertEqual(whole.status, "completed", "the prompt must finish within max_output_tokens")
        events, final = self.events_and_final(**kw)
        types = [e.type for e in events]
        self.assertEqual(types[:4], ["response.created", "response.in_progress", "response.output_item.added",
                                     "response.content_part.added"])
        self.assertEqual(types[-4:], ["response.output_text.done", "response.content_part.done",
                                      "response.output_item.done", "response.completed"])
        self.assertEqual([e.sequence_number for e in events], list(range(len(events))))
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        self.assertEqual(deltas, whole.output_text)
        self.assertEqual(final.output_text, whole.output_text)
        self.assertEqual(final.usage.output_tokens, whole.usage.output_tokens)
        self.assertTrue(final.id.startswith("resp_"))
        # A streamed response is stored like any other.
        self.assertEqual(client.responses.retrieve(final.id).output_text, whole.output_text)

    def test_streamed_function_call_equals_the_non_streamed(self):
        kw = dict(input=ASK, tools=TOOLS, tool_choice="required", max_output_tokens=200)
        whole = create(**kw)
        events, final = self.events_and_final(**kw)
        types = [e.type for e in events]
        self.assertIn("response.function_call_arguments.delta", types)
        self.assertIn("response.function_call_arguments.done", types)
        self.assertNotIn("response.output_text.delta", types)
        args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        self.assertEqual(calls(final), calls(whole))
        self.assertEqual(args, "".join(a for _, a in calls(whole)))

    def test_streamed_logprobs_equal_the_non_streamed(self):
        kw = dict(input="Say yes.", max_output_tokens=6, include=["message.output_text.logprobs"], top_logprobs=2)
        whole = create(**kw)
        want = [(t.token, t.logprob, [a.token for a in t.top_logprobs]) for t in whole.output[0].content[0].logprobs]
        # Not the stream helper: at 6 tokens the answer may be cut (`response.incomplete`).
        events = list(client.responses.create(model=MODEL, temperature=0, stream=True, **kw))
        got = [(t.token, t.logprob, [a.token for a in t.top_logprobs or []])
               for e in events if e.type == "response.output_text.delta" for t in e.logprobs]
        self.assertEqual(len(want), whole.usage.output_tokens)
        self.assertEqual([(t, round(l, 4), a) for t, l, a in got], [(t, round(l, 4), a) for t, l, a in want])

    def test_sse_event_lines_name_each_event(self):
        body = json.dumps({"model": MODEL, "input": "Hi", "max_output_tokens": 4, "stream": True}).encode()
        h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        req = urllib.request.Request(ROOT + "/v1/responses", data=body, method="POST", headers=h)
        with urllib.request.urlopen(req, timeout=60) as r:
            self.assertTrue(r.headers["content-type"].startswith("text/event-stream"))
            text = r.read().decode()
        blocks = [b for b in text.split("\n\n") if b.strip() and not b.startswith(":")]
        names = []
        for block in blocks:
            lines = dict(line.split(": ", 1) for line in block.splitlines())
            data = json.loads(lines["data"])
            self.assertEqual(lines["event"], data["type"])
            names.append(data["type"])
        self.assertEqual(names[0], "response.created")
        self.assertIn(names[-1], ("response.completed", "response.incomplete"))

    def test_incomplete_stream_ends_with_response_incomplete(self):
        stream = client.responses.create(model=MODEL, input="Write a long story about a dragon.",
                                         max_output_tokens=5, temperature=0, stream=True)
        events = list(stream)
        self.assertEqual(events[-1].type, "response.incomplete")
        self.assertEqual(events[-1].response.incomplete_details.reason, "max_output_tokens")
        self.assertEqual(events[-1].response.usage.output_tokens, 5)


class Conversation(unittest.TestCase):
    def test_previous_response_id_is_the_conversation_prefix(self):
        first_q, second_q = "My name is Ada. Say hi to me.", "What is my name?"
        first = create(input=first_q, max_output_tokens=24)
        second = create(input=second_q, previous_response_id=first.id, max_output_tokens=24)
        self.assertEqual(second.previous_response_id, first.id)
        # The same conversation sent whole (stateless) is the same prompt and answer.
        resent = create(input=[{"role": "user", "content": first_q},
                               {"role": "assistant", "content": first.output_text},
                               {"role": "user", "content": second_q}], max_output_tokens=24)
        self.assertEqual(second.usage.input_tokens, resent.usage.input_tokens)
        self.assertEqual(second.output_text, resent.output_text)
        self.assertGreater(second.usage.input_tokens, first.usage.input_tokens + 5)

    def test_item_reference_is_the_stored_item(self):
        first_q, second_q = "My name is Ada. Say hi to me.", "What is my name?"
        first = create(input=first_q, max_output_tokens=24)
        answer = first.output[0]
        asked = client.responses.input_items.list(first.id).data[0]
        # An output item and an input item of a stored response, named by id: the same
        # conversation as the items sent whole.
        referenced = create(input=[{"type": "item_reference", "id": asked.id},
                                   {"type": "item_reference", "id": answer.id},
                                   {"role": "user", "content": second_q}], max_output_tokens=24)
        resent = create(input=[{"role": "user", "content": first_q},
                               {"role": "assistant", "content": first.output_text},
                               {"role": "user", "content": second_q}], max_output_tokens=24)
        self.assertEqual(referenced.usage.input_tokens, resent.usage.input_tokens)
        self.assertEqual(referenced.output_text, resent.output_text)
        # The new response's input is the items themselves, ids kept.
        items = client.responses.input_items.list(referenced.id, order="asc").data
        self.assertEqual([i.id for i in items[:2]], [asked.id, answer.id])
        self.assertEqual(items[1].content[0].text, first.output_text)
        # A call item named by reference can be answered.
        call = create(input=ASK, tools=TOOLS, tool_choice="required", max_output_tokens=200).output[0]
        output = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
        done = create(input=[{"role": "user", "content": ASK}, {"type": "item_reference", "id": call.id}, output],
                      tools=TOOLS, tool_choice="none", max_output_tokens=8)
        self.assertEqual(done.output[0].type, "message")
        # Unknown, or gone with its deleted response: OpenAI's 404 naming the item.
        with self.assertRaises(openai.NotFoundError) as e:
            create(input=[{"role": "user", "content": "hi"}, {"type": "item_reference", "id": "msg_nope"}])
        self.assertEqual(e.exception.body["param"], "input[1].id")
        self.assertIn("msg_nope", e.exception.body["message"])
        lone = create(input="Hi", max_output_tokens=4)
        client.responses.delete(lone.id)
        with self.assertRaises(openai.NotFoundError) as e:
            create(input=[{"type": "item_reference", "id": lone.output[0].id}], max_output_tokens=4)
        self.assertEqual(e.exception.body["param"], "input[0].id")
        # An item lives while a stored response has it: `referenced` has `answer` as input.
        client.responses.delete(first.id)
        again = create(input=[{"type": "item_reference", "id": answer.id}], max_output_tokens=4)
        self.assertEqual(client.responses.input_items.list(again.id).data[0].id, answer.id)

    def test_function_call_round_trip(self):
        r = create(input=ASK, tools=TOOLS, tool_choice="required", max_output_tokens=200)
        self.assertEqual(r.status, "completed")
        fc = [o for o in r.output if o.type == "function_call"]
        self.assertTrue(fc)
        self.assertEqual([o.type for o in r.output], ["function_call"] * len(fc), "a forced call has no text")
        call = fc[0]
        self.assertEqual(call.name, "get_weather")
        self.assertTrue(call.call_id.startswith("call_"))
        self.assertTrue(call.id.startswith("fc_"))
        self.assertEqual(call.status, "completed")
        jsonschema.validate(json.loads(call.arguments), WEATHER)
        output = {"type": "function_call_output", "call_id": call.call_id,
                  "output": json.dumps({"forecast": "sunny", "high": 24})}
        answer = create(previous_response_id=r.id, input=[output], tools=TOOLS, tool_choice="none",
                        max_output_tokens=40)
        self.assertEqual([o.type for o in answer.output], ["message"])
        self.assertTrue(answer.output_text)
        # The same round trip without the store: the call item sent back as input.
        stateless = create(input=[{"role": "user", "content": ASK}, call.model_dump(exclude_none=True), output],
                           tools=TOOLS, tool_choice="none", max_output_tokens=40)
        self.assertEqual(stateless.output_text, answer.output_text)
        self.assertEqual(stateless.usage.input_tokens, answer.usage.input_tokens)

    def test_parse_with_a_pydantic_model(self):
        class City(pydantic.BaseModel):
            model_config = pydantic.ConfigDict(extra="forbid")
            name: str = pydantic.Field(max_length=20)
            country: str = pydantic.Field(max_length=20)
            capital: bool

        r = client.responses.parse(model=MODEL, input="Describe the city of Paris as JSON.", text_format=City,
                                   temperature=0, max_output_tokens=120)
        self.assertEqual(r.status, "completed")
        self.assertIsInstance(r.output_parsed, City)
        self.assertEqual(r.text.format.type, "json_schema")
        self.assertEqual(City.model_validate_json(r.output_text), r.output_parsed)

    def test_json_object_format(self):
        r = create(input="Give a JSON object with a key a.", text={"format": {"type": "json_object"}},
                   max_output_tokens=60)
        if r.status == "completed":
            self.assertIsInstance(json.loads(r.output_text), dict)
        self.assertTrue(r.output_text.lstrip().startswith("{"))


class Store(unittest.TestCase):
    def test_retrieve_input_items_delete(self):
        items = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
        r = create(input=items, max_output_tokens=8)
        got = client.responses.retrieve(r.id)
        self.assertEqual((got.id, got.output_text, got.status), (r.id, r.output_text, r.status))
        listed = client.responses.input_items.list(r.id)
        self.assertEqual([i.role for i in listed.data], ["user", "developer"], "newest first by default")
        self.assertEqual(listed.data[0].content[0].text, "Hi!")
        self.assertTrue(all(i.id for i in listed.data))
        asc = client.responses.input_items.list(r.id, order="asc", limit=1)
        self.assertEqual(([i.role for i in asc.data], asc.has_more), (["developer"], True))
        after = client.responses.input_items.list(r.id, order="asc", after=asc.data[0].id)
        self.assertEqual(([i.role for i in after.data], after.has_more), (["user"], False))
        client.responses.delete(r.id)
        with self.assertRaises(openai.NotFoundError):
            client.responses.retrieve(r.id)
        with self.assertRaises(openai.NotFoundError) as e:
            create(input="again", previous_response_id=r.id, max_output_tokens=4)
        self.assertEqual(e.exception.body["param"], "previous_response_id")
        status, body = raw("DELETE", f"/v1/responses/{r.id}")
        self.assertEqual((status, body["error"]["type"]), (404, "invalid_request_error"))

    def test_store_false_is_not_stored(self):
        r = create(input="Hi", max_output_tokens=4, store=False)
        self.assertFalse(r.store)
        with self.assertRaises(openai.NotFoundError):
            client.responses.retrieve(r.id)


class Errors(unittest.TestCase):
    def refused(self, error, param, says=None, **kw):
        kw.setdefault("input", "Hi")
        kw.setdefault("max_output_tokens", 4)
        with self.assertRaises(error) as e:
            create(**kw)
        self.assertEqual(e.exception.body["param"], param, e.exception.body)
        if says:
            self.assertIn(says, e.exception.body["message"])
        return e.exception

    def test_bad_requests_name_their_field(self):
        bad = openai.BadRequestError
        self.refused(bad, "input[0].content[0].type", "input_image",
                     input=[{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}])
        self.refused(bad, "input[0].role", "robot", input=[{"role": "robot", "content": "hi"}])
        self.refused(bad, "input[1].type", "banana", input=[{"role": "user", "content": "hi"}, {"type": "banana"}])
        self.refused(bad, "input[0].call_id", "nope",
                     input=[{"type": "function_call_output", "call_id": "nope", "output": "1"}])
        self.refused(bad, "input", input=[])
        self.refused(bad, "tools[1].type", "web_search_preview", tools=TOOLS + [{"type": "web_search_preview"}])
        self.refused(bad, "tools[0].type", "file_search", tools=[{"type": "file_search", "vector_store_ids": ["v"]}])
        self.refused(bad, "tool_choice", "not_a_tool", tools=TOOLS,
                     tool_choice={"type": "function", "name": "not_a_tool"})
        self.refused(bad, "background", background=True)
        self.refused(bad, "reasoning", reasoning={"effort": "high"})
        self.refused(bad, "frobnicate", extra_body={"frobnicate": 1})
        self.refused(bad, "text.format.schema", text={"format": {"type": "json_schema", "name": "x", "schema": [1]}})
        self.refused(bad, "tools[0].parameters", tools=[{"type": "function", "name": "f", "parameters": "nope"}])
        self.refused(bad, "temperature", temperature=-1)
        self.refused(openai.NotFoundError, "previous_response_id", previous_response_id="resp_doesnotexist")
        self.refused(openai.NotFoundError, "model", model="no-such-model")

    def test_malformed_bodies(self):
        status, body = raw("POST", "/v1/responses", b"{not json")
        self.assertEqual((status, body["error"]["type"]), (400, "invalid_request_error"))
        status, body = raw("POST", "/v1/responses", json.dumps({"model": MODEL}).encode())
        self.assertEqual((status, body["error"]["param"]), (400, "input"))
        status, body = raw("POST", "/v1/responses", json.dumps({"input": "hi"}).encode())
        self.assertEqual((status, body["error"]["param"]), (400, "model"))
        status, body = raw("POST", "/v1/responses", json.dumps({"model": MODEL, "input": 3}).encode())
        self.assertEqual((status, body["error"]["param"]), (400, "input"))
        status, body = raw("GET", "/v1/responses/resp_nope/input_items")
        self.assertEqual(status, 404)


class Metrics(unittest.TestCase):
    def test_responses_are_counted(self):
        before = metrics()
        create(input="Hi", max_output_tokens=3)
        after = metrics()
        handler = dict(handler="/v1/responses", status="200")
        self.assertEqual(metric(after, "http_requests_total", **handler) - metric(before, "http_requests_total", **handler), 1)
        done = metric(after, "vllm:request_success_total", finished_reason="length") - \
            metric(before, "vllm:request_success_total", finished_reason="length")
        self.assertEqual(done, 1)
        self.assertEqual(metric(after, "vllm:generation_tokens_total") - metric(before, "vllm:generation_tokens_total"), 3)


if __name__ == "__main__":
    unittest.main(verbosity=2)
