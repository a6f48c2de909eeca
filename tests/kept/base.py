"""Fixtures every kept-behaviour module shares: which engine runs, and LLMs of it built once per module."""

from __future__ import annotations

import importlib

import pytest

from shared.llm import engine_options


@pytest.fixture(scope="module")
def engine_name(request) -> str:
    """The engine under test: the `ENGINE` constant of the milestone's entry module (`m3_paged`, ...)."""
    return request.module.ENGINE


def llm_class(name: str):
    return importlib.import_module(name).LLM


def options_of(name: str) -> list[str]:
    """The options engine `name` takes beyond the common ones (max_num_seqs, block_size, ...)."""
    return engine_options(llm_class(name).engine_class)


def make_llm(name: str, **options):
    """An LLM of engine `name`: by default on the bundled model, CPU, float32."""
    return llm_class(name)(**{"model": "tiny-qwen3", "device": "cpu", "dtype": "float32", **options})


@pytest.fixture(scope="module")
def tiny_llm(engine_name):
    """The engine with its defaults: the whole 8,192-token context (HF parity runs here)."""
    return make_llm(engine_name)


@pytest.fixture(scope="module")
def llm(engine_name):
    """The engine with a 256-token context: cheaper for the API tests."""
    return make_llm(engine_name, max_model_len=256)
