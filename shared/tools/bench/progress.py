"""Progress while the engines run: `Reporter` shows a rich bar per engine run on a terminal (requests
done, live output tok/s) and one line per run on stderr elsewhere; `Task` is one such run."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def _live(console: Console) -> bool:
    return console.is_terminal and not console.is_jupyter and not console.is_dumb_terminal


class Reporter:
    """A rich progress bar per engine run (requests done/total, live output tok/s) on a terminal; one line
    per engine run on stderr otherwise (a log file, CI, a notebook)."""

    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console()
        self.live = _live(self.console) and not quiet
        self.quiet = quiet
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                 console=self.console, disable=not self.live, transient=False)

    def __enter__(self) -> Reporter:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def start(self, label: str, total: int) -> Task:
        return Task(self, label, total)


class Task:
    def __init__(self, reporter: Reporter, label: str, total: int) -> None:
        self.reporter, self.label, self.total = reporter, label, total
        self.id = reporter.progress.add_task(label, total=total, rate="") if reporter.live else None
        self.t0 = time.perf_counter()
        self.done = self.tokens = 0

    def update(self, done: int, tokens: int) -> None:
        self.done, self.tokens = done, tokens
        if self.id is not None:
            rate = tokens / max(time.perf_counter() - self.t0, 1e-9)
            self.reporter.progress.update(self.id, completed=done, rate=f"{rate:,.0f} output tok/s")

    def finish(self, wall: float) -> None:
        if self.id is not None:
            self.reporter.progress.update(self.id, completed=self.done, rate=f"{self.tokens / wall:,.1f} output tok/s")
        elif not self.reporter.quiet:
            Console(stderr=True, soft_wrap=True).print(
                f"{self.label}: {self.tokens / wall:,.1f} output tok/s ({self.done}/{self.total} requests, {wall:.1f} s)",
                highlight=False, markup=False)
