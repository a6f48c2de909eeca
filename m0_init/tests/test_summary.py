"""`python -m m0_init`: the summary agrees with the checkpoint and the CLI fails cleanly on a bad name."""

import os
import subprocess
import sys

import torch

from m0_init import summarize
from shared.loader import load_model


def test_summary_counts_match_loaded_model():
    s = summarize("tiny-qwen3")
    model, config, _ = load_model("tiny-qwen3", torch.float32, "cpu")
    assert s.num_parameters == sum(p.numel() for p in model.parameters()) == config.num_parameters()
    assert s.total_bytes == 2 * s.num_parameters  # stored in bf16


def test_cli_prints_table_and_clean_error():
    env = {**os.environ, "COLUMNS": "160"}
    ok = subprocess.run([sys.executable, "-m", "m0_init"], capture_output=True, text=True, timeout=120, env=env)
    assert ok.returncode == 0
    assert "head dim" in ok.stdout and f"{summarize('tiny-qwen3').num_parameters:,}" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "m0_init", "--model", "no-such[b]model"], capture_output=True,
                         text=True, timeout=120)  # the name is printed as it is, not read as rich markup
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown model 'no-such[b]model'")
    assert len(bad.stderr.strip().splitlines()) == 1
