"""The official OpenAI Python SDK as a real client of the chat function (C1).

Usage: python3 tests/openai_sdk.py BASE_URL API_KEY MODE [FAKE_URL]
  MODE "provider": answers come from a model (the fake server at FAKE_URL, whose
        behaviour the script changes to test a stream cut after the first byte).
  MODE "offline": no provider is configured; answers are flagged retrieval-only.
Prints one line per check and exits non-zero when any fails.
"""

import json
import sys
import urllib.request
import uuid

import openai

from fake_control import set_behaviour

base_url, api_key, mode = sys.argv[1], sys.argv[2], sys.argv[3]
fake_url = sys.argv[4] if len(sys.argv) > 4 else None
client = openai.OpenAI(base_url=base_url.rstrip("/") + "/v1", api_key=api_key, max_retries=0)
failures = 0


def check(name, condition, detail=""):
    global failures
    if condition:
        print(f"ok   sdk: {name}")
    else:
        failures += 1
        print(f"FAIL sdk: {name}: {detail}")


def fake(behaviour):
    set_behaviour(fake_url, behaviour)


models = [m.id for m in client.models.list()]
check("models.list names the configured models", len(models) >= 1, models)
model = models[0]
question = [{"role": "user", "content": "How do I run the product locally?"}]

raw = client.chat.completions.with_raw_response.create(model=model, messages=question, temperature=0)
completion = raw.parse()
content = completion.choices[0].message.content or ""
extra = completion.model_extra or {}
check("a plain completion has content", len(content) > 0, completion)
check("x-overhead-ms is on the response", raw.headers.get("x-overhead-ms") is not None, dict(raw.headers))
check("sources come back as an extra field", isinstance(extra.get("sources"), list), extra)
if mode == "offline":
    check("the offline answer is flagged retrieval-only", raw.headers.get("x-degraded") == "retrieval-only"
          and extra.get("degraded") == "retrieval-only", (dict(raw.headers), extra))
else:
    check("a model's answer is not flagged", raw.headers.get("x-degraded") is None, dict(raw.headers))
    check("usage is reported", completion.usage is not None and completion.usage.total_tokens > 0, completion.usage)

stream = client.chat.completions.create(
    model=model, messages=question, temperature=0, stream=True, stream_options={"include_usage": True}
)
pieces, usage = [], None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.usage is not None:
        usage = chunk.usage
check("a streamed completion has the same content", "".join(pieces) == content, ("".join(pieces), content))
check("the stream reports usage when asked", usage is not None, usage)

try:
    client.chat.completions.create(model="no-such-model", messages=question)
    check("an unknown model is refused", False, "no error")
except openai.NotFoundError as e:
    check("an unknown model is a NotFoundError with our message", "no-such-model" in str(e), e)

try:
    client.chat.completions.create(model=model, messages=[])
    check("empty messages are refused", False, "no error")
except openai.BadRequestError as e:
    check("empty messages are a BadRequestError", "messages" in str(e), e)

if mode == "provider":
    key = {"Idempotency-Key": f"sdk-{uuid.uuid4()}"}
    first = client.chat.completions.with_raw_response.create(
        model=model, messages=question, temperature=1, extra_headers=key
    )
    again = client.chat.completions.with_raw_response.create(
        model=model, messages=question, temperature=1, extra_headers=key
    )
    check("a repeated Idempotency-Key replays the first answer",
          again.headers.get("x-idempotent-replay") == "true" and again.parse().id == first.parse().id,
          (dict(again.headers), again.parse().id, first.parse().id))

if mode == "provider" and fake_url:
    fake({"cut_stream_after": 2})
    try:
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "cut me off"}], stream=True, extra_body={"cache": False}
        )
        received = [c for c in stream]
        check("a cut stream raises instead of ending quietly", False, f"{len(received)} chunks and no error")
    except openai.APIError as e:
        check("a cut stream raises an APIError in the SDK", "interrupted" in str(e) or "incomplete" in str(e), e)
    fake({})

    # Issue 15: the primary cut after 40 of about 60 chunks; the fallback continues the
    # answer, which arrives complete, as one stream, labelled, billed once.
    def usage_requests():
        request = urllib.request.Request(base_url.rstrip("/") + "/v1/usage", headers={"x-api-key": api_key})
        with urllib.request.urlopen(request) as response:
            return json.load(response)["requests"]

    before = usage_requests()
    fake({"cut_stream_after": 40, "models": [model]})
    # About 60 chunks: the fake quotes the question (up to 200 characters) word by word.
    long_question = " ".join(f"w{i}" for i in range(52)) + "?"
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": long_question}], stream=True,
        stream_options={"include_usage": True}, extra_body={"cache": False, "retrieval": False},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    labels = [getattr(c, "degraded", None) or (c.model_extra or {}).get("degraded") for c in chunks]
    usage = [c.usage for c in chunks if c.usage]
    fake({})
    check("a stream cut after 40 chunks arrives complete, continued by the fallback",
          text.startswith(f"Fake answer from {model}") and text.endswith("messages in the prompt)."), text)
    check("the continued answer says which model continued it",
          any(label and "continued:" in label for label in labels), labels)
    check("the continued answer is billed once, its tokens as completion",
          usage and usage[-1].completion_tokens > 40 and usage_requests() == before + 1, (usage, before))

print(f"sdk checks: {failures} failed")
sys.exit(1 if failures else 0)
