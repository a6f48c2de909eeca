"""The text the bundled model was trained on, and the text it never saw.

Python's standard library source of the running interpreter (tests excluded), every 40th file held out.
`shared/tools/train_tiny.py` trains on the rest; M7 calibrates GPTQ on training files (`training_texts`) and
measures perplexity on held-out ones (`held_out_texts`), so the quantizer never sees the evaluation text.
The files differ between Python versions: a split is reproducible on one interpreter.
"""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path

import torch

HELD_OUT_EVERY = 40  # every 40th standard-library file is never trained on


def stdlib_files() -> list[Path]:
    """The running interpreter's standard library `.py` files, sorted, without tests, of 200 B to 400 KB."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "tests", "idle_test", "site-packages", "lib2to3", "__pycache__")
    files = [p for p in sorted(root.rglob("*.py")) if not any(part in skip for part in p.relative_to(root).parts)]
    return [p for p in files if 200 < p.stat().st_size < 400_000]


def held_out_files() -> list[Path]:
    """The files training never saw: evaluation text for perplexity and long-context prompts."""
    return stdlib_files()[::HELD_OUT_EVERY]


def training_texts(seed: int = 0) -> list[str]:
    """The training split's files, shuffled by `seed` (a calibration set takes as many as it needs)."""
    files = [f for i, f in enumerate(stdlib_files()) if i % HELD_OUT_EVERY]
    random.Random(seed).shuffle(files)
    return [f.read_text(encoding="utf-8", errors="ignore") for f in files]


def held_out_texts() -> list[str]:
    return [f.read_text(encoding="utf-8", errors="ignore") for f in held_out_files()]


def token_stream(tokenizer, texts, max_tokens: int | None = None, eos: int | None = None) -> torch.Tensor:
    """The texts tokenized end to end (an `eos` id between them), stopping once `max_tokens` are collected."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer.encode(text))
        if eos is not None:
            ids.append(eos)
        if max_tokens is not None and len(ids) >= max_tokens:
            return torch.tensor(ids[:max_tokens], dtype=torch.long)
    return torch.tensor(ids, dtype=torch.long)
