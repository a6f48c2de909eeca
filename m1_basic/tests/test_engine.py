"""M1 engine behaviour: the online API, output order, stop reasons, sampling, KV cache sizing, bad input."""

import subprocess
import sys

import pytest

from m1_basic import LLM, SamplingParams
from shared.tools.testing import tiny_tokenizer


@pytest.fixture(scope="module")
def llm():
    return LLM(model="tiny-qwen3", device="cpu", dtype="float32")


def test_prompt_forms_and_order(llm):
    ids = tiny_tokenizer().encode("import os\n")
    outs = llm.generate(["def a():", ids, "class B:"], SamplingParams(temperature=0, max_tokens=5))
    assert [o.prompt for o in outs] == ["def a():", None, "class B:"]
    assert outs[1].prompt_token_ids == ids
    assert all(len(o.outputs[0].token_ids) == 5 and o.outputs[0].finish_reason == "length" for o in outs)
    assert all(o.metrics.ttft > 0 and o.metrics.tpot > 0 and o.metrics.e2e >= o.metrics.ttft for o in outs)
    single = llm.generate("class B:", SamplingParams(temperature=0, max_tokens=5))
    assert single[0].outputs[0].token_ids == outs[2].outputs[0].token_ids


def test_per_prompt_params(llm):
    outs = llm.generate(["x", "y"], [SamplingParams(max_tokens=2), SamplingParams(max_tokens=4)])
    assert [len(o.outputs[0].token_ids) for o in outs] == [2, 4]


def test_text_matches_tokens(llm):
    out = llm.generate("def main():", SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))[0].outputs[0]
    assert out.text == tiny_tokenizer().decode(out.token_ids)


def test_seeded_sampling_reproduces(llm):
    p = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, max_tokens=20, seed=3, ignore_eos=True)
    a, b = (llm.generate("def", p)[0].outputs[0].token_ids for _ in range(2))
    c = llm.generate("def", SamplingParams(temperature=0.9, top_p=0.95, top_k=50, max_tokens=20, seed=4,
                                           ignore_eos=True))[0].outputs[0].token_ids
    assert a == b and a != c


def test_step_api_and_abort(llm):
    engine = llm.engine
    p = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    first = engine.add_request("def a():", p)
    second = engine.add_request("def b():", p)
    engine.step()
    engine.step()
    engine.abort_request(first)  # the running request
    assert engine.cache is None  # its KV cache is released at once
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
    assert list(finished) == [second] and len(finished[second].outputs[0].token_ids) == 8


def test_kv_cache_is_sized_for_the_request(llm):
    engine = llm.engine
    prompt = tiny_tokenizer().encode("def a():")
    engine.add_request(prompt, SamplingParams(max_tokens=10))
    engine.step()
    assert engine.cache.max_len == len(prompt) + 10
    while engine.has_unfinished_requests():
        engine.step()


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ("", {}, "prompt is empty"),
        ([], {}, "prompts is empty"),
        ("x" * 9000, {}, "but the model's context"),
        ([99999], {}, "prompt token ids must be in"),
    ],
)
def test_bad_input_is_a_clear_error(llm, prompt, params, message):
    with pytest.raises(ValueError, match=message):
        llm.generate(prompt, SamplingParams(**params))
    assert not llm.engine.has_unfinished_requests()


def test_bad_options():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        LLM(model="nope")
    with pytest.raises(ValueError, match="unknown option"):
        LLM(block_size=16)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-tokens", "0"], "max_tokens must be an integer >= 1"),
        (["--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--model", "nope"], "unknown model 'nope'"),
        ([""], "prompt is empty"),
    ],
)
def test_cli_errors_are_one_line(args, message):
    r = subprocess.run([sys.executable, "-m", "m1_basic", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and message in " ".join(r.stderr.split()) and "Traceback" not in r.stderr


def test_cli_streams_and_summarises():
    r = subprocess.run([sys.executable, "-m", "m1_basic", "def add(a, b):", "--max-tokens", "12", "--ignore-eos"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("def add(a, b):") and "12 tokens" in r.stdout and "TTFT" in r.stdout
