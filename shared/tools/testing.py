"""Pytest fixtures shared by every milestone's tests (imported by each `tests/conftest.py`).

HF reference outputs are computed once per session and cached, since every milestone compares against
the same ground truth.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from shared.loader import BUNDLED
from shared.tokenizer import Tokenizer
from shared.tools.reference import hf_greedy, load_hf_model, parity_prompts, random_checkpoint

NEW_TOKENS = 64  # every parity prompt generates at least this many tokens (EOS ignored)


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
