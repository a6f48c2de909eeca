"""Pytest fixtures shared by every milestone's tests (imported by each `tests/conftest.py`).

HF reference outputs are computed once per session and cached, since every milestone compares against
the same ground truth.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from shared.loader import BUNDLED
from shared.tokenizer import Tokenizer
from shared.tools.reference import hf_greedy, load_hf_model, parity_prompts, random_checkpoint

NEW_TOKENS = 64  # every parity prompt generates at least this many tokens (EOS ignored)


def sampling_rows(params, generators=None, prompt=(), outputs=None) -> list:
    """Stand-ins for the sequences a `Sampler` reads: one per row, with its params, generator and tokens."""
    generators = generators or [torch.Generator().manual_seed(i) for i in range(len(params))]
    outputs = outputs or [[] for _ in params]
    return [SimpleNamespace(request=SimpleNamespace(params=p), generator=g, prompt_token_ids=list(prompt),
                            output_token_ids=list(o)) for p, g, o in zip(params, generators, outputs, strict=True)]


@functools.cache
def tiny_tokenizer() -> Tokenizer:
    return Tokenizer(BUNDLED["tiny-qwen3"])


@functools.cache
def hf_model(model: str):
    return load_hf_model(model, dtype="float32")


@functools.cache
def hf_reference(model: str, max_new_tokens: int = NEW_TOKENS, ignore_eos: bool = True) -> tuple[tuple[int, ...], ...]:
    """HF greedy continuations of `parity_prompts` (token ids), EOS ignored so every one is full length."""
    tok = Tokenizer(model if Path(model).exists() else BUNDLED[model])
    ids = [tok.encode(p) for p in parity_prompts(tok)]
    from shared.tools.reference import eos_ids

    outs = hf_greedy(hf_model(model), ids, max_new_tokens, eos_ids(model), ignore_eos=ignore_eos)
    return tuple(tuple(o) for o in outs)


@functools.cache
def random_model_dir(root: str) -> str:
    """A small random-weight Qwen3 of a shape unlike tiny-qwen3 (6 q heads / 2 kv heads, head_dim 32, 3 layers).

    initializer_range 0.1 (HF's default is 0.02) makes the logits peaked enough that greedy choices are
    not decided by rounding noise.
    """
    path = Path(root) / "qwen3-test-random"
    if not (path / "config.json").exists():
        random_checkpoint("qwen3-test", path, seed=1234, vocab_size=4096, initializer_range=0.1)
    return str(path)


@pytest.fixture(scope="session")
def random_model(tmp_path_factory) -> str:
    return random_model_dir(str(tmp_path_factory.getbasetemp()))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def prompt_ids(n: int, salt: int = 0) -> list[int]:
    """A deterministic prompt of `n` token ids (no special tokens), different for each salt."""
    return [16 + (salt * 7919 + 31 * i) % 4000 for i in range(n)]


def kv_bytes_per_token(model: str = "tiny-qwen3", dtype: torch.dtype = torch.float32) -> int:
    """K/V bytes one token takes in every layer, computed from the model's config (4 KiB for tiny-qwen3 in fp32)."""
    from shared.config import ModelConfig
    from shared.loader import resolve_model

    return ModelConfig.from_dir(resolve_model(model)).kv_bytes_per_token(dtype)


def drain(engine, check: bool = True) -> dict:
    """Step `engine` until nothing is left; returns {request_id: final RequestOutput}. With `check`, the
    scheduler's invariants are checked after every step (engines from m2 on have a scheduler)."""
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                assert out.request_id not in finished, "a request finished twice"
                finished[out.request_id] = out
        if check and hasattr(engine, "scheduler"):
            engine.scheduler.check_invariants()
    return finished
