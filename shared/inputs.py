"""Turning user input into a Request: prompt normalisation and validation shared by every engine.

Every check raises ValueError with what was wrong and what is allowed; an engine calls this in
`add_request`, so a bad request fails on its own and never disturbs the requests already running.
"""

from __future__ import annotations

import time

import torch

from shared.config import is_int
from shared.request import Request, claim_request_id
from shared.sampling import SamplingParams
from shared.tokenizer import Tokenizer

Prompt = str | list[int]


def normalize_prompts(prompts: Prompt | list[Prompt]) -> list[Prompt]:
    """A string, a list of strings, a list of token ids, or a list of token-id lists -> a list of prompts."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, list) and prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]
    if not isinstance(prompts, list | tuple):
        raise ValueError(f"prompts must be a string, a list of strings or a list of token-id lists, got {type(prompts).__name__}")
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt")
    return list(prompts)


def normalize_params(params: SamplingParams | list[SamplingParams] | None, n: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams() for _ in range(n)]
    if isinstance(params, SamplingParams):
        return [params] * n
    if not isinstance(params, list | tuple):
        raise ValueError(f"sampling_params must be a SamplingParams or a list of them, got {type(params).__name__}")
    params = list(params)
    if len(params) != n:
        raise ValueError(f"got {len(params)} SamplingParams for {n} prompts: give one, or one per prompt")
    return params


def sequence_seeds(seed: int, n: int) -> list[int]:
    """Seeds of a request's n completions: the first is the request's own seed (so n=1 is unchanged), the
    others are drawn from a generator seeded with it, so `seed` alone fixes all n completions."""
    g = torch.Generator().manual_seed(seed)
    return [seed] + [int(torch.randint(0, 2**62, (1,), generator=g).item()) for _ in range(n - 1)]


def check_unicode(text: str) -> None:
    """Refuse text that cannot be encoded as UTF-8: a lone surrogate ("\\ud800", what a broken JSON escape
    or a bad decode leaves) would make the tokenizer fail with a TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"prompt is not valid Unicode text: {err.reason} ({text[err.start]!r}) "
                         f"at position {err.start}") from None


def make_request(prompt: Prompt, params: SamplingParams, tokenizer: Tokenizer, max_model_len: int,
                 generator: torch.Generator, request_id: str | None = None, max_n: int = 1) -> Request:
    """Tokenize and validate one prompt and wrap it in a Request (arrival is stamped before tokenizing).

    `max_n` is the most completions per request the engine runs (`SamplingParams.n`): 1 for a
    one-sequence engine, max_num_seqs for a batching one, since a request's completions run together."""
    arrival = time.perf_counter()
    if not isinstance(params, SamplingParams):
        raise ValueError(f"sampling params must be a SamplingParams, got {type(params).__name__}")
    if params.n > max_n:
        raise ValueError(f"n={params.n} completions per request, but this engine runs at most {max_n} sequence(s) at once "
                         "(max_num_seqs; m1_basic runs one): lower n or raise max_num_seqs")
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("prompt is empty: give at least one character or token")
        check_unicode(prompt)
        text, ids = prompt, tokenizer.encode(prompt)
    elif isinstance(prompt, list | tuple) and all(is_int(t) for t in prompt):
        text, ids = None, [int(t) for t in prompt]
        bad = [t for t in ids if not 0 <= t < tokenizer.vocab_size]
        if bad:
            raise ValueError(f"prompt token ids must be in [0, {tokenizer.vocab_size}), got {bad[:5]}")
    elif isinstance(prompt, list | tuple):
        bad = next(t for t in prompt if not is_int(t))
        raise ValueError(f"prompt token ids must be integers, got {bad!r} ({type(bad).__name__})")
    else:
        raise ValueError(f"a prompt must be a string or a list of token ids, got {type(prompt).__name__}")
    if not ids:
        raise ValueError("prompt is empty: give at least one character or token")
    if len(ids) >= max_model_len:
        raise ValueError(
            f"prompt is {len(ids)} tokens but the model's context (max_model_len) is {max_model_len}: "
            f"shorten it to at most {max_model_len - 1} tokens so that one can be generated"
        )
    # every request samples from its own generator: seeded from params.seed, or from a seed drawn from the
    # engine's generator in arrival order, so its tokens never depend on which requests share its batch
    seed = params.seed if params.seed is not None else int(
        torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    generators = [torch.Generator(device=generator.device).manual_seed(s) for s in sequence_seeds(seed, params.n)]
    req = Request(claim_request_id(request_id, ()), text, ids, params, tokenizer, generators)
    req.arrival_time = arrival  # TTFT includes tokenization, as a user experiences it
    return req
