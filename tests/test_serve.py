"""The OpenAI-compatible server (`shared/serve/`), end to end: a real uvicorn server on loopback in a background
thread (`shared.tools.serving.running_server`), driven by the official `openai` client, and by raw HTTP where the
client hides what must be checked (status codes, headers, SSE bytes).

What is tested:
- completions and chat, whole and streamed, equal the offline engine's greedy output (text, usage, finish reason
  "length" and "stop"); n with a seed, batches of prompts, logprobs and vLLM's sampling extras;
- /v1/models, /health and /metrics (counters equal to the usage of the requests sent);
- the API key, the bounded queue (429 + Retry-After), aborts when the client leaves (KV blocks back to 0), the
  per-request timeout (408, or an error event then [DONE]), request ids in headers, bodies and logs;
- every user mistake is a 4xx with OpenAI's error JSON naming the parameter, never a 500;
- graceful shutdown (SIGTERM drains; a short grace ends streams with finish_reason "abort");
- m1, m2, m5 and m7 serve the same text as they generate offline.

Slow steps (`slowed`) make queues fill and timeouts fire without timing anything: the tests wait for states
(with generous limits), they never assert durations.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import signal
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import aiohttp
import openai
import pytest

from shared.sampling import SamplingParams
from shared.serve.logs import JsonFormatter
from shared.tools.milestones import llm_class
from shared.tools.serving import kv_in_use, metric, running_server, slowed, wait_until

MODEL = "tiny-qwen3"
PROMPT = "def fibonacci(n):"
CHAT = [{"role": "system", "content": "You answer in one line."}, {"role": "user", "content": "Write a haiku about rain."}]
STEP_DELAY = 0.05  # seconds added to every engine step where a test needs a request to stay in flight


# -- fixtures: each engine is built once; a server is started per engine and reused while its settings match --------
def build(name: str = "m6_prefix", **options):
    return llm_class(name)(model=MODEL, device="cpu", dtype="float32", **options)


@pytest.fixture(scope="module")
def offline():
    """The reference: the same milestone run offline (`LLM.generate`), never behind a server."""
    return build()


@pytest.fixture(scope="module")
def engine():
    return build().engine


@pytest.fixture(scope="module")
def small_engine():
    """One sequence at a time and a 64-token context: queues form at once, and long prompts are refused."""
    return build(max_num_seqs=1, max_model_len=64).engine


class Servers:
    """At most one live server per engine (two would step one engine from two event loops), reused while the
    settings asked for are the same."""

    def __init__(self) -> None:
        self.live: dict[int, tuple[tuple, ExitStack, tuple]] = {}

    def get(self, engine, fresh: bool = False, **settings):
        key = tuple(sorted(settings.items()))
        held = self.live.get(id(engine))
        if held and held[0] == key and not fresh:
            return held[2]
        self.stop(engine)
        stack = ExitStack()
        handle = stack.enter_context(running_server(engine, **settings))
        self.live[id(engine)] = (key, stack, handle)
        return handle

    def stop(self, engine) -> None:
        held = self.live.pop(id(engine), None)
        if held:
            held[1].close()

    def close(self) -> None:
        for _, stack, _ in self.live.values():
            stack.close()
        self.live.clear()


@pytest.fixture(scope="module")
def servers():
    pool = Servers()
    yield pool
    pool.close()


def client(url: str, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=kwargs.pop("api_key", "unused"), max_retries=0, **kwargs)


def greedy(offline, prompt, max_tokens: int, **params):
    return offline.generate(prompt, SamplingParams(temperature=0, max_tokens=max_tokens, **params), use_tqdm=False)[0]


# -- raw HTTP ---------------------------------------------------------------------------------------------------------
def request(url: str, method: str, path: str, body=None, headers=None, raw: bytes | None = None, timeout: float = 60):
    """(status, headers with lower-case names, body bytes), whatever the status."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def sse_data(raw: bytes) -> list[str]:
    """The `data:` payloads of a server-sent event stream, in order."""
    return [line[len("data: "):] for line in raw.decode().splitlines() if line.startswith("data: ")]


