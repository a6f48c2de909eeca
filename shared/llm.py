"""The offline front end every milestone shares: `LLM(model=..., **options).generate(prompts, params)`.

A milestone's `LLM` is this class with its own `engine_class`; `generate` adds every prompt to the engine,
steps it until nothing is left, and returns the outputs in prompt order, with a progress bar.
"""

from __future__ import annotations

import inspect
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from shared.config import EngineConfig
from shared.engine_api import Engine
from shared.inputs import normalize_params, normalize_prompts
from shared.outputs import RequestOutput
from shared.sampling import SamplingParams


def engine_options(engine_class: type) -> list[str]:
    """The options a milestone's engine takes beyond the EngineConfig (max_num_seqs, ...), from its signature."""
    return [p for p in inspect.signature(engine_class.__init__).parameters if p not in ("self", "config")]


class LLMBase:
    engine_class: type[Engine]  # the milestone's LLMEngine

    def __init__(self, model: str = "tiny-qwen3", device: str = "auto", dtype: str = "auto",
                 max_model_len: int | None = None, seed: int = 0, num_threads: int | None = None, **options) -> None:
        allowed = engine_options(self.engine_class)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for {self.engine_class.__module__}; allowed: {allowed or 'none'}")
        config = EngineConfig(model=model, device=device, dtype=dtype, max_model_len=max_model_len, seed=seed,
                              num_threads=num_threads)
        self.engine = self.engine_class(config, **options)
        self.tokenizer = self.engine.tokenizer

    def generate(self, prompts, sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        prompts = normalize_prompts(prompts)
        params = normalize_params(sampling_params, len(prompts))
        ids: list[str] = []
        try:
            for prompt, sp in zip(prompts, params, strict=True):
                ids.append(self.engine.add_request(prompt, sp))
            return self._run(ids, use_tqdm and len(prompts) > 1)
        except ValueError as err:
            self._abort(ids)
            if len(ids) < len(prompts):  # one bad prompt fails the call before any work is done
                raise ValueError(f"prompt {len(ids)}: {err}") from None
            raise
        except BaseException:  # any failure (or Ctrl-C) leaves the engine as it was: nothing of this call queued
            self._abort(ids)
            raise

    def _abort(self, ids: list[str]) -> None:
        for rid in ids:
            self.engine.abort_request(rid)

    def _run(self, ids: list[str], show: bool) -> list[RequestOutput]:
        """Step the engine until every request of `ids` has finished; returns their outputs in order."""
        done: dict[str, RequestOutput] = {}
        stats = self.engine.stats  # engines from M2 on record per-step token counts; m1 has None
        with Progress(TextColumn("[bold]generating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[rate]}"), disable=not show, transient=False) as bar:
            task = bar.add_task("generate", total=len(ids), rate="")
            start, out_tokens = time.perf_counter(), 0
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    if out.finished:
                        done[out.request_id] = out
                        out_tokens += out.metrics.num_output_tokens
                if show:
                    bar.update(task, completed=len(done), rate=_rate(stats, out_tokens, time.perf_counter() - start))
        return [done[i] for i in ids]


def _rate(stats, out_tokens: int, elapsed: float) -> str:
    if stats is None:
        return f"{out_tokens / max(elapsed, 1e-9):,.0f} output tok/s"
    prefill, decode = stats.rates()
    return f"prefill {prefill:,.0f} tok/s · decode {decode:,.0f} tok/s"
