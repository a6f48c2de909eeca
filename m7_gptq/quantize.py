"""`python -m m7_gptq.quantize --model tiny-qwen3 --out DIR`: make a GPTQ checkpoint that vLLM, transformers and m7 read.

The model is loaded in float32, calibrated layer by layer (calibrate.py) on `--num-samples` windows of
`--seq-len` tokens, and written to DIR in the standard GPTQ layout (packing.py): config.json with a
`quantization_config`, model.safetensors with qweight/qzeros/scales/g_idx per projection and every other
tensor as the source stored it, the tokenizer files, and `quantization_report.json` (settings, calibration
source, time, and each projection's relative output error against round-to-nearest's).

Calibration text: by default the bundled model's training split (Python standard library source, every 40th
file held out, shared/corpus.py), so the held-out evaluation text is never seen; `--calibration FILE`
takes any text file instead.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.torch import save_file

from m7_gptq.calibrate import METHODS, SEQUENTIAL_GROUPS, quantize_model
from m7_gptq.packing import to_checkpoint
from m7_gptq.quant_config import GPTQConfig
from m7_gptq.quantizer import QuantizedWeight
from shared.cli import print_error
from shared.config import check_int, default_num_threads
from shared.loader import checkpoint_files, load_model, open_checkpoint_file
from shared.tokenizer import Tokenizer

WEIGHT_FILES = ("*.safetensors", "model.safetensors.index.json", "config.json", "quantize_config.json")


def cli_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m m7_gptq.quantize", description="Quantize a model's linear layers "
                                 "to GPTQ 4-bit and save a standard GPTQ checkpoint.")
    ap.add_argument("--model", default="tiny-qwen3", help="bundled name, local HF directory, or hub id")
    ap.add_argument("--out", required=True, help="directory to write the quantized checkpoint into")
    ap.add_argument("--bits", type=int, default=4, help="bits per weight: 2, 4 or 8 (the fast kernels take 4)")
    ap.add_argument("--group-size", type=int, default=128, help="input channels per scale/zero: -1, 32, 64, 128, 256")
    ap.add_argument("--desc-act", action="store_true", help="act-order: quantize columns by decreasing Hessian diagonal")
    ap.add_argument("--sym", action=argparse.BooleanOptionalAction, default=True,
                    help="symmetric grid (zero point fixed at 2^(bits-1)); --no-sym: asymmetric")
    ap.add_argument("--method", choices=METHODS, default="gptq", help="gptq, or rtn (round to nearest, no calibration)")
    ap.add_argument("--num-samples", type=int, default=128, help="calibration windows")
    ap.add_argument("--seq-len", type=int, default=512, help="tokens per calibration window")
    ap.add_argument("--damp-percent", type=float, default=0.01, help="dampening: fraction of H's mean diagonal added")
    ap.add_argument("--calibration", default=None, help="a text file to calibrate on (default: the training split)")
    ap.add_argument("--seed", type=int, default=0, help="shuffles the calibration files")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: OMP_NUM_THREADS if set, else half the cores, as the engines)")
    ap.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    return ap


def calibration_samples(tokenizer: Tokenizer, eos: int | None, num_samples: int, seq_len: int,
                        file: str | None, seed: int) -> tuple[list[torch.Tensor], str]:
    """`num_samples` windows of `seq_len` tokens, cut end to end from the calibration text; and its description."""
    from shared.corpus import token_stream, training_texts

    need = num_samples * seq_len
    if file is None:
        stream = token_stream(tokenizer, training_texts(seed), need, eos)
        source = f"training split of the tiny model's corpus (Python stdlib source, seed {seed})"
    else:
        try:
            text = Path(file).read_text(encoding="utf-8", errors="ignore")
        except OSError as err:
            raise ValueError(f"--calibration {file}: cannot be read: {err.strerror or err}") from None
        stream, source = token_stream(tokenizer, [text], need), f"file {file}"
    if len(stream) < need:
        raise ValueError(f"the calibration text has {len(stream)} tokens; {num_samples} samples of {seq_len} need {need}")
    return list(stream.view(num_samples, seq_len)), source


def save_quantized(source: Path, out: Path, config: GPTQConfig, weights: dict[str, QuantizedWeight], report: dict) -> int:
    """Write the GPTQ checkpoint to `out`; returns the bytes of its tensors."""
    out.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():  # tokenizer, generation config, chat template: copied as they are
        if item.is_file() and not any(item.match(pattern) for pattern in WEIGHT_FILES):
            shutil.copy2(item, out / item.name)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, q in weights.items():
        for name, tensor in to_checkpoint(q, config).items():
            tensors[f"{prefix}.{name}"] = tensor
    for file in checkpoint_files(source):  # everything else as the source stored it (its dtype included)
        with open_checkpoint_file(file) as f:
            for name in f.keys():
                if name.removesuffix(".weight") not in weights:
                    tensors[name] = f.get_tensor(name).contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    hf_config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    hf_config["quantization_config"] = config.to_hf_dict()
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
    (out / "quantize_config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n", encoding="utf-8")
    (out / "quantization_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return sum(t.numel() * t.element_size() for t in tensors.values())


def dequantize_checkpoint(source: str | Path, out: str | Path) -> Path:
    """Write a GPTQ checkpoint back as a full-precision one (float32 projections, no quantization_config):
    the weights the quantized model computes with, for reference runs in HF transformers, which cannot read
    GPTQ without GPTQModel installed."""
    from m7_gptq.packing import from_checkpoint
    from m7_gptq.quant_config import read_quant_config

    source, out = Path(source), Path(out)
    config = read_quant_config(source)
    if config is None:
        raise ValueError(f"{source} is not a GPTQ checkpoint (no quantization_config)")
    out.mkdir(parents=True, exist_ok=True)
    tensors, parts = {}, {}
    for file in checkpoint_files(source):
        with open_checkpoint_file(file) as f:
            for name in f.keys():
                prefix, _, leaf = name.rpartition(".")
                if leaf in ("qweight", "qzeros", "scales", "g_idx"):
                    parts.setdefault(prefix, {})[leaf] = f.get_tensor(name)
                else:
                    tensors[name] = f.get_tensor(name)
    for prefix, stored in parts.items():
        tensors[f"{prefix}.weight"] = from_checkpoint(**stored, config=config).dequantize(torch.float32)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for item in source.iterdir():
        if item.is_file() and not any(item.match(p) for p in (*WEIGHT_FILES, "quantization_report.json")):
            shutil.copy2(item, out / item.name)
    hf_config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    hf_config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
    return out


def run_quantize(args: argparse.Namespace, console: Console) -> Path:
    config = GPTQConfig(bits=args.bits, group_size=args.group_size, desc_act=args.desc_act, sym=args.sym,
                        damp_percent=args.damp_percent)
    for name in ("num_samples", "seq_len"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    out = Path(args.out)
    if (out / "config.json").exists() and not args.overwrite:
        raise ValueError(f"{out} already holds a model (config.json); pass --overwrite to replace it")
    torch.set_num_threads(check_int("--threads", args.threads, 1) if args.threads is not None else default_num_threads())
    model, model_config, path = load_model(args.model, torch.float32, "cpu")
    if args.seq_len > model_config.max_position_embeddings:
        raise ValueError(f"--seq-len {args.seq_len} exceeds the model's context ({model_config.max_position_embeddings})")
    tokenizer = Tokenizer(path)
    eos = model_config.eos_token_ids[0] if model_config.eos_token_ids else None
    samples, source = ([], "none (round to nearest)") if args.method == "rtn" else calibration_samples(
        tokenizer, eos, args.num_samples, args.seq_len, args.calibration, args.seed)
    start = time.perf_counter()
    steps = model_config.num_hidden_layers * len(SEQUENTIAL_GROUPS)
    with Progress(TextColumn(f"[bold]{args.method}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[label]}"), console=console) as bar:
        task = bar.add_task("quantize", total=steps, label="")
        weights, reports = quantize_model(model, samples, config, args.method,
                                          on_step=lambda label: bar.update(task, advance=1, label=label))
    seconds = time.perf_counter() - start
    report = {"model": str(args.model), "method": args.method, "config": config.to_hf_dict(),
              "calibration": {"source": source, "num_samples": len(samples), "seq_len": args.seq_len if samples else 0},
              "seconds": round(seconds, 2), "layers": [asdict(r) for r in reports]}
    size = save_quantized(path, out, config, weights, report)
    console.print(f"wrote {out} ({size / 2**20:.2f} MiB of tensors, {len(weights)} projections quantized "
                  f"in {seconds:.1f} s). Run it: python -m m7_gptq --model {out}", soft_wrap=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = cli_parser().parse_args(argv)
    console, err = Console(highlight=False), Console(stderr=True, highlight=False)
    try:
        run_quantize(args, console)
    except ValueError as e:  # bad settings, unknown model, broken checkpoint, too little calibration text
        return print_error(err, e)
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
