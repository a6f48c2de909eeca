"""The engines under test, built and driven: a milestone's `LLM` with the options its engine accepts, an HF
model loaded quietly, a random-weight checkpoint for `random:<preset>`, and `serve`, which steps a
milestone engine through a batch of requests using only the Engine interface (shared/engine_api.py)."""

from __future__ import annotations

import contextlib
import importlib
import tempfile
from pathlib import Path

import torch

from shared.llm import engine_options
from shared.sampling import SamplingParams
from shared.tools.bench.progress import Task


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextlib.contextmanager
def quiet_hf():
    """Silence transformers' weight-loading progress bar and warnings while a model loads."""
    from transformers.utils import logging as hf_logging

    bar, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def _load_hf(model: str, device: str, dtype: str):
    from shared.tools.reference import load_hf_model

    with quiet_hf():
        return load_hf_model(model, dtype=dtype, device=device)


def _build_llm(name: str, model: str, device: str, dtype: str, max_model_len: int | None = None, **options):
    """A milestone's LLM with the options its engine takes (m1 takes no max_num_seqs): the rest are dropped."""
    llm_class = importlib.import_module(name).LLM
    accepted = engine_options(llm_class.engine_class)
    threads = torch.get_num_threads()
    llm = llm_class(model=model, device=device, dtype=dtype, max_model_len=max_model_len,
                    **{k: v for k, v in options.items() if k in accepted and v is not None})
    torch.set_num_threads(threads)  # an engine on CPU sets its default thread count: the benchmark's --threads wins
    return llm


def cold_start(engine) -> None:
    """Before a measured round: forget the prefix cache (M6 on), so that every round starts as the first did,
    not with the previous round's prompts cached. Other engines have nothing to forget."""
    reset = getattr(engine, "reset_prefix_cache", None)
    if reset is not None:
        reset()


def resolve_bench_model(model: str, dtype: str) -> str:
    """`random:<preset>` -> a temporary random-weight checkpoint of that shape; anything else unchanged."""
    if not model.startswith("random:"):
        return model
    from shared.tools.reference import random_checkpoint

    out = Path(tempfile.gettempdir()) / f"folovllm-{model.replace(':', '-')}-{dtype}"
    if not (out / "config.json").exists():
        with quiet_hf():
            random_checkpoint(model.split(":", 1)[1], out, dtype=dtype)
    return str(out)


def serve(llm, requests: list[tuple[list[int], SamplingParams]], task: Task | None = None) -> list:
    """Submit every request at once and step the engine until all have finished: `LLM.generate` without its
    own bar, driven here so that the bar shows the engine's name and output tok/s."""
    engine = llm.engine
    ids = []
    try:
        for prompt, sp in requests:
            ids.append(engine.add_request(prompt, sp))
        done, tokens = {}, 0
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out
                    tokens += out.metrics.num_output_tokens
            if task is not None:
                task.update(len(done), tokens)
        return [done[i] for i in ids]
    except BaseException:  # Ctrl-C or a bad request: leave the engine empty
        for rid in ids:
            engine.abort_request(rid)
        raise
