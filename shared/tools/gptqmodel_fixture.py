"""Build the GPTQModel interop fixture: the bundled tiny model quantized by GPTQModel, plus GPTQModel's own logits.

GPTQModel (the maintained successor of AutoGPTQ) quantizes `shared/assets/tiny-qwen3` to 4 bits and saves the
checkpoint in its default "gptq" (v1) format, the one vLLM and transformers read. The saved checkpoint is then
loaded back with GPTQModel's own loader and kernels on CPU, and the logits of two held-out token windows are
stored next to it, so that our loader and kernels can be tested against a checkpoint we did not write ourselves.

Output (in --out): GPTQModel's checkpoint (config.json with `quantization_config`, quantize_config.json,
model.safetensors, tokenizer files), `reference/logits.safetensors` (`input_ids` int64 [2, 32], `logits` float32
[2, 32, vocab]; in a subfolder, so that loading the checkpoint never reads it as weights) and `fixture.json`
(versions, quantize settings, calibration, kernel class, dtype, command). GPTQModel's own log files (a `logs/`
folder and `quant_log.csv`, with timings) are kept out of the fixture.

Needs the optional `gptqmodel` package (the `gptqmodel` extra of pyproject.toml pins the version), which is not a
dependency of this project: install it into a separate virtual environment, never the project's own (it pins
numpy and pulls in datasets, torchao, ...):

    python3.11 -m venv /work/gptqmodel-venv
    /work/gptqmodel-venv/bin/pip install torch==2.13.0          # CPU wheel first, then keep it pinned
    echo torch==2.13.0 > /tmp/torch-pin.txt
    PIP_CONSTRAINT=/tmp/torch-pin.txt /work/gptqmodel-venv/bin/pip install gptqmodel==7.6.0 rich

Regenerate (about a minute on 2 CPU cores), from the repository root:

    PYTHONPATH=. /work/gptqmodel-venv/bin/python -m shared.tools.gptqmodel_fixture \\
        --out m7_gptq/tests/fixtures/gptqmodel_tiny

Calibration uses only the training split of the tiny model's corpus (`train_tiny.build_corpus()`); the
reference inputs come from the held-out split. Both are read from the running interpreter's standard library,
so regenerating on another Python version gives other (equally valid) calibration data and inputs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

from shared.tools.train_tiny import ASSET_DIR, build_corpus

DEFAULT_OUT = Path("m7_gptq/tests/fixtures/gptqmodel_tiny")
COMMAND = (
    "PYTHONPATH=. /work/gptqmodel-venv/bin/python -m shared.tools.gptqmodel_fixture "
    "--out m7_gptq/tests/fixtures/gptqmodel_tiny"
)
QUANTIZE = {"bits": 4, "group_size": 32, "desc_act": True, "sym": False, "format": "gptq"}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}  # GPTQModel's CPU kernels refuse float32


def corpus_windows(tokenizer, texts: list[str], count: int, length: int, rng: random.Random) -> list[dict]:
    """`count` windows of `length` tokens, each cut at a random offset from a different randomly chosen text."""
    order = list(range(len(texts)))
    rng.shuffle(order)
    windows = []
    for index in order:
        ids = tokenizer(texts[index], verbose=False)["input_ids"]  # texts are longer than the model's context
        if len(ids) < length:
            continue
        start = rng.randrange(len(ids) - length + 1)
        windows.append({"text_index": index, "start": start, "input_ids": ids[start : start + length]})
        if len(windows) == count:
            return windows
    raise ValueError(f"only {len(windows)} texts have at least {length} tokens; {count} needed")


def gptqmodel_quantize(out: Path, calibration: list[list[int]], dtype: torch.dtype, batch_size: int) -> None:
    """Quantize the bundled model with GPTQModel and save its checkpoint (plus the tokenizer) into `out`."""
    from gptqmodel import GPTQConfig, GPTQModel

    config = GPTQConfig(
        bits=QUANTIZE["bits"],
        group_size=QUANTIZE["group_size"],
        desc_act=QUANTIZE["desc_act"],
        act_group_aware=False,  # GPTQModel's default; it cannot be combined with desc_act=True
        sym=QUANTIZE["sym"],
        format=QUANTIZE["format"],
        offload_to_disk=False,  # the whole model is 8 MB: keep every layer in memory
    )
    model = GPTQModel.load(str(ASSET_DIR), config, device="cpu", dtype=dtype)
    samples = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in calibration]
    model.quantize(samples, batch_size=batch_size)  # GPTQModel shows its own per-layer progress
    model.save(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if not (out / name).exists():  # GPTQModel 7.6.0 saves the tokenizer itself: a safety net only
            shutil.copy(ASSET_DIR / name, out / name)
            print(f"copied {name} from {ASSET_DIR}")


@torch.inference_mode()
def gptqmodel_logits(out: Path, input_ids: torch.Tensor, dtype: torch.dtype, backend: str) -> tuple[torch.Tensor, dict]:
    """Reload the saved checkpoint with GPTQModel's own loader and `backend` kernels: float32 logits, kernel facts."""
    from gptqmodel import BACKEND, GPTQModel
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    model = GPTQModel.load(str(out), device="cpu", dtype=dtype, backend=BACKEND(backend))
    qlinears = [m for m in model.model.modules() if isinstance(m, BaseQuantLinear)]
    logits = model.model(input_ids=input_ids).logits.float()
    return logits, {
        "backend": backend,
        "kernel_classes": sorted({f"{type(m).__module__}.{type(m).__name__}" for m in qlinears}),
        "quantized_modules": len(qlinears),
        "dtype": str(model.model.get_input_embeddings().weight.dtype).removeprefix("torch."),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--samples", type=int, default=64, help="calibration windows (training split only)")
    ap.add_argument("--tokens", type=int, default=256, help="tokens per calibration window")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float16",
        help="dtype GPTQModel loads the model in, to quantize and to compute the reference logits",
    )
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--backend",
        default="gptq_torch",
        help="GPTQModel backend for the reference logits; gptq_torch = TorchLinear, plain dequantize + "
        "matmul in --dtype (auto picks TorchAtenLinear on CPU, which rounds scales and activations "
        "to bfloat16; fixture.json records how far its logits are from the reference)",
    )
    args = ap.parse_args()

    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # read at import; GPTQModel 7.6.0 misbehaves on 2 cores
    import gptqmodel
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(ASSET_DIR)
    train_texts, held_out_texts = build_corpus()
    calibration = corpus_windows(tokenizer, train_texts, args.samples, args.tokens, random.Random(args.seed))
    probes = corpus_windows(tokenizer, held_out_texts, 2, 32, random.Random(args.seed + 1))
    input_ids = torch.tensor([p["input_ids"] for p in probes], dtype=torch.int64)
    print(
        f"corpus: {len(calibration)} calibration windows from the training split, "
        f"{len(probes)} probes from the held-out split ({time.time() - t0:.0f}s)"
    )

    if args.out.exists():
        if any(args.out.iterdir()) and not (args.out / "fixture.json").exists():
            raise SystemExit(f"{args.out} is not empty and holds no fixture.json: refusing to replace it")
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    args.out = args.out.resolve()
    dtype = DTYPES[args.dtype]
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):  # GPTQModel writes logs/ into the cwd
        gptqmodel_quantize(args.out, [c["input_ids"] for c in calibration], dtype, args.batch_size)
        logits, kernel = gptqmodel_logits(args.out, input_ids, dtype, args.backend)
        auto_logits, auto_kernel = gptqmodel_logits(args.out, input_ids, dtype, "auto")
    (args.out / "quant_log.csv").unlink(missing_ok=True)  # per-module losses and timings: not reproducible
    reference = {"input_ids": input_ids.contiguous(), "logits": logits.contiguous()}
    (args.out / "reference").mkdir()
    save_file(reference, str(args.out / "reference" / "logits.safetensors"))

    fixture = {
        "what": "tiny-qwen3 quantized by GPTQModel; logits from GPTQModel's own CPU inference of the saved checkpoint",
        "source_model": "shared/assets/tiny-qwen3",
        "versions": {
            "gptqmodel": gptqmodel.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "quantize": {**QUANTIZE, "act_group_aware": False, "load_dtype": args.dtype},
        "calibration": {
            "source": "shared.tools.train_tiny.build_corpus() training split (never the held-out texts)",
            "samples": len(calibration),
            "tokens_each": args.tokens,
            "seed": args.seed,
            "selection": "random.Random(seed) shuffles the texts; the first `samples` long enough give one random "
            "window each",
        },
        "reference": {
            "inputs": "2 windows of 32 tokens from the held-out split, drawn like the calibration windows with "
            "random.Random(seed + 1)",
            "held_out_windows": [{"text_index": p["text_index"], "start": p["start"]} for p in probes],
            **kernel,
            "logits": "float32 [2, 32, vocab]: computed in `dtype` by `kernel_classes`, then cast",
            "auto_backend": {
                "kernel_classes": auto_kernel["kernel_classes"],
                "max_abs_logit_diff": round((auto_logits - logits).abs().max().item(), 6),
                "argmax_agreement": round((auto_logits.argmax(-1) == logits.argmax(-1)).float().mean().item(), 4),
            },
        },
        "command": COMMAND,
    }
    (args.out / "fixture.json").write_text(json.dumps(fixture, indent=1) + "\n")
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(
        f"wrote {args.out} ({size / 1e6:.2f} MB, {time.time() - t0:.0f}s): reference logits from "
        f"{', '.join(kernel['kernel_classes'])} in {kernel['dtype']}"
    )


if __name__ == "__main__":
    main()
