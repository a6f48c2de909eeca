"""Test and benchmark helpers for the OpenAI-compatible server (`shared/serve/`): a real uvicorn server in a
background thread, an engine slowed down step by step, and the KV memory an engine holds.

    with running_server(engine, model_name="tiny-qwen3") as (url, server, app):
        openai.OpenAI(base_url=f"{url}/v1", api_key="-").completions.create(...)

    with slowed(engine, 0.05):  # every step takes 50 ms longer: queues fill, timeouts fire, streams can be cut
        ...

    kv_in_use(engine)  # blocks (m3+), reserved token slots (m2), or positions (m1) held by unfinished requests
    metric(url, "vllm:generation_tokens_total")  # one sample of /metrics
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from shared.engine_api import Engine
from shared.serve.app import DrainingServer, ServerSettings, build_app

START_TIMEOUT_S = 60.0


@contextmanager
def running_server(engine: Engine, *, host: str = "127.0.0.1", join_timeout: float = 60.0,
                   **settings) -> Iterator[tuple[str, DrainingServer, object]]:
    """Serve `engine` on `host` at a free port (port 0) from a background thread; yields (base URL, the
    `DrainingServer`, the FastAPI app). `settings` are `ServerSettings` fields (model_name defaults to
    "tiny-qwen3"). On exit the server is asked to stop (`should_exit`, as after a signal) and its thread joined,
    so the engine loop has stopped and the engine is free for the next server or an offline `generate`."""
    settings.setdefault("model_name", "tiny-qwen3")
    server_settings = ServerSettings(**settings)
    app = build_app(engine, server_settings)
    config = uvicorn.Config(app, host=host, port=0, access_log=False, log_config=None, lifespan="on",
                            timeout_graceful_shutdown=max(1.0, server_settings.shutdown_grace + 5))
    server = DrainingServer(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run()  # not the main thread: uvicorn installs no signal handlers
        except BaseException as err:  # reported to the caller instead of dying silently in the thread
            failure.append(err)

    thread = threading.Thread(target=run, name="uvicorn-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5)
            raise RuntimeError(f"the server did not start: {failure[0] if failure else 'timeout'}")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}", server, app
    finally:
        server.should_exit = True
        thread.join(join_timeout)
        if thread.is_alive():  # pragma: no cover - a hung shutdown: force it rather than leak a thread
            server.force_exit = True
            thread.join(5)


@contextmanager
def slowed(engine: Engine, delay_s: float) -> Iterator[Engine]:
    """Every `engine.step()` inside the block sleeps `delay_s` first (before the model runs, so a request
    admitted meanwhile still joins that step's schedule only at the next one). The engine's own method comes
    back on exit."""
    step = engine.step

    def slow_step():
        time.sleep(delay_s)
        return step()

    engine.step = slow_step  # an instance attribute shadows the class's method
    try:
        yield engine
    finally:
        del engine.step


def kv_in_use(engine: Engine) -> int:
    """KV memory held by unfinished requests, in the engine's own unit: 0 means nothing is held.

    m3..m7: blocks with a reference count above zero (`kv.num_used_blocks`; m6/m7's free-but-cached prefix
    blocks sit in the free queue and are not counted); m2: token slots reserved (`cache.reserved_tokens`);
    m1: the positions of the one contiguous cache of the running request (`cache` is None between requests)."""
    kv = getattr(engine, "kv", None)
    if kv is not None:
        return kv.num_used_blocks
    cache = getattr(engine, "cache", None)
    if cache is None:
        return 0
    if hasattr(cache, "reserved_tokens"):  # m2
        return cache.reserved_tokens
    return cache.max_len  # m1: the running request's cache


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.02) -> bool:
    """Poll `predicate()` until it is true (returns True) or `timeout` seconds pass (returns False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def metric(url: str, name: str, **labels) -> float:
    """The value of one Prometheus sample on the server at `url` (`name` as exposed, e.g. vllm:prompt_tokens_total,
    read with prometheus-client's own parser); 0 if absent."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=60) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0
