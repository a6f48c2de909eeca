"""A bounded soak of the HTTP server: waves of 200 concurrent streaming clients against one m6 engine.

Each wave sends 200 streamed greedy completions at once, over more distinct prompts than the batch holds, with
a waiting queue smaller than the wave (so some are refused with 429) and one client in ten hanging up after
its second chunk. After every wave:

- every request either completed with exactly the text the offline engine gives for its prompt, was refused
  with 429 and Retry-After, or was cut by its own client; none is lost, none answered twice;
- the server holds nothing: no stream, no unfinished engine request, no KV block (prefix-cached blocks that no
  request references are free memory, not a leak), no RequestStream object alive;
- the metrics agree with what the clients saw.

Across waves the process's resident memory stays flat. The waves run for `FOLOVLLM_SOAK_SECONDS` (default 15;
docs/dev/serving.md reports a 5-minute run).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import time

import aiohttp
import pytest

from m6_prefix import LLM
from shared.sampling import SamplingParams
from shared.serve.async_engine import RequestStream
from shared.tools.serving import kv_in_use, metric, running_server, wait_until

CLIENTS = 200  # concurrent streams per wave
MAX_QUEUE = 150  # fewer than a wave: the rest must be refused, not queued
HANG_UP_EVERY = 10  # every tenth client disconnects after its second chunk
MAX_TOKENS = 12
SOAK_SECONDS = float(os.environ.get("FOLOVLLM_SOAK_SECONDS", "15"))
PROMPTS = [f"def handler_{i}(request):\n    " for i in range(40)]


def _rss_mib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            kb = int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))
    except (OSError, AttributeError):
        return None
    return kb / 1024


async def _client(session: aiohttp.ClientSession, url: str, i: int, wave: int) -> dict:
    """One streamed completion; returns what the client saw."""
    rid = f"w{wave}-c{i}"
    body = {"model": "tiny-qwen3", "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": MAX_TOKENS, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    async with session.post(f"{url}/v1/completions", json=body, headers={"X-Request-Id": rid}) as r:
        seen = {"rid": rid, "status": r.status, "header_id": r.headers.get("X-Request-Id"), "text": "", "done": 0,
                "ids": set(), "usage": None, "retry_after": r.headers.get("Retry-After")}
        if r.status != 200:
            seen["error"] = await r.json()
            return seen
        chunks = 0
        async for raw in r.content:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                seen["done"] += 1
                continue
            chunk = json.loads(data)
            assert "error" not in chunk, chunk
            seen["ids"].add(chunk["id"])
            if chunk["choices"]:
                seen["text"] += chunk["choices"][0]["text"]
                seen["finish"] = chunk["choices"][0]["finish_reason"] or seen.get("finish")
            if chunk.get("usage"):
                seen["usage"] = chunk["usage"]
            chunks += 1
            if i % HANG_UP_EVERY == 0 and chunks == 2:
                seen["hung_up"] = True
                r.close()  # drop the connection mid-stream
                return seen
    return seen


async def _wave(url: str, wave: int) -> list[dict]:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return await asyncio.gather(*[_client(session, url, i, wave) for i in range(CLIENTS)])


@pytest.fixture(scope="module")
def engine():
    return LLM(model="tiny-qwen3").engine


def test_waves_of_concurrent_streams_lose_nothing_and_leak_nothing(engine):
    offline = LLM(model="tiny-qwen3")
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    expected = {p: o.outputs[0].text for p, o in zip(PROMPTS, offline.generate(PROMPTS, params, use_tqdm=False),
                                                     strict=True)}
    counts = {"completed": 0, "refused": 0, "hung_up": 0}
    rss: list[float] = []
    with running_server(engine, max_queue=MAX_QUEUE) as (url, _, app):
        loop_engine = app.state.engine
        wave, started = 0, time.perf_counter()
        while wave < 3 or time.perf_counter() - started < SOAK_SECONDS:
            seen = asyncio.run(_wave(url, wave))
            for i, s in enumerate(seen):
                assert s["header_id"] == s["rid"], s  # every answer is the answer to this client's request
                if s["status"] == 429:
                    assert s["retry_after"] and s["error"]["error"]["code"] == "queue_full", s
                    counts["refused"] += 1
                    continue
                assert s["status"] == 200, s
                assert s["ids"] == {f"cmpl-{s['rid']}"}, s
                if s.get("hung_up"):
                    counts["hung_up"] += 1
                    continue
                assert s["done"] == 1 and s["finish"] == "length", s  # exactly one end, after the last token
                assert s["text"] == expected[PROMPTS[i % len(PROMPTS)]], s
                assert s["usage"]["completion_tokens"] == MAX_TOKENS
                counts["completed"] += 1
            # the server holds nothing once a wave is over (the hung-up clients' aborts run within a step)
            assert wait_until(lambda: not loop_engine.streams and not engine.has_unfinished_requests()), loop_engine.streams
            assert kv_in_use(engine) == 0
            gc.collect()
            assert not [o for o in gc.get_objects() if type(o) is RequestStream]
            rss.append(_rss_mib() or 0.0)
            wave += 1
        print(f"soak: {wave} waves of {CLIENTS} in {time.perf_counter() - started:.0f} s: {counts}; RSS MiB per wave {rss}")
        assert counts["refused"] > 0 and counts["completed"] > 0 and counts["hung_up"] > 0, counts
        assert metric(url, "folovllm:requests_rejected_total", reason="queue_full") == counts["refused"]
        assert metric(url, "vllm:request_success_total", finished_reason="length") == counts["completed"]
        assert metric(url, "folovllm:requests_aborted_total") == counts["hung_up"]
    # flat memory: after the first two waves (allocator and caches warm), resident memory grows by less than
    # 64 MiB however many waves run (one wave moves ~2,400 tokens through ~200 connections)
    if rss[-1] and len(rss) > 2:
        assert rss[-1] - rss[1] < 64, rss

