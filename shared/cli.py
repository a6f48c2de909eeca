"""The command line every milestone shares: `python -m mN_name "prompt" --max-tokens 64 --temperature 0`.

Tokens stream to the terminal as they are produced; a one-line summary of TTFT, TPOT and tokens/s
follows. A user mistake (bad flag value, unknown model or broken model directory, prompt too long) prints
one red line, never a stack trace, and exits with status 2. User text (the prompt, the generated text, the
model name, error messages that quote them) is printed literally, never read as rich markup: code is full
of brackets, and `a[i]` must not vanish nor `'[/]'` crash.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.text import Text

from shared.sampling import SamplingParams

DEFAULT_PROMPT = "def fibonacci(n):"


def build_parser(prog: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m {prog}", description=f"Generate text with the {prog} engine.")
    ap.add_argument("prompt", nargs="?", default=DEFAULT_PROMPT, help=f"the prompt (default: {DEFAULT_PROMPT!r})")
    ap.add_argument("--model", default="tiny-qwen3", help="bundled name, local HF directory, or hub id (Qwen/Qwen3-0.6B)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--ignore-eos", action="store_true", help="keep generating past the end-of-text token")
    ap.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    ap.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: OMP_NUM_THREADS if set, else half the cores)")
    return ap


def print_error(err: Console, error: Exception | str) -> int:
    """One red line on stderr (`soft_wrap`: rich must not fold a long message); returns the exit status 2."""
    err.print(Text.assemble(("error: ", "red"), str(error)), soft_wrap=True)
    return 2


def main(llm_class, prog: str, argv: list[str] | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    console, err = Console(highlight=False), Console(stderr=True, highlight=False)
    try:
        params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                max_tokens=args.max_tokens, seed=args.seed, ignore_eos=args.ignore_eos)
        llm = llm_class(model=args.model, device=args.device, dtype=args.dtype, max_model_len=args.max_model_len,
                        num_threads=args.threads)
        prompt = llm.tokenizer.apply_chat_template(args.prompt) if args.chat else args.prompt
        engine = llm.engine
        rid = engine.add_request(prompt, params)
    except ValueError as e:  # bad options or prompt, ModelNotFoundError, ModelFormatError
        return print_error(err, e)
    console.print(Text(prompt, style="dim"), end="", soft_wrap=True)
    printed, out = 0, None
    try:
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.request_id == rid and len(out.outputs[0].text) > printed:
                    console.print(Text(out.outputs[0].text[printed:]), end="", soft_wrap=True)
                    printed = len(out.outputs[0].text)
    except KeyboardInterrupt:  # Ctrl-C: stop generating, say so, no traceback
        engine.abort_request(rid)
        console.print()
        err.print(Text("interrupted", style="yellow"))
        return 130
    m = out.metrics
    tps = m.num_output_tokens / m.e2e if m.e2e else 0.0
    tpot = f"{m.tpot * 1e3:.1f} ms" if m.tpot is not None else "n/a"
    console.print(Text.assemble(
        "\n", (f"{m.num_output_tokens} tokens", "bold"), f" ({out.outputs[0].finish_reason})  ",
        f"TTFT {m.ttft * 1e3:.1f} ms  TPOT {tpot}  {tps:.1f} tok/s  ",
        (f"{prog} · {args.model} · {engine.device} · {engine.dtype}", "dim"),
    ), soft_wrap=True)
    return 0
