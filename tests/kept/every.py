"""What every engine keeps, from m1 on: HF parity, the public API, request ids, abort, and clear errors.

Greedy output must equal HuggingFace `generate(do_sample=False)` token for token: nine prompts (plain code,
prose, two chat-templated, non-ASCII, one of ~730 tokens), 64 new tokens each, on the bundled trained model
and on a random-weight Qwen3 of another shape (3 layers, 6 query heads over 2 KV heads, head_dim 32).
Engines that batch run the nine prompts together, in one batch of mixed lengths. With a repetition penalty,
greedy output still equals HF's, and the reported log-probabilities are HF's raw ones (before the penalty).
"""

import functools

import pytest

from shared.engine_api import Engine
from shared.sampling import SamplingParams
from shared.tools.reference import hf_greedy_scored, parity_prompts
from shared.tools.testing import NEW_TOKENS, drain, hf_model, hf_reference, tiny_tokenizer
from tests.kept.base import engine_name, llm, make_llm, options_of, tiny_llm  # noqa: F401

GREEDY = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
GREEDY8 = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


def test_greedy_equals_hf(tiny_llm):
    if tiny_llm.engine.stats is not None:
        tiny_llm.engine.stats.reset()
    outs = tiny_llm.generate(parity_prompts(tiny_tokenizer()), GREEDY)
    for i, (out, ref) in enumerate(zip(outs, hf_reference("tiny-qwen3"), strict=True)):
        assert out.outputs[0].token_ids == list(ref), f"prompt {i} diverges from HF"
    if tiny_llm.engine.stats is not None:  # a batching engine ran them together
        assert tiny_llm.engine.stats.summary()["max_running"] == len(outs)


def test_natural_stop_equals_hf(tiny_llm):
    """With EOS respected, each sequence stops exactly where HF stops (EOS included in both)."""
    outs = tiny_llm.generate(parity_prompts(tiny_tokenizer()), SamplingParams(temperature=0, max_tokens=NEW_TOKENS))
    eos = tiny_llm.engine.model_config.eos_token_ids
    for out, ref in zip(outs, hf_reference("tiny-qwen3", NEW_TOKENS, ignore_eos=False), strict=True):
        assert out.outputs[0].token_ids == list(ref)
        assert out.outputs[0].finish_reason == ("stop" if ref[-1] in eos else "length")


def test_random_shape_equals_hf(engine_name, random_model):
    outs = make_llm(engine_name, model=random_model).generate(parity_prompts(tiny_tokenizer()), GREEDY)
    for i, (out, ref) in enumerate(zip(outs, hf_reference(random_model), strict=True)):
        assert out.outputs[0].token_ids == list(ref), f"prompt {i} diverges from HF"


def test_engine_keeps_the_interface(llm):
    assert isinstance(llm.engine, Engine)


def test_prompt_forms_order_and_metrics(llm):
    ids = tiny_tokenizer().encode("import os\n")
    outs = llm.generate(["def a():", ids, "class B:"], [SamplingParams(temperature=0, max_tokens=n) for n in (5, 6, 7)])
    assert [o.prompt for o in outs] == ["def a():", None, "class B:"] and outs[1].prompt_token_ids == ids
    assert [len(o.outputs[0].token_ids) for o in outs] == [5, 6, 7] and outs[0].outputs[0].finish_reason == "length"
    assert all(o.metrics.ttft > 0 and o.metrics.tpot > 0 and o.metrics.e2e >= o.metrics.ttft for o in outs)
    assert all(o.outputs[0].text == tiny_tokenizer().decode(o.outputs[0].token_ids) for o in outs)
    assert llm.generate("class B:", SamplingParams(temperature=0, max_tokens=7))[0].outputs[0].token_ids == \
        outs[2].outputs[0].token_ids


def test_seeded_sampling_reproduces(llm):
    p = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, max_tokens=20, seed=3, ignore_eos=True)
    a, b = (llm.generate("def", p)[0].outputs[0].token_ids for _ in range(2))
    c = llm.generate("def", SamplingParams(temperature=0.9, top_p=0.95, top_k=50, max_tokens=20, seed=4,
                                           ignore_eos=True))[0].outputs[0].token_ids
    assert a == b and a != c


def test_a_temperature_too_small_to_represent_is_greedy(llm):
    tiny = llm.generate("def f(x):", SamplingParams(temperature=1e-40, max_tokens=12, ignore_eos=True))[0]
    assert tiny.outputs[0].token_ids == llm.generate("def f(x):", SamplingParams(temperature=0, max_tokens=12,
                                                                                   ignore_eos=True))[0].outputs[0].token_ids


@pytest.mark.parametrize("where", ["running", "waiting"])
def test_abort_stops_one_request_and_leaves_the_others_alone(llm, where):
    engine = llm.engine
    ids = [engine.add_request(p, GREEDY8) for p in ("def a():", "def b():", "def c():")]
    if where == "running":
        engine.step()
        engine.step()
    victim = ids[1] if where == "waiting" else ids[0]
    engine.abort_request(victim)
    engine.abort_request("no-such-request")  # ignored
    done = drain(engine)
    kept = [i for i in ids if i != victim]
    assert set(done) == set(kept)
    alone = llm.generate(["def a():", "def b():", "def c():"], GREEDY8)
    assert [done[i].outputs[0].token_ids for i in kept] == [o.outputs[0].token_ids for o, i in zip(alone, ids) if i != victim]


