"""Attention-kernel micro-benchmarks on a GPU: M3's paged decode kernel against the PyTorch reference.

    python -m shared.tools.kernel_bench --out kernels.json

For each batch size and context length, every sequence decodes one query over `context` cached positions
scattered over shuffled blocks of the Qwen3-0.6B head shape (16 query heads over 8 KV heads, head_dim 128,
bf16, blocks of 16). Reported: the time of one layer's decode attention (triton.testing.do_bench, median),
and the bandwidth it reaches, counting the K/V bytes that must be read at least once. Both backends run in
the same process on the same cache, so the ratio is a same-run comparison. M4 adds its kernels here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from shared.config import PRESETS


def decode_case(batch: int, context: int, block_size: int = 16, dtype=torch.bfloat16, seed: int = 0):
    """(q, metadata) for `batch` sequences of `context` positions each, on shuffled blocks of a fresh cache."""
    from m3_paged.attention import PagedMetadata
    from m3_paged.kv_cache import PagedKVCache
    from shared.config import ModelConfig

    shape = PRESETS["qwen3-0.6b"]
    cfg = ModelConfig(**{**shape, "num_hidden_layers": 1})
    g = torch.Generator(device="cuda").manual_seed(seed)
    per_seq = -(-context // block_size)
    num_blocks = batch * per_seq
    cache = PagedKVCache(cfg, num_blocks * block_size * cfg.kv_bytes_per_token(dtype), block_size, 1, dtype, "cuda")
    cache.k[0].normal_(generator=g)
    cache.v[0].normal_(generator=g)
    order = torch.randperm(num_blocks, device="cuda", generator=g).to(torch.int32)
    md = PagedMetadata(
        kv_cache=cache, slot_mapping=torch.empty(0, dtype=torch.long, device="cuda"), num_decodes=batch,
        starts=[context - 1] * batch, lens=[1] * batch, block_tables=order.view(batch, per_seq),
        context_lens=torch.full((batch,), context, dtype=torch.int32, device="cuda"))
    q = torch.randn(batch, cfg.num_attention_heads, cfg.head_dim, device="cuda", dtype=dtype, generator=g)
    return q, md, cfg


def run(batches: list[int], contexts: list[int]) -> list[dict]:
    from triton.testing import do_bench

    from m3_paged.attention import TorchPagedBackend, TritonPagedBackend

    rows = []
    for batch in batches:
        for context in contexts:
            q, md, cfg = decode_case(batch, context)
            kv_bytes = 2 * batch * context * cfg.num_key_value_heads * cfg.head_dim * q.element_size()
            row = {"batch": batch, "context": context, "kv_mib": kv_bytes / 2**20}
            for name, backend in (("torch", TorchPagedBackend()), ("triton", TritonPagedBackend())):
                md.__dict__.pop("decode_gather_index", None)  # the reference's gather index is built per step
                ms = do_bench(lambda b=backend, q=q, md=md: b.decode(q, 0, md), warmup=10, rep=50)
                row[f"{name}_us"] = ms * 1e3
                row[f"{name}_gbps"] = kv_bytes / (ms * 1e-3) / 1e9
            row["triton_speedup"] = row["torch_us"] / row["triton_us"]
            rows.append(row)
            print(f"batch {batch:3d} context {context:5d}: torch {row['torch_us']:9.1f} us  "
                  f"triton {row['triton_us']:8.1f} us ({row['triton_gbps']:7.1f} GB/s)  {row['triton_speedup']:.2f}x",
                  flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m shared.tools.kernel_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--contexts", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.exit(2, "error: the kernel benchmark needs a CUDA GPU\n")
    rows = run(args.batches, args.contexts)
    if args.out:
        args.out.write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                                        "dtype": "bfloat16", "block_size": 16, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
