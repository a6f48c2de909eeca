"""`python -m shared.serve --engine m6_prefix --model tiny-qwen3 --port 8000`: an OpenAI-compatible server over any
milestone's engine (default: the newest). A mistake in the flags, or a model that cannot be loaded, is one red
line and exit status 2; SIGTERM or Ctrl-C drains the requests in flight (`--shutdown-grace`) and exits 0.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import socket
import sys
from typing import NoReturn

from rich.console import Console
from rich.text import Text

from shared.serve.logs import configure_logging

SERVABLE = ["m1_basic", "m2_batching", "m3_paged", "m4_flash", "m5_chunked", "m6_prefix", "m7_gptq"]


class ArgumentError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        raise ArgumentError(f"{message} (see --help)")


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value
    return parse


def engine_option(text: str) -> tuple[str, object]:
    """`key=value` -> (key, value): integers become int, true/false bool, the rest stay strings."""
    key, eq, value = (s.strip() for s in text.partition("="))
    if not eq or not key or not value:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    if re.fullmatch(r"[+-]?\d+", value):
        return key, int(value)
    return key, {"true": True, "false": False}.get(value.lower(), value)


def check_address(host: str, port: int) -> None:
    """Refuse a port that is taken or a host that does not resolve, in one line."""
    if not 0 <= port < 65536:
        raise ArgumentError(f"--port must be in [0, 65536), got {port}")
    try:
        socket.create_server((host, port)).close()
    except OSError as e:
        raise ArgumentError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m shared.serve", description="Serve a milestone's engine over OpenAI's HTTP API.")
    ap.add_argument("--engine", default=SERVABLE[-1], choices=SERVABLE, metavar="ENGINE",
                    help=f"the milestone to serve: {', '.join(SERVABLE)} (default: {SERVABLE[-1]})")
    ap.add_argument("--model", default="tiny-qwen3", help="bundled name, local HF directory, or hub id")
    ap.add_argument("--served-model-name", default=None, help="the name clients send as `model` (default: --model)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key", default=os.environ.get("FOLOVLLM_API_KEY"),
                    help="require 'Authorization: Bearer KEY' on /v1/* (default: $FOLOVLLM_API_KEY; none: open)")
    ap.add_argument("--max-queue", type=_positive(int), default=256,
                    help="requests that may wait for their first token; beyond it 429 + Retry-After (default 256)")
    ap.add_argument("--request-timeout", type=_positive(float), default=600.0,
                    help="seconds a request may take in all before it is aborted with 408 (default 600)")
    ap.add_argument("--shutdown-grace", type=float, default=30.0,
                    help="on SIGTERM, seconds in-flight requests get to finish before they are aborted (default 30)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-model-len", type=_positive(int), default=None)
    ap.add_argument("--threads", type=_positive(int), default=None, help="torch CPU threads for the engine")
    ap.add_argument("-O", "--engine-option", type=engine_option, action="append", default=[], metavar="KEY=VALUE",
                    help="an engine option, e.g. -O max_num_seqs=64 -O enable_prefix_caching=false")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return ap


def load_engine(args: argparse.Namespace):
    """The milestone's engine, built as `LLM(...)` builds it (its options checked by name)."""
    llm = importlib.import_module(args.engine).LLM(
        model=args.model, device=args.device, dtype=args.dtype, max_model_len=args.max_model_len,
        num_threads=args.threads, **dict(args.engine_option))
    return llm.engine


def main(argv: list[str] | None = None) -> int:
    err = Console(stderr=True, highlight=False)
    try:
        args = build_parser().parse_args(argv)
        if args.shutdown_grace < 0:
            raise ArgumentError(f"--shutdown-grace must be >= 0, got {args.shutdown_grace:g}")
        check_address(args.host, args.port)  # before the model loads: a taken port fails in a second, not a minute
        import uvicorn  # the serve extra: pip install -e ".[serve]"

        from shared.serve.app import DrainingServer, ServerSettings, build_app

        engine = load_engine(args)
    except (ArgumentError, ValueError) as e:  # bad flags, unknown option, ModelNotFoundError, ModelFormatError
        err.print(Text.assemble(("error: ", "red"), str(e)), soft_wrap=True)
        return 2
    except ImportError as e:
        err.print(Text.assemble(("error: ", "red"), f"{e.name} is missing: install the serve extra "
                                "(pip install -e '.[serve]')"), soft_wrap=True)
        return 2
    configure_logging(args.log_level)
    settings = ServerSettings(model_name=args.served_model_name or args.model, engine_name=args.engine,
                              api_key=args.api_key, max_queue=args.max_queue, request_timeout=args.request_timeout,
                              shutdown_grace=args.shutdown_grace)
    config = uvicorn.Config(build_app(engine, settings), host=args.host, port=args.port, access_log=False,
                            log_config=None, timeout_graceful_shutdown=args.shutdown_grace + 5)
    server = DrainingServer(config)
    try:
        server.run()
    except (OSError, SystemExit):  # the port was taken meanwhile: uvicorn logs why and exits
        err.print(Text.assemble(("error: ", "red"), f"cannot listen on {args.host}:{args.port}"), soft_wrap=True)
        return 2
    return 0 if server.started else 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