class RawStream:
    """A streamed POST read event by event over one socket, so a test can stop reading and hang up."""

    def __init__(self, url: str, path: str, body: dict, headers=None) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.conn.request("POST", path, body=json.dumps({**body, "stream": True}),
                          headers={"Content-Type": "application/json", **(headers or {})})
        self.sock = self.conn.sock  # kept: the connection lets go of it if the response is to close it
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.read()

    def next(self) -> str | None:
        """The next `data:` payload, or None at the end of the response."""
        while line := self.resp.readline():
            if line.startswith(b"data: "):
                return line[len(b"data: "):].decode().rstrip("\r\n")
        return None

    def rest(self) -> list[str]:
        out = []
        while (data := self.next()) is not None:
            out.append(data)
        return out

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # the server sees the disconnect now, not when GC closes it
        self.resp.close()
        self.conn.close()
        self.sock.close()


def error_of(raw: bytes, status: int | None = None) -> dict:
    """OpenAI's error object, checked for shape."""
    body = json.loads(raw)
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    assert body["error"]["message"]
    return body["error"]


def idle(engine, app) -> bool:
    """Nothing held anywhere: no stream in the server, no request in the engine, no KV in use."""
    return not app.state.engine.streams and not engine.has_unfinished_requests() and kv_in_use(engine) == 0


def completion_body(prompt=PROMPT, max_tokens: int = 8, **extra) -> dict:
    return {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}


