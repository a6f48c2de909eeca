"""The HTTP side: a FastAPI app with OpenAI's endpoints over an `AsyncEngine`.

    POST /v1/completions        POST /v1/chat/completions     (stream true: server-sent events ending in [DONE])
    GET  /v1/models             GET  /health                  GET  /metrics (Prometheus text)

Every error is OpenAI's JSON (`{"error": {"message", "type", "param", "code"}}`); a user's mistake is a 4xx that
names the parameter, never a 500. Every response carries `X-Request-Id` (the client's, if it sent one), which is
also the engine's request id and appears in the logs.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sse_starlette import EventSourceResponse
from sse_starlette.sse import AppStatus
from starlette.exceptions import HTTPException

from shared.engine_api import Engine
from shared.inputs import check_unicode
from shared.outputs import RequestOutput
from shared.sampling import SamplingParams
from shared.serve.async_engine import AsyncEngine, RequestStream
from shared.serve.metrics import ServerMetrics
from shared.serve.protocol import ApiError, ChatCompletionRequest, CompletionRequest
from shared.serve.responses import DeltaTracker, Formatter, Usage

log = logging.getLogger("shared.serve")

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# sse-starlette would cut every stream the moment uvicorn gets SIGTERM; the engine's drain ends them instead
AppStatus.disable_automatic_graceful_drain()


@dataclass
class ServerSettings:
    model_name: str  # what /v1/models lists and what requests must name
    engine_name: str = ""  # the milestone, for /v1/models and the logs
    api_key: str | None = None  # guards /v1/*; /health and /metrics stay open, as in vLLM
    max_queue: int | None = 256  # requests waiting for their first token; beyond it, 429
    request_timeout: float | None = 600.0  # seconds from arrival to the last token; beyond it, abort and 408
    shutdown_grace: float = 30.0  # on SIGTERM, seconds in-flight requests get to finish before they are aborted


class ApiKeyMiddleware:
    """Plain ASGI (a BaseHTTPMiddleware would wrap every stream and hide client disconnects): a /v1/ request
    without `Authorization: Bearer <key>` gets 401 before it is parsed."""

    def __init__(self, app, api_key: str, metrics: ServerMetrics) -> None:
        self.app, self.expected, self.metrics = app, f"Bearer {api_key}".encode(), metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                self.metrics.on_reject("unauthorized")
                err = ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                               kind="authentication_error", code="invalid_api_key")
                await JSONResponse(err.body(), 401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(engine: Engine, settings: ServerSettings) -> FastAPI:
    """The app for one engine. The engine loop starts and stops with the app (its lifespan)."""
    metrics = ServerMetrics(settings.model_name)
    # the handlers tokenize and decode on the event loop while the engine's thread detokenizes inside step():
    # a tokenizer of their own, so the two never share one (HF fast tokenizers are not safe to share that way)
    tokenizer = copy.deepcopy(engine.tokenizer)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.loop = asyncio.get_running_loop()
        metrics.start_from(engine.stats)  # the engine may have run before: its totals so far are not this server's
        app.state.engine = AsyncEngine(engine, settings.max_queue, metrics)
        app.state.engine.start()
        log.info("server ready", extra={"fields": {"engine": settings.engine_name, "model": settings.model_name}})
        yield
        await app.state.engine.shutdown(settings.shutdown_grace)
        log.info("server stopped")

    app = FastAPI(title="FoloVLLM", lifespan=lifespan)
    app.state.settings, app.state.metrics = settings, metrics
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key, metrics=metrics)

    def begin_shutdown() -> None:
        """Called from a signal handler (any thread): stop admitting, drain, then abort what is left."""
        loop = getattr(app.state, "loop", None)
        if loop is None:
            return

        def drain() -> None:  # the task is kept on app.state: asyncio holds only a weak reference to a running task
            app.state.drain = loop.create_task(app.state.engine.shutdown(settings.shutdown_grace))

        loop.call_soon_threadsafe(drain)

    app.state.begin_shutdown = begin_shutdown

    # -- errors: always OpenAI's JSON ----------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        return _error_response(request, err, metrics)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        return _error_response(request, _validation_api_error(err), metrics)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, err: HTTPException):
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return _error_response(request, ApiError(err.status_code, f"{request.method} {request.url.path}: {err.detail}",
                                                 kind=kind), metrics)

    # -- open endpoints ------------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        if not app.state.engine.accepting:
            return JSONResponse({"status": "shutting down"}, 503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # -- OpenAI endpoints ----------------------------------------------------------------------------------------
    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{
            "id": settings.model_name, "object": "model", "created": int(time.time()), "owned_by": "folovllm",
            "root": settings.model_name, "engine": settings.engine_name, "max_model_len": engine.max_model_len}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        rid = _request_id(request)
        _check_model(body.model, settings)
        prompts = body.prompts()
        params = body.to_sampling(engine.max_model_len)
        ids = [_encode(tokenizer, p) for p in prompts]
        fmt = Formatter("completion", f"cmpl-{rid}", settings.model_name, tokenizer)
        return await _serve(request, app.state.engine, rid, ids, params, body.stream, body.include_usage, fmt, settings)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        rid = _request_id(request)
        _check_model(body.model, settings)
        params = body.to_sampling(engine.max_model_len)
        ids = [_encode(tokenizer, body.prompt(tokenizer))]
        fmt = Formatter("chat", f"chatcmpl-{rid}", settings.model_name, tokenizer)
        return await _serve(request, app.state.engine, rid, ids, params, body.stream, body.include_usage, fmt, settings)

    return app


class DrainingServer(uvicorn.Server):
    """uvicorn's server whose first SIGTERM/SIGINT starts the engine's drain: new requests get 503, those in flight
    finish (or, after the grace period, are aborted and their streams end with finish_reason "abort"), and uvicorn
    waits for their connections to close before it stops."""

    def handle_exit(self, sig, frame) -> None:
        if not self.should_exit:
            self.config.app.state.begin_shutdown()
        super().handle_exit(sig, frame)


# -- one request, from admission to the last byte -------------------------------------------------------------------
async def _serve(request: Request, engine: AsyncEngine, rid: str, prompt_ids: list[list[int]], params: SamplingParams,
                 stream: bool, include_usage: bool, fmt: Formatter, settings: ServerSettings):
    streams = await _admit(engine, rid, prompt_ids, params)
    # from the arrival (the stream's submitted_at), not from the admission a step later: the 408 then says the
    # timeout that was configured, and a slow step does not lengthen it
    deadline = None if settings.request_timeout is None else streams[0].submitted_at + settings.request_timeout
    headers = {"X-Request-Id": rid}
    if stream:
        events = _events(request, engine, streams, params.n, fmt, include_usage, deadline, rid)
        return EventSourceResponse(events, headers=headers, ping=15, sep="\n")
    outs = await _until_done_or_gone(request, engine, streams, deadline)
    if outs is None:  # the client left: its requests were aborted, and nobody reads an answer
        return Response(status_code=499)
    _log_finished(rid, outs, request)
    return JSONResponse(fmt.response(outs, params.n), headers=headers)


async def _admit(engine: AsyncEngine, rid: str, prompt_ids: list[list[int]], params: SamplingParams) -> list[RequestStream]:
    """Add one engine request per prompt (ids rid, or rid-0, rid-1, ... for a batch); all or nothing."""
    names = [rid] if len(prompt_ids) == 1 else [f"{rid}-{i}" for i in range(len(prompt_ids))]
    streams: list[RequestStream] = []
    try:
        for name, ids in zip(names, prompt_ids, strict=True):
            streams.append(await engine.add(ids, params, name))
    except BaseException as err:
        for s in streams:
            engine.abort(s.request_id)
        if isinstance(err, ApiError) and err.param == "prompt" and len(names) > 1:
            err.message = f"prompt {len(streams)}: {err.message}"
        raise
    return streams


async def _merged(streams: list[RequestStream], deadline: float | None) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(prompt index, output) from every stream as they come."""
    if len(streams) == 1:
        async for out in streams[0].outputs(deadline):
            yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, s: RequestStream) -> None:
        try:
            async for out in s.outputs(deadline):
                await queue.put((i, out, None))
        except Exception as err:
            await queue.put((i, None, err))
        await queue.put((i, None, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        open_streams = len(streams)
        while open_streams:
            i, out, err = await queue.get()
            if err is not None:
                raise err
            if out is None:
                open_streams -= 1
            else:
                yield i, out
    finally:
        for t in tasks:
            t.cancel()


async def _until_done_or_gone(request: Request, engine: AsyncEngine, streams: list[RequestStream],
                              deadline: float | None) -> list[RequestOutput] | None:
    """The final outputs, or None if the client disconnected first (then its requests are aborted)."""
    final: dict[int, RequestOutput] = {}

    async def collect() -> None:
        async for i, out in _merged(streams, deadline):
            final[i] = out

    work = asyncio.create_task(collect())
    gone = asyncio.create_task(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            return None
        work.result()  # re-raise a timeout or an engine error
        return [final[i] for i in range(len(streams))]
    finally:
        work.cancel()
        gone.cancel()
        for s in streams:
            engine.abort(s.request_id)  # a no-op for the ones that finished


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _events(request: Request, engine: AsyncEngine, streams: list[RequestStream], n: int, fmt: Formatter,
                  include_usage: bool, deadline: float | None, rid: str) -> AsyncIterator[str]:
    """The SSE data lines of a stream. A client that disconnects cancels this generator (sse-starlette notices),
    and the finally clause aborts its requests, which frees their KV blocks before the next step."""
    tracker, usage, done = DeltaTracker(), Usage(), []
    try:
        if fmt.kind == "chat":
            for index in range(len(streams) * n):
                yield _json(fmt.role_chunk(index))
        async for i, out in _merged(streams, deadline):
            for d in tracker.deltas(i, out, n):
                yield _json(fmt.delta_chunk(d))
            if out.finished:
                usage.add(out)
                done.append(out)
        if include_usage:
            yield _json(fmt.chunk([], usage))
        _log_finished(rid, done, request)
    except ApiError as err:  # a timeout (or an engine failure) after the 200 went out: an error event, then [DONE]
        log.warning(err.message, extra={"fields": {"request_id": rid, "status": err.status}})
        yield _json(err.body())
    finally:
        for s in streams:
            engine.abort(s.request_id)
    yield "[DONE]"


def _json(body: dict) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


# -- small helpers ---------------------------------------------------------------------------------------------------
def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id")
    if given is None:
        rid = uuid.uuid4().hex
    elif REQUEST_ID.fullmatch(given):
        rid = given
    else:
        raise ApiError(400, "X-Request-Id must be 1 to 128 characters from A-Z a-z 0-9 . _ : -", "X-Request-Id")
    request.state.request_id = rid
    return rid


def _check_model(model: str, settings: ServerSettings) -> None:
    if model != settings.model_name:
        raise ApiError(404, f"the model {model!r} does not exist: this server serves {settings.model_name!r}",
                       "model", kind="not_found_error", code="model_not_found")


def _encode(tokenizer, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, list):
        return prompt  # token ids: the engine checks their range
    try:
        check_unicode(prompt)
    except ValueError as err:
        raise ApiError(400, str(err), "prompt") from None
    return tokenizer.encode(prompt)


def _validation_api_error(err: RequestValidationError) -> ApiError:
    first = err.errors()[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}")
    param = next((x for x in loc if not x.isdigit()), None)
    where = ".".join(loc) or "body"
    if first.get("type") == "extra_forbidden":
        return ApiError(400, f"unknown parameter {where!r}", param)
    if first.get("type") == "missing":
        return ApiError(400, f"missing required parameter {where!r}", param)
    return ApiError(400, f"{where}: {first.get('msg')} (got {first.get('input')!r})", param)


def _error_response(request: Request, err: ApiError, metrics: ServerMetrics) -> JSONResponse:
    rid = getattr(request.state, "request_id", None)
    if rid is None:  # refused before a handler ran (a bad body, an unknown route): still echo a valid client id
        given = request.headers.get("x-request-id")
        rid = given if given is not None and REQUEST_ID.fullmatch(given) else None
    reason = {429: "queue_full", 503: "shutting_down", 404: "not_found", 401: "unauthorized"}.get(err.status)
    if reason or 400 <= err.status < 500:
        metrics.on_reject(reason or "bad_request")
    log.info("request refused", extra={"fields": {"request_id": rid, "status": err.status, "param": err.param,
                                                  "error": err.message, "path": request.url.path}})
    headers = {**err.headers, **({"X-Request-Id": rid} if rid else {})}
    return JSONResponse(err.body(), err.status, headers=headers)


def _log_finished(rid: str, outs: list[RequestOutput], request: Request) -> None:
    if not outs:
        return
    m = outs[0].metrics
    log.info("request finished", extra={"fields": {
        "request_id": rid, "path": request.url.path,
        "prompt_tokens": sum(len(o.prompt_token_ids) for o in outs),
        "completion_tokens": sum(len(c.token_ids) for o in outs for c in o.outputs),
        "finish_reasons": sorted({c.finish_reason for o in outs for c in o.outputs}),
        "ttft_ms": None if m.ttft is None else round(m.ttft * 1e3, 2),
        "e2e_ms": None if m.e2e is None else round(m.e2e * 1e3, 2)}})
