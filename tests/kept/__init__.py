"""Behaviour every engine keeps, written once. Each milestone's `tests/test_kept.py` runs it for its engine.

The modules here are not named `test_*.py`, so pytest does not collect them on their own. A milestone's
entry star-imports the modules that apply to it and names its engine:

    from tests.kept.every import *  # noqa: F403
    ENGINE = "m3_paged"

- `every`: every engine (m1 on): HF parity, the public API, bad input, request ids, the CLI.
- `batching`: engines that batch (m2 on): continuous batching, scheduler invariants, preemption, n > 1.
- `paged`: engines with a paged KV cache (m3 on): block sizes, copy-on-write, block accounting.
- `flash`: engines with M4's varlen attention (m4 on): every backend against `naive`, backend choice, the
  flash-attn wrapper, prefills continuing a cached sequence (helpers in `varlen`, not a kept module).
- `long_context`: engines with the whole 8K context (m4 on): HF parity on prompts of about 2K, 4K and 7.9K tokens.
"""