# -- 1. outputs equal the offline engine's ---------------------------------------------------------------------------
def test_completion_greedy_equals_offline_whole_and_streamed(engine, offline, servers):
    url, _, _ = servers.get(engine)
    ref = greedy(offline, PROMPT, 12, ignore_eos=True)
    c = client(url)
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    assert r.choices[0].text == ref.outputs[0].text and r.choices[0].index == 0
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ref.prompt_token_ids), 12)
    assert r.usage.total_tokens == len(ref.prompt_token_ids) + 12

    chunks = list(c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
                                       stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    texts = [ch.choices[0].text for ch in chunks if ch.choices]
    assert len(texts) > 1  # really streamed, not one chunk
    assert "".join(texts) == ref.outputs[0].text
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == len(ref.prompt_token_ids)


def test_completion_stop_string(engine, offline, servers):
    """A stop string from the greedy text itself: finish_reason "stop", the text cut before it, as offline."""
    url, _, _ = servers.get(engine)
    full = greedy(offline, PROMPT, 24, ignore_eos=True).outputs[0].text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    ref = greedy(offline, PROMPT, 24, ignore_eos=True, stop=stop).outputs[0]
    assert ref.finish_reason == "stop" and len(ref.text) < len(full)
    c = client(url)
    r = c.completions.create(**completion_body(max_tokens=24, stop=[stop], extra_body={"ignore_eos": True}))
    assert (r.choices[0].text, r.choices[0].finish_reason) == (ref.text, "stop")
    assert r.usage.completion_tokens == len(ref.token_ids)
    chunks = list(c.completions.create(**completion_body(max_tokens=24, stop=stop, stream=True),
                                       extra_body={"ignore_eos": True}))
    assert "".join(ch.choices[0].text for ch in chunks) == ref.text  # held-back text never leaks the stop string
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_equals_offline_on_the_chat_template(engine, offline, servers):
    url, _, _ = servers.get(engine)
    ref = greedy(offline, offline.tokenizer.apply_chat_template(CHAT), 10).outputs[0]
    c = client(url)
    r = c.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=10, temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (ref.text, ref.finish_reason)
    assert r.usage.completion_tokens == len(ref.token_ids)

    chunks = list(c.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=10, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"  # the stream opens with the role, as OpenAI's do
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == ref.text
    assert chunks[-1].choices[0].finish_reason == ref.finish_reason
    assert {ch.id for ch in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")


def test_n_with_seed_is_reproducible_and_equals_offline(engine, offline, servers):
    url, _, _ = servers.get(engine)
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "n": 2, "temperature": 1.0, "seed": 1234}
    c = client(url)
    first, again = c.completions.create(**body), c.completions.create(**body)
    assert [ch.index for ch in first.choices] == [0, 1]
    texts = [ch.text for ch in first.choices]
    assert texts == [ch.text for ch in again.choices]
    ref = offline.generate(PROMPT, SamplingParams(temperature=1.0, max_tokens=8, n=2, seed=1234), use_tqdm=False)[0]
    assert texts == [o.text for o in ref.outputs]
    assert first.usage.completion_tokens == sum(len(o.token_ids) for o in ref.outputs)


def test_batch_prompt_choices_are_indexed_by_prompt(engine, offline, servers):
    url, _, _ = servers.get(engine)
    prompts = ["import os\n", "class Stack:\n"]
    refs = [greedy(offline, p, 6, ignore_eos=True) for p in prompts]
    c = client(url)
    r = c.completions.create(**completion_body(prompts, 6), extra_body={"ignore_eos": True})
    assert [(ch.index, ch.text) for ch in r.choices] == [(i, ref.outputs[0].text) for i, ref in enumerate(refs)]
    assert r.usage.prompt_tokens == sum(len(ref.prompt_token_ids) for ref in refs)
    assert r.usage.completion_tokens == 12
    # streamed: the two prompts' deltas interleave; each index concatenates to its own text
    texts: dict[int, str] = {}
    for ch in c.completions.create(**completion_body(prompts, 6, stream=True), extra_body={"ignore_eos": True}):
        for choice in ch.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {i: ref.outputs[0].text for i, ref in enumerate(refs)}


def test_completion_logprobs_equal_the_engines(engine, offline, servers):
    url, _, _ = servers.get(engine)
    ref = greedy(offline, PROMPT, 6, ignore_eos=True, logprobs=3).outputs[0]
    r = client(url).completions.create(**completion_body(max_tokens=6, logprobs=3), extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert all(len(alternatives) == 3 for alternatives in lp.top_logprobs)
    assert lp.token_logprobs == pytest.approx([e.logprob for e in ref.logprobs], abs=1e-4)
    assert "".join(lp.tokens) == r.choices[0].text == ref.text
    # greedy: the chosen token is the most likely alternative
    assert all(max(top.values()) == pytest.approx(chosen) for top, chosen in zip(lp.top_logprobs, lp.token_logprobs))
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])
    # streamed: each chunk carries the logprobs of its own new tokens, with offsets into the whole text
    tokens, logprobs, offsets = [], [], []
    for ch in client(url).completions.create(**completion_body(max_tokens=6, logprobs=3, stream=True),
                                             extra_body={"ignore_eos": True}):
        if ch.choices[0].logprobs is not None:
            tokens += ch.choices[0].logprobs.tokens
            logprobs += ch.choices[0].logprobs.token_logprobs
            offsets += ch.choices[0].logprobs.text_offset
    assert (tokens, logprobs, offsets) == (lp.tokens, lp.token_logprobs, lp.text_offset)


def test_chat_top_logprobs(engine, offline, servers):
    url, _, _ = servers.get(engine)
    ref = greedy(offline, offline.tokenizer.apply_chat_template(CHAT), 5, ignore_eos=True, logprobs=2).outputs[0]
    r = client(url).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5, temperature=0, logprobs=True,
                                            top_logprobs=2, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 5 and all(len(t.top_logprobs) == 2 for t in content)
    assert [t.logprob for t in content] == pytest.approx([e.logprob for e in ref.logprobs], abs=1e-4)
    assert [a.logprob for t in content for a in t.top_logprobs] == pytest.approx(
        [lp for e in ref.logprobs for _, lp in e.top], abs=1e-4)
    assert all(t.top_logprobs[0].token == t.token for t in content)  # greedy: the top alternative was chosen


def test_sampling_extras_are_applied(engine, offline, servers):
    """vLLM's extras (top_k, min_p, repetition_penalty) with a seed give exactly the offline engine's tokens."""
    url, _, _ = servers.get(engine)
    extras = {"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.3}
    ref = offline.generate(PROMPT, SamplingParams(temperature=0.9, max_tokens=12, seed=7, **extras), use_tqdm=False)[0]
    r = client(url).completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0.9, seed=7,
                                       extra_body=extras)
    assert r.choices[0].text == ref.outputs[0].text
    # a penalty really changes greedy decoding here, so equality above is not the unpenalized text by chance
    plain = greedy(offline, PROMPT, 12).outputs[0].text
    penalized = client(url).completions.create(**completion_body(max_tokens=12), extra_body={"repetition_penalty": 2.0})
    assert penalized.choices[0].text == greedy(offline, PROMPT, 12, repetition_penalty=2.0).outputs[0].text != plain


def test_a_huge_top_k_keeps_every_token_instead_of_failing_the_step(engine, offline, servers):
    """top_k=10**30 used to overflow the sampler's int64 tensor inside step(): a 500 for it and for every other
    request in that step. Beyond the vocabulary top_k keeps every token, exactly as top_k=0."""
    url, _, _ = servers.get(engine)
    ref = offline.generate(PROMPT, SamplingParams(temperature=1.0, max_tokens=6, seed=3), use_tqdm=False)[0]
    r = client(url).completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=1.0, seed=3,
                                       extra_body={"top_k": 10**30})
    assert r.choices[0].text == ref.outputs[0].text


