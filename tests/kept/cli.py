"""The command line every engine shares, run as a user runs it: `python -m <engine> "prompt" --max-tokens 12`.

Each case is one subprocess (about 3 s), so the happy path runs once and the error cases share one test.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.loader import BUNDLED
from tests.kept.base import engine_name  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def run_cli(engine: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "80"}  # narrower than the output lines: nothing may be folded
    return subprocess.run([sys.executable, "-m", engine, *args, "--device", "cpu"], capture_output=True, text=True,
                          timeout=180, env=env, cwd=ROOT)


def test_streams_the_text_and_summarises(engine_name):
    r = run_cli(engine_name, "def add(a, b):", "--max-tokens", "12", "--ignore-eos")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("def add(a, b):") and "12 tokens" in r.stdout and "TTFT" in r.stdout


def test_brackets_in_the_prompt_are_echoed_literally(engine_name):
    prompt = "total = a[i] * w[b]\ns = '[/]'"  # rich markup would drop [i] and [b], and fail on [/]
    r = run_cli(engine_name, prompt, "--max-tokens", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(prompt)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["x", "--max-tokens", "0"], "max_tokens must be an integer >= 1, got 0"),
        (["x", "--top-p", "1.5"], "top_p must be in (0, 1], got 1.5"),
        (["x", "--temperature", "nan"], "temperature must be a finite number"),
        (["x", "--model", "nope[red]"], "unknown model 'nope[red]'"),  # the message quotes user text: no markup
        ([""], "prompt is empty"),
    ],
    ids=["max-tokens", "top-p", "temperature", "model", "empty-prompt"],
)
def test_a_user_mistake_is_one_line_and_status_2(engine_name, args, message):
    r = run_cli(engine_name, *args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and r.stdout == "" and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and message in lines[0]


def test_a_broken_model_directory_is_one_line(engine_name, tmp_path):
    for f in BUNDLED["tiny-qwen3"].iterdir():
        data = f.read_bytes()
        (tmp_path / f.name).write_bytes(data[: len(data) // 2] if f.name == "model.safetensors" else data)
    r = run_cli(engine_name, "x", "--model", str(tmp_path))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {tmp_path / 'model.safetensors'}: not a readable safetensors file")


def test_ctrl_c_stops_generation_without_a_traceback(engine_name):
    """SIGINT while tokens stream: the CLI aborts the request, says "interrupted" and exits 130."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", engine_name, "def f():", "--max-tokens", "100000", "--ignore-eos",
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=ROOT)
    while proc.stdout.read(1) != "(" and proc.poll() is None:  # the echoed prompt has arrived: generation is on
        pass
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr
