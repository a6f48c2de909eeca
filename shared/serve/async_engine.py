"""The asyncio front of a milestone engine: one loop steps the engine while many HTTP requests are in flight.

A milestone's engine is synchronous and single-threaded: `add_request`, `abort_request` and `step` must never
overlap. So every change to it goes through one place, the engine loop:

    HTTP handlers ──add / abort──► pending changes ──(between two steps)──► engine.add_request / abort_request
                                                                                   │
    HTTP handlers ◄──latest RequestOutput── RequestStream ◄──dispatch── engine.step() in a worker thread

The step runs in a worker thread (torch releases the GIL inside its kernels), so the event loop keeps accepting
connections, parsing JSON and writing tokens to sockets while the model computes. Requests join the running
batch at the next step boundary: continuous batching, seen from the outside.

Backpressure: a request waits (admitted, no token yet) in a queue of at most `max_queue`; beyond that `add` is
refused with 429 at once, because a queue without bound only turns overload into timeouts for everyone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from shared.engine_api import Engine
from shared.outputs import RequestOutput
from shared.sampling import SamplingParams
from shared.serve.metrics import ServerMetrics
from shared.serve.protocol import ApiError

log = logging.getLogger("shared.serve")

RETRY_AFTER_S = 1  # what a 429 tells the client to wait before trying again


class RequestTimeout(ApiError):
    def __init__(self, request_id: str, seconds: float) -> None:
        super().__init__(408, f"request {request_id} did not finish within the server's request timeout of "
                         f"{seconds:g} s; it was aborted", kind="timeout_error", code="request_timeout")


@dataclass
class RequestStream:
    """What one engine request's reader sees: the latest RequestOutput (outputs are cumulative, so a slow reader
    skips the ones in between and no backlog grows), then the end. Times are perf_counter() seconds."""

    request_id: str
    num_prompt_tokens: int
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    last_token_at: float | None = None
    num_output_tokens: int = 0
    latest: RequestOutput | None = None
    error: Exception | None = None
    finished: bool = False
    admitted: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def publish(self, out: RequestOutput) -> None:
        self.latest = out
        self.finished = out.finished
        self.changed.set()

    def fail(self, error: Exception) -> None:
        self.error, self.finished = error, True
        if not self.admitted.done():
            self.admitted.set_exception(error)
        self.changed.set()

    async def outputs(self, deadline: float | None) -> AsyncIterator[RequestOutput]:
        """Each new output until the request finishes; RequestTimeout once `deadline` (perf_counter) passes."""
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
            try:
                await asyncio.wait_for(self.changed.wait(), timeout)
            except asyncio.TimeoutError:
                raise RequestTimeout(self.request_id, deadline - self.submitted_at) from None
            self.changed.clear()
            if self.error is not None:
                raise self.error
            if self.latest is not None:
                yield self.latest
            if self.finished:
                return


@dataclass
class _Pending:
    prompt_token_ids: list[int]
    params: SamplingParams
    stream: RequestStream


class AsyncEngine:
    """Owns a milestone engine and the loop that steps it. Create and use it inside a running event loop."""

    def __init__(self, engine: Engine, max_queue: int | None = None, metrics: ServerMetrics | None = None) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self.metrics = metrics
        self.accepting = True
        self.streams: dict[str, RequestStream] = {}  # every request the server holds, pending ones included
        self._pending: dict[str, _Pending] = {}
        self._aborts: set[str] = set()
        self._wake = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine-step")
        self._task: asyncio.Task | None = None
        self._stop = False

    # -- the view from outside ---------------------------------------------------------------------------------
    @property
    def num_waiting(self) -> int:
        """Requests admitted that have no token yet (queued in the engine, or prefilling)."""
        return sum(1 for s in self.streams.values() if s.first_token_at is None)

    @property
    def num_running(self) -> int:
        return len(self.streams) - self.num_waiting

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="engine-loop")

    async def add(self, prompt_token_ids: list[int], params: SamplingParams, request_id: str) -> RequestStream:
        """Queue a request; returns its stream once the engine has accepted it. Raises ApiError 429 (queue full),
        503 (shutting down) or 400 (the engine refused it: too long, n too large, id in use)."""
        if not self.accepting:
            raise ApiError(503, "the server is shutting down and takes no new requests", kind="service_unavailable",
                           code="shutting_down")
        if self.max_queue is not None and self.num_waiting >= self.max_queue:
            raise ApiError(429, f"the server is at capacity: {self.num_waiting} requests are waiting (--max-queue "
                           f"{self.max_queue}); retry after {RETRY_AFTER_S} s", kind="rate_limit_error",
                           code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)})
        if request_id in self.streams:
            raise ApiError(400, f"request id {request_id!r} is already in use by a request in flight", "X-Request-Id")
        stream = RequestStream(request_id, len(prompt_token_ids))
        self.streams[request_id] = stream
        self._pending[request_id] = _Pending(prompt_token_ids, params, stream)
        self._wake.set()
        try:
            await stream.admitted  # set by the loop once engine.add_request has returned (or failed)
        except asyncio.CancelledError:  # the client left while the request was being admitted
            self.abort(request_id)
            raise
        return stream

    def abort(self, request_id: str) -> None:
        """Stop a request (client gone, timeout): it leaves the engine, and frees its KV blocks, before the next
        step. Unknown or finished ids are ignored."""
        stream = self.streams.pop(request_id, None)
        if stream is None:
            return
        if self._pending.pop(request_id, None) is not None:  # never reached the engine
            stream.fail(ApiError(499, "request aborted before it started", code="aborted"))
        else:
            self._aborts.add(request_id)
            self._wake.set()
        if self.metrics:
            self.metrics.on_abort()

    async def shutdown(self, grace: float) -> None:
        """Stop taking requests, let those in flight finish for up to `grace` seconds, abort the rest (their
        readers get finish_reason "abort"), then stop the loop."""
        self.accepting = False
        deadline = time.perf_counter() + grace
        while self.streams and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        left = list(self.streams)
        if left:
            log.warning("shutdown: aborting requests still in flight", extra={"fields": {"aborted": len(left)}})
        for rid in left:
            self._finish_as_aborted(rid)
        self._stop = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    # -- the loop ----------------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._apply_changes()
            if not self.engine.has_unfinished_requests():
                if self.metrics:
                    self.metrics.on_idle(self)
                if self._stop:
                    return
                if not self._pending and not self._aborts:
                    self._wake.clear()
                    await self._wake.wait()
                continue
            try:
                outputs = await loop.run_in_executor(self._executor, self.engine.step)
            except Exception as err:  # an engine bug: fail what is in flight, keep serving
                log.exception("engine step failed; aborting every request in flight")
                for rid in list(self.streams):
                    self._finish_with_error(rid, err)
                continue
            self._dispatch(outputs)

    def _apply_changes(self) -> None:
        """Aborts, then admissions: runs on the event loop's thread while no step is running."""
        for rid in self._aborts:
            self.engine.abort_request(rid)
        self._aborts.clear()
        pending, self._pending = self._pending, {}
        for rid, p in pending.items():
            try:
                self.engine.add_request(p.prompt_token_ids, p.params, rid)
            except ValueError as err:  # the engine's own validation: too long, n too large, ...
                self.streams.pop(rid, None)
                p.stream.fail(ApiError(400, str(err), _param_of(str(err))))
                continue
            p.stream.admitted.set_result(None)
            if self.metrics:
                self.metrics.on_admit(p.stream)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        now = time.perf_counter()
        for out in outputs:
            stream = self.streams.get(out.request_id)
            if stream is None:  # aborted while its step ran
                continue
            new = sum(len(o.token_ids) for o in out.outputs) - stream.num_output_tokens
            if new > 0:
                if self.metrics:
                    self.metrics.on_tokens(stream, now, new)
                if stream.first_token_at is None:
                    stream.first_token_at = now
                stream.last_token_at = now
                stream.num_output_tokens += new
            stream.publish(out)
            if out.finished:
                del self.streams[out.request_id]
                if self.metrics:
                    self.metrics.on_finish(stream, out, now)
        if self.metrics:
            self.metrics.on_step(self)

    def _finish_as_aborted(self, rid: str) -> None:
        """Abort in the engine and hand the reader a last output with finish_reason "abort" (shutdown)."""
        stream = self.streams.pop(rid)
        if self._pending.pop(rid, None) is None:
            self._aborts.add(rid)
        if self.metrics:
            self.metrics.on_abort()
        out = stream.latest
        if out is None:
            stream.fail(ApiError(503, "the server shut down before this request started", kind="service_unavailable",
                                 code="shutting_down"))
            return
        for o in out.outputs:
            o.finish_reason = o.finish_reason or "abort"
        out.finished = True
        stream.publish(out)

    def _finish_with_error(self, rid: str, err: Exception) -> None:
        stream = self.streams.pop(rid)
        self.engine.abort_request(rid)
        stream.fail(ApiError(500, f"the engine failed while running this request: {type(err).__name__}: {err}",
                             kind="server_error", code="engine_error"))


def _param_of(message: str) -> str | None:
    """Which request parameter an engine's ValueError is about (it names it first, as SamplingParams does)."""
    if message.startswith(("prompt", "a prompt")):
        return "prompt"
    if message.startswith("n="):
        return "n"
    if message.startswith("request_id"):
        return "X-Request-Id"
    return None