# -- 2. models, health, metrics --------------------------------------------------------------------------------------
def test_models_health_and_metrics_match_the_requests_sent(engine, offline, servers):
    """On a fresh server (its own counters) whose engine has served before: the counters are this server's."""
    before, _, _ = servers.get(engine)
    client(before).completions.create(**completion_body(max_tokens=2))  # the engine's totals are not zero
    url, _, _ = servers.get(engine, fresh=True, model_name="folo-tiny", engine_name="m6_prefix")
    c = client(url)
    models = c.models.list().data
    assert [m.id for m in models] == ["folo-tiny"] and models[0].owned_by == "folovllm"
    status, _, body = request(url, "GET", "/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})

    stop = greedy(offline, "import os\n", 16, ignore_eos=True).outputs[0].text[4:7]
    usages, reasons = [], []
    r = c.completions.create(model="folo-tiny", prompt=PROMPT, max_tokens=5, temperature=0, extra_body={"ignore_eos": True})
    usages.append(r.usage)
    reasons.append(r.choices[0].finish_reason)
    r = c.completions.create(model="folo-tiny", prompt="import os\n", max_tokens=16, temperature=0, stop=stop,
                             extra_body={"ignore_eos": True})
    usages.append(r.usage)
    reasons.append(r.choices[0].finish_reason)
    chunks = list(c.chat.completions.create(model="folo-tiny", messages=CHAT, max_tokens=4, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    usages.append(chunks[-1].usage)
    reasons.append(next(ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason))
    assert reasons == ["length", "stop", "length"]

    labels = {"model_name": "folo-tiny"}
    assert metric(url, "vllm:prompt_tokens_total", **labels) == sum(u.prompt_tokens for u in usages)
    assert metric(url, "vllm:generation_tokens_total", **labels) == sum(u.completion_tokens for u in usages)
    assert metric(url, "vllm:request_success_total", finished_reason="length", **labels) == 2
    assert metric(url, "vllm:request_success_total", finished_reason="stop", **labels) == 1
    assert metric(url, "vllm:time_to_first_token_seconds_count", **labels) == 3
    assert metric(url, "vllm:e2e_request_latency_seconds_count", **labels) == 3
    assert metric(url, "vllm:num_requests_running", **labels) == metric(url, "vllm:num_requests_waiting", **labels) == 0
    # m6 looks every admitted prompt up in its prefix cache: this server's lookups, not the engine's lifetime ones
    assert metric(url, "vllm:prefix_cache_queries_total", **labels) == sum(u.prompt_tokens for u in usages)


# -- 3. API key ------------------------------------------------------------------------------------------------------
def test_api_key_guards_v1_only(engine, servers):
    url, _, _ = servers.get(engine, api_key="s3cret")
    with pytest.raises(openai.AuthenticationError) as wrong:
        client(url, api_key="nope").completions.create(**completion_body(max_tokens=2))
    assert wrong.value.status_code == 401 and wrong.value.body["code"] == "invalid_api_key"
    status, _, body = request(url, "POST", "/v1/completions", completion_body(max_tokens=2))  # no header at all
    assert status == 401 and error_of(body)["type"] == "authentication_error"
    status, _, _ = request(url, "GET", "/v1/models", headers={"Authorization": "s3cret"})  # not "Bearer <key>"
    assert status == 401
    assert client(url, api_key="s3cret").completions.create(**completion_body(max_tokens=2)).usage.completion_tokens == 2
    assert request(url, "GET", "/health")[0] == 200
    assert metric(url, "folovllm:requests_rejected_total", reason="unauthorized") == 3  # /metrics is open too


# -- 4. bounded queue ------------------------------------------------------------------------------------------------
def test_a_full_queue_refuses_with_429_and_every_admitted_request_completes(small_engine, offline, servers):
    url, _, app = servers.get(small_engine, max_queue=1)
    sent = 8
    prompts = [f"# task {i}\ndef solve():" for i in range(sent)]

    async def fire():
        async with aiohttp.ClientSession() as session:
            async def one(i: int):
                body = completion_body(prompts[i], 4, ignore_eos=True)
                async with session.post(f"{url}/v1/completions", json=body, headers={"X-Request-Id": f"q{i}"}) as r:
                    return i, r.status, r.headers, await r.json()
            return await asyncio.gather(*(one(i) for i in range(sent)))

    with slowed(small_engine, 0.1):  # one sequence at a time, each step slow: the queue of one fills at once
        results = asyncio.run(fire())
    admitted = [(i, body) for i, status, _, body in results if status == 200]
    refused = [(i, headers, body) for i, status, headers, body in results if status == 429]
    assert len(admitted) + len(refused) == sent and admitted and refused
    for _, headers, body in refused:
        assert int(headers["Retry-After"]) >= 1
        assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "queue_full"
    for i, body in admitted:  # each completes in full, once, as offline
        assert body["id"] == f"cmpl-q{i}" and len(body["choices"]) == 1
        assert body["choices"][0]["text"] == greedy(offline, prompts[i], 4, ignore_eos=True).outputs[0].text
        assert body["usage"]["completion_tokens"] == 4
    assert len({body["id"] for _, body in admitted}) == len(admitted)
    assert metric(url, "folovllm:requests_rejected_total", reason="queue_full") == len(refused)
    assert metric(url, "vllm:request_success_total", finished_reason="length") == len(admitted)
    assert wait_until(lambda: idle(small_engine, app))


# -- 5. a client that leaves -----------------------------------------------------------------------------------------
def test_disconnect_mid_stream_aborts_and_frees_the_kv_blocks(engine, servers):
    url, _, app = servers.get(engine)
    aborted = metric(url, "folovllm:requests_aborted_total")
    with slowed(engine, STEP_DELAY):
        stream = RawStream(url, "/v1/completions", completion_body("x = 1\n", max_tokens=200, ignore_eos=True))
        for _ in range(20):  # past the first full block of 16 positions: m6 caches it
            assert json.loads(stream.next())["choices"][0]["finish_reason"] is None
        assert kv_in_use(engine) > 1 and len(app.state.engine.streams) == 1  # it is generating
        stream.close()
        assert wait_until(lambda: idle(engine, app), timeout=20)
    # the aborted request's full block stays in the prefix cache, free: "in use" counts referenced blocks only
    assert engine.kv.pool.num_cached_free > 0
    assert metric(url, "folovllm:requests_aborted_total") == aborted + 1
    assert metric(url, "vllm:num_requests_running") == 0


def test_client_timeout_on_a_whole_response_aborts_it(engine, servers):
    url, _, app = servers.get(engine)
    aborted = metric(url, "folovllm:requests_aborted_total")
    with slowed(engine, STEP_DELAY):
        with pytest.raises(openai.APITimeoutError):
            client(url, timeout=0.5).completions.create(**completion_body(max_tokens=200), extra_body={"ignore_eos": True})
        assert wait_until(lambda: idle(engine, app) and metric(url, "folovllm:requests_aborted_total") == aborted + 1,
                          timeout=20)


# -- 6. the server's own timeout -------------------------------------------------------------------------------------
def test_request_timeout_is_408_or_an_error_event(engine, servers):
    url, _, app = servers.get(engine, request_timeout=1.0)
    body = completion_body(max_tokens=200, ignore_eos=True)
    with slowed(engine, STEP_DELAY):
        status, headers, raw = request(url, "POST", "/v1/completions", body)
        assert status == 408 and headers["x-request-id"]
        err = error_of(raw)
        assert (err["type"], err["code"]) == ("timeout_error", "request_timeout") and "of 1 s;" in err["message"]
        assert wait_until(lambda: idle(engine, app))

        # streamed: the 200 went out, so the timeout is an error event, then [DONE]
        events = RawStream(url, "/v1/completions", body).rest()
        assert events[-1] == "[DONE]" and len(events) > 2
        assert error_of(events[-2].encode())["code"] == "request_timeout"
        assert all("choices" in json.loads(e) for e in events[:-2])
        assert wait_until(lambda: idle(engine, app))

        # the openai client turns that event into an APIError after the chunks before it
        got = []
        with pytest.raises(openai.APIError, match="request timeout"):
            for chunk in client(url).completions.create(**completion_body(max_tokens=200, stream=True),
                                                        extra_body={"ignore_eos": True}):
                got.append(chunk)
        assert got
        assert wait_until(lambda: idle(engine, app))


# -- 7. bad requests -------------------------------------------------------------------------------------------------
U = [{"role": "user", "content": "hi"}]
COMPLETIONS, CHAT_PATH = "/v1/completions", "/v1/chat/completions"
BAD = [  # (id, path, body, status, param)
    ("unknown-field", COMPLETIONS, {"model": MODEL, "prompt": "hi", "max_token": 3}, 400, "max_token"),
    ("wrong-type", COMPLETIONS, {"model": MODEL, "prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
    ("missing-prompt", COMPLETIONS, {"model": MODEL}, 400, "prompt"),
    ("empty-prompt", COMPLETIONS, {"model": MODEL, "prompt": ""}, 400, "prompt"),
    ("temperature", COMPLETIONS, {"model": MODEL, "prompt": "hi", "temperature": -1}, 400, "temperature"),
    ("top-p", COMPLETIONS, {"model": MODEL, "prompt": "hi", "top_p": 2}, 400, "top_p"),
    ("top-k", COMPLETIONS, {"model": MODEL, "prompt": "hi", "top_k": -5}, 400, "top_k"),
    ("max-tokens", COMPLETIONS, {"model": MODEL, "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ("logprobs", COMPLETIONS, {"model": MODEL, "prompt": "hi", "logprobs": 30}, 400, "logprobs"),
    ("echo", COMPLETIONS, {"model": MODEL, "prompt": "hi", "echo": True}, 400, "echo"),
    ("best-of", COMPLETIONS, {"model": MODEL, "prompt": "hi", "best_of": 2}, 400, "best_of"),
    ("wrong-model", COMPLETIONS, {"model": "gpt-4", "prompt": "hi"}, 404, "model"),
    ("too-long", COMPLETIONS, {"model": MODEL, "prompt": "hello " * 80}, 400, "prompt"),
    ("too-long-ids", COMPLETIONS, {"model": MODEL, "prompt": list(range(100, 180))}, 400, "prompt"),
    ("too-long-in-batch", COMPLETIONS, {"model": MODEL, "prompt": ["hi", "hello " * 80]}, 400, "prompt"),
    ("token-out-of-vocab", COMPLETIONS, {"model": MODEL, "prompt": [10**9]}, 400, "prompt"),
    ("n-above-max-num-seqs", COMPLETIONS, {"model": MODEL, "prompt": "hi", "n": 2}, 400, "n"),
    ("stream-with-bad-param", COMPLETIONS, {"model": MODEL, "prompt": "hi", "stream": True, "temperature": -1}, 400,
     "temperature"),
    ("stream-options-without-stream", COMPLETIONS,
     {"model": MODEL, "prompt": "hi", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ("top-logprobs-without-logprobs", CHAT_PATH, {"model": MODEL, "messages": U, "top_logprobs": 2}, 400, "top_logprobs"),
    ("top-logprobs-range", CHAT_PATH, {"model": MODEL, "messages": U, "logprobs": True, "top_logprobs": 30}, 400,
     "top_logprobs"),
    ("tools", CHAT_PATH, {"model": MODEL, "messages": U, "tools": [{"type": "function", "function": {"name": "f"}}]},
     400, "tools"),
    ("bad-role", CHAT_PATH, {"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages"),
    ("no-messages", CHAT_PATH, {"model": MODEL, "messages": []}, 400, "messages"),
    ("max-completion-tokens", CHAT_PATH, {"model": MODEL, "messages": U, "max_completion_tokens": 0}, 400,
     "max_completion_tokens"),
    ("chat-wrong-model", CHAT_PATH, {"model": "gpt-4", "messages": U}, 404, "model"),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_request_is_a_4xx_naming_the_param(small_engine, servers, path, body, status, param):
    url, _, _ = servers.get(small_engine)
    got, headers, raw = request(url, "POST", path, body)
    assert got == status, raw
    assert headers["content-type"] == "application/json"
    err = error_of(raw)
    assert err["param"] == param
    assert err["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


def test_bad_requests_without_a_param(small_engine, servers):
    """Invalid JSON, an unknown route, a bad X-Request-Id: still OpenAI's JSON, never a 500."""
    url, _, app = servers.get(small_engine)
    status, _, raw = request(url, "POST", COMPLETIONS, raw=b'{"model": "tiny-qwen3", "prompt": ')
    assert status == 400 and "not valid JSON" in error_of(raw)["message"]
    status, _, raw = request(url, "GET", "/v1/nope")
    assert status == 404 and error_of(raw)["type"] == "not_found_error"
    status, _, raw = request(url, "GET", COMPLETIONS)
    assert status == 405 and error_of(raw)
    status, _, raw = request(url, "POST", COMPLETIONS, completion_body("hi", 2), headers={"X-Request-Id": "a b/c"})
    assert status == 400 and error_of(raw)["param"] == "X-Request-Id"
    with pytest.raises(openai.BadRequestError) as bad:  # as the openai client sees one
        client(url).completions.create(model=MODEL, prompt="hi", temperature=-1)
    assert bad.value.status_code == 400 and bad.value.body["param"] == "temperature"
    assert idle(small_engine, app)


# -- 8. request ids --------------------------------------------------------------------------------------------------
@contextmanager
def server_logs() -> Iterator[list[logging.LogRecord]]:
    """The records of the "shared.serve" logger, from every thread. A handler on that logger itself, not caplog's
    on the root: `configure_logging` (the CLI's) turns propagation off."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("shared.serve")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_request_id_in_header_body_and_log(engine, servers):
    url, _, _ = servers.get(engine)
    rid = "trace-42.a:b_c"
    with server_logs() as records:  # a handler logs before the response goes out: no waiting needed
        status, headers, raw = request(url, "POST", COMPLETIONS, completion_body(max_tokens=3), headers={"X-Request-Id": rid})
        refused, refused_headers, _ = request(url, "POST", COMPLETIONS, {**completion_body(), "max_token": 1},
                                              headers={"X-Request-Id": "refused-1"})
    assert status == 200 and headers["x-request-id"] == rid and json.loads(raw)["id"] == f"cmpl-{rid}"
    finished = [r for r in records if r.getMessage() == "request finished" and r.fields["request_id"] == rid]
    assert len(finished) == 1 and finished[0].fields["completion_tokens"] == 3
    line = json.loads(JsonFormatter().format(finished[0]))  # what the JSON log line carries
    assert line["request_id"] == rid and line["msg"] == "request finished" and line["path"] == COMPLETIONS

    # a generated id when none is sent, the same in the header and the body; a chat stream's chunks carry it
    status, headers, raw = request(url, "POST", CHAT_PATH, {"model": MODEL, "messages": U, "max_tokens": 2, "stream": True})
    assert status == 200 and len(headers["x-request-id"]) == 32
    chunks = [json.loads(d) for d in sse_data(raw)[:-1]]
    assert {c["id"] for c in chunks} == {f"chatcmpl-{headers['x-request-id']}"}

    # refused before the handler ran (an unknown field): the client's id still comes back, and is logged
    assert refused == 400 and refused_headers["x-request-id"] == "refused-1"
    assert any(r.getMessage() == "request refused" and r.fields["request_id"] == "refused-1" for r in records)


def test_request_id_in_use_is_refused(engine, servers):
    url, _, app = servers.get(engine)
    with slowed(engine, STEP_DELAY):
        stream = RawStream(url, COMPLETIONS, completion_body(max_tokens=200, ignore_eos=True), {"X-Request-Id": "dup"})
        assert stream.next() is not None
        status, _, raw = request(url, "POST", COMPLETIONS, completion_body(), headers={"X-Request-Id": "dup"})
        assert status == 400 and error_of(raw)["param"] == "X-Request-Id"
        stream.close()
        assert wait_until(lambda: idle(engine, app), timeout=20)


# -- 9. graceful shutdown --------------------------------------------------------------------------------------------
def health_during_drain(url: str) -> int | None:
    """/health's status while draining, or None when uvicorn has already closed its listening socket."""
    try:
        return request(url, "GET", "/health", timeout=5)[0]
    except OSError:
        return None


def unreachable(url: str) -> bool:
    """The server has stopped: nothing listens on its port any more."""
    return health_during_drain(url) is None


def finish_reasons(events: list[str]) -> list:
    return [c["finish_reason"] for e in events if e != "[DONE]" for c in json.loads(e)["choices"] if c["finish_reason"]]


def test_drain_refuses_new_requests_and_lets_streams_finish(engine, offline, servers):
    """The drain DrainingServer starts on the first signal, with uvicorn still listening: /health 503, new
    requests 503, the stream in flight runs to its end."""
    servers.stop(engine)
    ref = greedy(offline, PROMPT, 12, ignore_eos=True).outputs[0].text
    with slowed(engine, STEP_DELAY), running_server(engine, shutdown_grace=30) as (url, _, app):
        stream = RawStream(url, COMPLETIONS, completion_body(max_tokens=12, ignore_eos=True))
        events = [stream.next()]
        app.state.begin_shutdown()
        assert wait_until(lambda: request(url, "GET", "/health")[0] == 503)
        status, _, raw = request(url, "POST", COMPLETIONS, completion_body())
        assert status == 503 and error_of(raw)["code"] == "shutting_down"
        events += stream.rest()
        assert events[-1] == "[DONE]" and finish_reasons(events) == ["length"]
        assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == ref
    assert idle(engine, app)


def test_sigterm_with_a_long_grace_finishes_the_stream(engine, offline, servers):
    servers.stop(engine)
    ref = greedy(offline, PROMPT, 16, ignore_eos=True).outputs[0].text
    with slowed(engine, STEP_DELAY), running_server(engine, shutdown_grace=30) as (url, server, app):
        stream = RawStream(url, COMPLETIONS, completion_body(max_tokens=16, ignore_eos=True))
        events = [stream.next()]
        server.handle_exit(signal.SIGTERM, None)
        assert wait_until(lambda: not app.state.engine.accepting)
        assert health_during_drain(url) in (None, 503)
        events += stream.rest()
        assert events[-1] == "[DONE]" and finish_reasons(events) == ["length"]
        assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == ref
    assert idle(engine, app) and unreachable(url)


def test_sigterm_with_a_short_grace_ends_the_stream_with_abort(engine, servers):
    servers.stop(engine)
    with slowed(engine, STEP_DELAY), running_server(engine, shutdown_grace=0.2) as (url, server, app):
        stream = RawStream(url, COMPLETIONS, completion_body(max_tokens=200, ignore_eos=True))
        events = [stream.next(), stream.next()]
        server.handle_exit(signal.SIGTERM, None)
        assert wait_until(lambda: not app.state.engine.accepting)
        assert health_during_drain(url) in (None, 503)
        events += stream.rest()
        assert events[-1] == "[DONE]" and finish_reasons(events) == ["abort"]
        assert len(events) < 100  # cut short: far fewer chunks than the 200 tokens asked for
        assert wait_until(lambda: idle(engine, app))
    assert unreachable(url)


# -- 10. other milestones --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["m1_basic", "m2_batching", "m5_chunked", "m7_gptq"])
def test_other_engines_serve_their_offline_output(name):
    llm = build(name)
    ref = greedy(llm, PROMPT, 10, ignore_eos=True).outputs[0].text
    with running_server(llm.engine, engine_name=name) as (url, _, app):
        chunks = list(client(url).completions.create(**completion_body(max_tokens=10, stream=True),
                                                     extra_body={"ignore_eos": True}))
        assert "".join(ch.choices[0].text for ch in chunks) == ref
        assert chunks[-1].choices[0].finish_reason == "length"
        assert wait_until(lambda: idle(llm.engine, app))
        # a client that leaves mid-stream: this engine's KV memory (blocks, slots or its one cache) comes back
        with slowed(llm.engine, STEP_DELAY):
            stream = RawStream(url, COMPLETIONS, completion_body(max_tokens=200, ignore_eos=True))
            assert stream.next() is not None and stream.next() is not None
            assert kv_in_use(llm.engine) > 0
            stream.close()
            assert wait_until(lambda: idle(llm.engine, app), timeout=20)


# -- 11. the command line ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "says"), [
    (["--engine", "m9_future"], "argument --engine: invalid choice: 'm9_future'"),
    (["--engine", "m6_prefix", "-O", "max_num_seq=4"], "unknown option(s) ['max_num_seq']"),
    (["-O", "max_num_seqs"], "expected key=value, got 'max_num_seqs'"),
    (["--max-queue", "0"], "expected a positive number, got '0'"),
    (["--request-timeout", "soon"], "expected a positive number, got 'soon'"),
    (["--shutdown-grace", "-1"], "--shutdown-grace must be >= 0, got -1"),
    (["--model", "/no/such/model"], "/no/such/model"),
    (["--port", "TAKEN"], "cannot listen on 127.0.0.1:"),
    (["--port", "70000"], "--port must be in [0, 65536), got 70000"),
])
def test_command_line_mistakes_are_one_line_and_status_2(argv, says, capsys):
    from shared.serve.cli import main

    taken = socket.create_server(("127.0.0.1", 0))  # a port someone else holds
    argv = [a.replace("TAKEN", str(taken.getsockname()[1])) for a in argv]
    with taken:
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and says in err and "\n" not in err, err