def test_request_ids_never_collide(llm):
    """Ids a user gives and ids the engine assigns are unique among unfinished requests: a user may take the
    engine's next number, and a duplicate is refused without touching the request that holds the id."""
    engine = llm.engine
    first = engine.add_request("def a():", GREEDY8)
    taken = [str(int(first) + k) for k in (1, 2)]  # the numbers the engine would assign next
    for rid, prompt in zip(taken, ("def b():", "def c():"), strict=True):
        assert engine.add_request(prompt, GREEDY8, request_id=rid) == rid
    auto = [engine.add_request(p, GREEDY8) for p in ("def d():", "def e():")]
    assert len({first, *taken, *auto}) == 5
    for dup in (first, taken[0]):
        with pytest.raises(ValueError, match="already in use"):
            engine.add_request("x", GREEDY8, request_id=dup)
    with pytest.raises(ValueError, match="request_id must be a non-empty string"):
        engine.add_request("x", GREEDY8, request_id=7)
    done = drain(engine)
    alone = llm.generate([f"def {c}():" for c in "abcde"], GREEDY8)
    assert [done[i].outputs[0].token_ids for i in (first, *taken, *auto)] == [o.outputs[0].token_ids for o in alone]
    assert engine.add_request("y", GREEDY8, request_id=taken[0]) == taken[0]  # free again once finished
    drain(engine)


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ("", {}, "prompt is empty"),
        ([], {}, "prompt is empty"),
        ("x" * 9000, {}, "but the model's context"),
        ([99999], {}, "prompt token ids must be in"),
        ("\ud800", {}, "Unicode"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(llm, prompt, params, message):
    with pytest.raises(ValueError, match=message):
        llm.generate(["def ok():", prompt], SamplingParams(**params))  # the good prompt before it is withdrawn
    assert not llm.engine.has_unfinished_requests()


def test_any_failure_in_generate_leaves_nothing_queued(llm, monkeypatch):
    """Not only ValueError: whatever breaks a generate() call (here a step that raises), the call's requests are
    gone afterwards, and the next call runs only its own."""
    def broken_step():
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr(llm.engine, "step", broken_step)
        with pytest.raises(RuntimeError, match="boom"):
            llm.generate(["def a():", "def b():"], GREEDY8)
    assert not llm.engine.has_unfinished_requests()
    assert len(llm.generate(["def c():"], GREEDY8)) == 1


def test_n_beyond_what_the_engine_runs_at_once_fails_alone(engine_name):
    most = 4 if "max_num_seqs" in options_of(engine_name) else 1
    llm = make_llm(engine_name, max_model_len=256, **({"max_num_seqs": 4} if most > 1 else {}))
    with pytest.raises(ValueError, match=f"n={most + 1} completions per request, but this engine runs at most {most}"):
        llm.generate("x", SamplingParams(n=most + 1))
    assert len(llm.generate("x", SamplingParams(n=most, max_tokens=2))[0].outputs) == most  # it serves on


def test_max_model_len_caps_prompt_and_output(engine_name):
    out = make_llm(engine_name, max_model_len=20).generate("def f():", SamplingParams(max_tokens=50, ignore_eos=True))[0]
    assert out.outputs[0].finish_reason == "length"
    assert out.metrics.num_prompt_tokens + out.metrics.num_output_tokens == 20


@pytest.mark.parametrize(
    ("options", "message"),
    [({"model": "nope"}, "unknown model 'nope'"), ({"no_such_option": 1}, "unknown option"),
     ({"max_model_len": 64.0}, "max_model_len")],
)
def test_bad_options_are_clear_errors(engine_name, options, message):
    with pytest.raises(ValueError, match=message):
        make_llm(engine_name, **options)


PENALIZED = SamplingParams(temperature=0, repetition_penalty=1.3, max_tokens=16, ignore_eos=True, logprobs=2)


@functools.cache
def _hf_penalized(prompt: str):
    """HF's greedy tokens and raw logits for `prompt` under PENALIZED, computed once for every engine."""
    return hf_greedy_scored(hf_model("tiny-qwen3"), tiny_tokenizer().encode(prompt), PENALIZED.max_tokens,
                            repetition_penalty=PENALIZED.repetition_penalty)


def test_penalties_and_logprobs_equal_hf(tiny_llm):
    """Greedy with repetition_penalty=1.3 equals HF `generate(do_sample=False, repetition_penalty=1.3)` token for
    token, and each token's log-probability, rank and top-2 are those of HF's raw logits (before the penalty)."""
    prompt = parity_prompts(tiny_tokenizer())[1]  # a prompt whose 16 tokens the penalty changes, with clear margins
    ref_tokens, ref_logits = _hf_penalized(prompt)
    out = tiny_llm.generate(prompt, PENALIZED)[0].outputs[0]
    assert out.token_ids == ref_tokens
    assert len(out.logprobs) == len(ref_tokens)
    logp = ref_logits.log_softmax(dim=-1)
    for j, (got, token) in enumerate(zip(out.logprobs, ref_tokens, strict=True)):
        assert got.token_id == token
        assert abs(got.logprob - logp[j, token].item()) <= 1e-4, f"token {j}: {got.logprob} vs HF {logp[j, token].item()}"
        assert got.rank == int((logp[j] > logp[j, token]).sum()) + 1, f"token {j}"
        assert [t for t, _ in got.top] == logp[j].topk(2).indices.tolist(), f"token {j}"
        assert all(abs(v - logp[j, t].item()) <= 1e-4 for t, v in got.top), f"token {j}"
    assert any(got.rank > 1 for got in out.logprobs)  # the penalty did move greedy off the raw argmax
