"""`python -m m0_init [--model NAME]`: a table of the model's shape, parameters, bytes and KV cost per token."""

import argparse
import sys

from rich.console import Console

from m0_init.summary import summarize, summary_table
from shared.cli import print_error


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m m0_init", description="Summarise a Qwen3 checkpoint.")
    ap.add_argument("--model", default="tiny-qwen3", help="bundled name, local HF directory, or hub id")
    args = ap.parse_args(argv)
    try:
        s = summarize(args.model)
    except ValueError as e:  # ModelNotFoundError, or ModelFormatError: a broken config.json or safetensors file
        return print_error(Console(stderr=True, highlight=False), e)
    Console().print(summary_table(s))
    return 0


sys.exit(main())
