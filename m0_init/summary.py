"""M0's lesson: what a checkpoint is made of, read from its config and safetensors headers alone.

`summarize(name)` resolves a model, parses its config into a `ModelConfig`, and counts parameters and
bytes per dtype from the safetensors headers (no tensor is loaded, so it is instant even for big models).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.table import Table
from rich.text import Text

from shared.config import ModelConfig
from shared.loader import checkpoint_shapes, resolve_model

DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "BF16": 2, "F16": 2, "I16": 2, "U16": 2,
               "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass
class ModelSummary:
    name: str
    path: Path
    config: ModelConfig
    num_parameters: int  # counted from the checkpoint's tensors
    bytes_by_dtype: dict[str, int]
    num_tensors: int

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_dtype.values())


def summarize(name: str) -> ModelSummary:
    path = resolve_model(name)
    config = ModelConfig.from_dir(path)
    params, nbytes = 0, Counter()
    shapes = checkpoint_shapes(path)
    for shape, dtype in shapes.values():
        n = math.prod(shape)
        params += n
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"tensor dtype {dtype!r} in {path} is not one m0_init knows: {sorted(DTYPE_BYTES)}")
        nbytes[dtype] += n * DTYPE_BYTES[dtype]
    return ModelSummary(name, path, config, params, dict(nbytes), len(shapes))


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:,.0f} B"
        n /= 1024
    return str(n)


def summary_table(s: ModelSummary) -> Table:
    c = s.config
    t = Table(title=Text(f"{s.name}  ({c.model_type})"), show_header=True, header_style="bold")  # a name is not markup
    t.add_column("property")
    t.add_column("value", justify="right")
    rows = [
        ("layers", c.num_hidden_layers),
        ("hidden size", c.hidden_size),
        ("MLP intermediate size", c.intermediate_size),
        ("query heads", c.num_attention_heads),
        ("KV heads (GQA groups)", f"{c.num_key_value_heads} ({c.num_attention_heads // c.num_key_value_heads} q/kv)"),
        ("head dim", c.head_dim),
        ("vocab size", c.vocab_size),
        ("context (max positions)", c.max_position_embeddings),
        ("RoPE theta", f"{c.rope_theta:g}"),
        ("tied embeddings", c.tie_word_embeddings),
        ("q/k norm", c.qk_norm),
        ("parameters (checkpoint)", f"{s.num_parameters:,}"),
        ("parameters (from shape)", f"{c.num_parameters():,}"),
        *[(f"weight bytes ({dt})", _fmt_bytes(b)) for dt, b in sorted(s.bytes_by_dtype.items())],
        ("KV cache bytes / token (bf16)", f"{c.kv_bytes_per_token(torch.bfloat16):,}"),
        ("KV cache bytes / token (fp32)", f"{c.kv_bytes_per_token(torch.float32):,}"),
        ("KV cache for a full context (bf16)", _fmt_bytes(c.kv_bytes_per_token(torch.bfloat16) * c.max_position_embeddings)),
        ("EOS token ids", ", ".join(map(str, c.eos_token_ids))),
        ("path", str(s.path)),
    ]
    for k, v in rows:
        t.add_row(k, Text(str(v)))
    return t
