"""What the user asked for, checked before any work: `BenchError` (a mistake reported as one red line on
stderr, exit status 2), the engine names `--engines` accepts, and whether `--model` can be found."""

from __future__ import annotations

from typing import NoReturn

from rich.console import Console
from rich.markup import escape

from shared.tools.milestones import ENGINES

ENGINE_NAMES = [*ENGINES, "hf"]  # what --engines accepts


class BenchError(ValueError):
    """A mistake in what the user asked for: reported as one line, exit status 2, no traceback."""


def fail(message: str) -> NoReturn:
    Console(stderr=True, soft_wrap=True).print(f"[red]error: {escape(message)}[/red]", highlight=False)
    raise SystemExit(2)


def check_engines(engines: list[str]) -> None:
    unknown = [e for e in engines if e not in ENGINE_NAMES]
    if unknown:
        raise BenchError(f"unknown engine {', '.join(map(repr, unknown))}: choose from {' '.join(ENGINE_NAMES)} "
                         f"(shared/tools/milestones.py lists the milestones that exist)")
    if not engines:
        raise BenchError("no engines given")


def check_model(model: str) -> None:
    """A bundled name, an HF directory, a cached hub id, or random:<preset>; else BenchError (before any work)."""
    from shared.config import PRESETS
    from shared.loader import resolve_model

    if model.startswith("random:"):
        preset = model.split(":", 1)[1]
        if preset not in PRESETS:
            raise BenchError(f"unknown preset {preset!r} in --model {model}: choose from {', '.join(PRESETS)}")
        return
    try:
        resolve_model(model)
    except ValueError as err:  # ModelNotFoundError
        raise BenchError(str(err)) from None
