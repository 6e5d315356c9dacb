// The Responses API (/v1/responses) through the official `openai` Node SDK (pinned in
// package.json / package-lock.json, installed by scripts/test with `npm ci`) against the real
// `wick serve` on the default model. Run by tests/tests/openai_node.rs with WICK_BASE_URL,
// WICK_MODEL_ID and WICK_API_KEY: `node --test tests/e2e-node/test_responses.mjs`.
import assert from "node:assert/strict";
import { test } from "node:test";

import OpenAI from "openai";

const MODEL = process.env.WICK_MODEL_ID;
const client = new OpenAI({
  baseURL: process.env.WICK_BASE_URL,
  apiKey: process.env.WICK_API_KEY,
  maxRetries: 0,
  timeout: 300_000,
});
const ASK = { model: MODEL, input: "Say hello in one short sentence.", max_output_tokens: 16, temperature: 0 };

test("responses.create answers, and the stored response is retrieved", async () => {
  const r = await client.responses.create(ASK);
  assert.equal(r.object, "response");
  assert.match(r.id, /^resp_[0-9a-f]{32}$/);
  assert.equal(r.model, MODEL);
  assert.ok(["completed", "incomplete"].includes(r.status), r.status);
  assert.equal(r.output[0].type, "message");
  assert.equal(r.output[0].role, "assistant");
  // `output_text` is the SDK's own join of the message's text parts.
  assert.ok(r.output_text.length > 0, JSON.stringify(r.output));
  assert.equal(r.output_text, r.output[0].content[0].text);
  assert.ok(r.usage.output_tokens > 0 && r.usage.output_tokens <= 16, JSON.stringify(r.usage));
  assert.equal(r.usage.total_tokens, r.usage.input_tokens + r.usage.output_tokens);
  assert.equal(r.temperature, 0);
  const got = await client.responses.retrieve(r.id);
  assert.equal(got.id, r.id);
  assert.equal(got.output_text, r.output_text);
});

test("responses.stream: the SDK's event checks pass and the text equals the non-streamed one", async () => {
  const whole = await client.responses.create(ASK);
  const stream = client.responses.stream(ASK);
  const kinds = [];
  let deltas = "";
  for await (const event of stream) {
    kinds.push(event.type);
    if (event.type === "response.output_text.delta") deltas += event.delta;
  }
  const final = await stream.finalResponse();
  assert.equal(kinds[0], "response.created");
  assert.equal(kinds[1], "response.in_progress");
  assert.ok(["response.completed", "response.incomplete"].includes(kinds.at(-1)), kinds.join());
  assert.ok(kinds.includes("response.output_text.done"), kinds.join());
  // Greedy decoding: the same request streamed or not is the same answer.
  assert.equal(deltas, whole.output_text);
  assert.equal(final.output_text, whole.output_text);
  assert.equal(final.status, whole.status);
  assert.equal(final.usage.output_tokens, whole.usage.output_tokens);
});

test("create({stream: true}) yields numbered events ending in the whole response", async () => {
  const events = [];
  for await (const event of await client.responses.create({ ...ASK, stream: true })) {
    events.push(event);
  }
  assert.deepEqual(
    events.map((e) => e.sequence_number),
    events.map((_, i) => i),
  );
  const last = events.at(-1);
  assert.ok(["response.completed", "response.incomplete"].includes(last.type), last.type);
  const text = events
    .filter((e) => e.type === "response.output_text.delta")
    .map((e) => e.delta)
    .join("");
  assert.equal(last.response.output[0].content[0].text, text);
});

test("errors are the SDK's typed errors with OpenAI's fields", async () => {
  await assert.rejects(
    client.responses.create({ ...ASK, previous_response_id: "resp_doesnotexist" }),
    (e) => {
      assert.ok(e instanceof OpenAI.NotFoundError, String(e));
      assert.equal(e.status, 404);
      assert.equal(e.param, "previous_response_id");
      return true;
    },
  );
  await assert.rejects(client.responses.create({ ...ASK, temperature: -1 }), (e) => {
    assert.ok(e instanceof OpenAI.BadRequestError, String(e));
    assert.equal(e.param, "temperature");
    return true;
  });
});
