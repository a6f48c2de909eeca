"""An OpenAI-compatible HTTP server over any milestone's engine: `python -m shared.serve --engine m6_prefix`.

    cli.py           flags, engine construction, uvicorn with a draining shutdown
    app.py           the FastAPI app: endpoints, auth, errors, request ids, streaming
    async_engine.py  the engine loop: admissions and aborts between steps, step() in a worker thread, backpressure
    protocol.py      the request bodies (OpenAI's fields plus vLLM's sampling extras) -> prompt and SamplingParams
    responses.py     the response bodies and streamed chunks, usage, logprobs
    metrics.py       Prometheus metrics under vLLM's names
    logs.py          one JSON object per log line

The server needs the `serve` extra (FastAPI, uvicorn, sse-starlette, prometheus-client); the engines do not.
"""
