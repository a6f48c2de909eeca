"""What every engine keeps from M5 on: prompts cut into chunks under a token budget, decodes first, sampling
only at a prompt's end. Each test builds the engine under test (m5_chunked, m6_prefix, ...) with `chunked`.

Parity: greedy output equals HuggingFace and m4 at budgets 16, 64, 256 and unlimited, with prompts about
ten times the budget, alone and mixed with short ones, with n > 1. Scheduling: the order of a step (decodes,
then partial prefills, then waiting prompts), the per-prompt cap, blocks handed out per chunk, siblings
that fork only after the last chunk, and a partially prefilled sequence that is preempted and recomputed.
The randomized test of tests/kept/batching.py runs again with budgets small enough to cut most prompts.
"""

from __future__ import annotations

import functools
import importlib

import pytest

from shared.request import SequenceStatus
from shared.sampling import SamplingParams
from shared.tools.reference import held_out_prompt, hf_greedy, parity_prompts
from shared.tools.testing import drain, hf_model, kv_bytes_per_token, prompt_ids, tiny_tokenizer
from tests.kept.base import engine_name, make_llm  # noqa: F401
from tests.kept.batching import MAX_LEN, randomized_run

NEW = 24  # tokens generated per parity prompt


@pytest.fixture
def chunked(engine_name):
    """Builds an LLM of the engine under test on the bundled model, CPU, fp32, with the given options."""
    return functools.partial(make_llm, engine_name)


def long_prompts(length: int) -> list[list[int]]:
    """Three held-out prompts of about `length` tokens (different text, different lengths)."""
    text = held_out_prompt(tiny_tokenizer(), 4 * length)
    return [text[:length], text[length:2 * length + 7], text[2 * length + 7:3 * length - 5]]


@functools.cache
def hf_outputs(prompts: tuple[tuple[int, ...], ...]) -> list[list[int]]:
    return hf_greedy(hf_model("tiny-qwen3"), [list(p) for p in prompts], NEW, ignore_eos=True)


def record_batches(engine) -> list:
    """Keep every ScheduledBatch the engine's scheduler plans from now on (the engine runs unchanged)."""
    batches, schedule = [], engine.scheduler.schedule

    def recording():
        batch = schedule()
        batches.append(batch)
        return batch

    engine.scheduler.schedule = recording
    return batches


GREEDY = SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True)


@pytest.mark.parametrize("budget", [16, 64, 256, None])
def test_greedy_equals_hf_and_m4_at_any_budget(budget, chunked):
    """Prompts ten times the budget (2,560 tokens for 'unlimited'), together with short parity prompts, so that
    chunks share steps with decodes and with each other; n = 2 on one of them."""
    tok = tiny_tokenizer()
    longs = long_prompts(10 * (budget or 256))
    shorts = [tok.encode(p) for p in parity_prompts(tok)[:3]]
    prompts = longs + shorts
    options = {"max_num_batched_tokens": budget, "max_num_seqs": 16} if budget else \
              {"max_num_batched_tokens": 8192, "long_prefill_token_threshold": 0}
    llm = chunked(**options)
    params = [GREEDY] * len(prompts)
    params[1] = SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True, n=2)
    outs = llm.generate(prompts, params, use_tqdm=False)
    ref = hf_outputs(tuple(map(tuple, prompts)))
    for i, (out, expected) in enumerate(zip(outs, ref, strict=True)):
        assert [c.token_ids for c in out.outputs] == [expected] * len(out.outputs), f"prompt {i} diverges from HF"
    m4 = make_llm("m4_flash").generate(prompts, params, use_tqdm=False)
    assert [[c.token_ids for c in o.outputs] for o in outs] == [[c.token_ids for c in o.outputs] for o in m4]
    hist = llm.engine.stats.history
    if budget:
        assert max(r.num_prefill_tokens + r.num_decode_tokens for r in hist) <= budget
        assert sum(r.num_prefill_tokens > 0 and r.num_decode_tokens > 0 for r in hist) > 0, "chunks never met decodes"


def test_nothing_is_sampled_before_the_prompt_is_complete(chunked):
    """A 100-token prompt at a budget of 16: six steps of 16 prompt tokens and no output, then the last 4 and a
    token. Seeded sampling consumes the generator only then, so it gives m4's tokens (no draw is wasted)."""
    llm = chunked(max_model_len=MAX_LEN, max_num_batched_tokens=16, max_num_seqs=4)
    engine = llm.engine
    params = SamplingParams(temperature=1.0, top_k=50, max_tokens=10, seed=11, ignore_eos=True)
    rid = engine.add_request(prompt_ids(100, 3), params)
    seq = engine.requests[rid].seqs[0]
    for step in range(6):
        assert engine.step() == [], f"step {step} returned an output before the prompt was complete"
        assert seq.output_token_ids == [] and engine.kv.num_computed_tokens(seq) == 16 * (step + 1)
    out = engine.step()
    assert [o.request_id for o in out] == [rid] and len(seq.output_token_ids) == 1
    assert [r.num_prefill_tokens for r in engine.stats.history] == [16] * 6 + [4]
    done = drain(engine)[rid].outputs[0].token_ids
    assert done == make_llm("m4_flash", max_model_len=MAX_LEN).generate(prompt_ids(100, 3), params)[0].outputs[0].token_ids


def test_a_step_runs_decodes_then_partial_prefills_then_waiting_prompts(chunked):
    """Two requests decode while a 300-token prompt is cut into chunks; a fourth arrives mid-way. Every step
    plans decodes first, then the partial prefill, then the new arrival, and spends the whole budget."""
    llm = chunked(max_model_len=512, max_num_batched_tokens=64, long_prefill_token_threshold=0, max_num_seqs=8)
    engine = llm.engine
    for i in range(2):
        engine.add_request(prompt_ids(10, i), SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    engine.step()  # both prompts in one step
    batches = record_batches(engine)
    long = engine.add_request(prompt_ids(300, 7), GREEDY)
    engine.step()
    engine.step()
    late = engine.add_request(prompt_ids(30, 8), GREEDY)
    while not engine.requests[long].seqs[0].output_token_ids:
        engine.step()
    plans = [[(s.request.request_id, n) for s, n in zip(b.seqs, b.num_new_tokens, strict=True)] for b in batches]
    decoders = [(rid, 1) for rid in engine.requests if rid not in (long, late)]
    assert [plan[:2] for plan in plans] == [decoders] * 5  # the decodes first, in every step
    assert [plan[2:] for plan in plans] == [[(long, 62)]] * 4 + [[(long, 52), (late, 10)]]  # 300 = 4 x 62 + 52
    assert all(sum(n for _, n in plan) == 64 for plan in plans), "a step left budget unused while a prompt waited"


def test_the_cap_lets_a_short_prompt_start_beside_a_long_one(chunked):
    """With long_prefill_token_threshold = 32 a 300-token prompt takes at most 32 tokens a step, and a short
    prompt that arrives behind it is admitted in the next step, instead of after the whole long prefill."""
    llm = chunked(max_model_len=512, max_num_batched_tokens=64, long_prefill_token_threshold=32, max_num_seqs=8)
    engine = llm.engine
    batches = record_batches(engine)
    long = engine.add_request(prompt_ids(300, 1), GREEDY)
    engine.step()
    short = engine.add_request(prompt_ids(20, 2), GREEDY)
    engine.step()
    engine.step()
    plans = [[(s.request.request_id, n) for s, n in zip(b.seqs, b.num_new_tokens, strict=True)] for b in batches]
    assert plans[0] == [(long, 32)]
    assert plans[1] == [(long, 32), (short, 20)]
    assert plans[2] == [(short, 1), (long, 32)]  # the short one decodes first now
    drain(engine)


def test_blocks_are_taken_per_chunk(chunked):
    """A 200-token prompt at a budget of 32 holds the blocks of the chunks it has run, not of the whole prompt."""
    engine = chunked(max_model_len=512, max_num_batched_tokens=32, block_size=16, max_num_seqs=4).engine
    rid = engine.add_request(prompt_ids(200, 5), GREEDY)
    seq = engine.requests[rid].seqs[0]
    for step in range(1, 7):
        engine.step()
        assert len(engine.kv.block_table(seq)) == 2 * step and engine.kv.num_used_blocks == 2 * step
        engine.scheduler.check_invariants()
    drain(engine)
    assert engine.kv.num_used_blocks == 0


def test_n_siblings_hold_seats_and_fork_after_the_last_chunk(chunked):
    """n = 3 on a 40-token prompt at a budget of 16: the siblings wait without blocks while the prompt runs in
    chunks, yet count against max_num_seqs from the start; they fork (sharing the prompt's blocks) after the
    third chunk, and every completion equals HF's greedy output."""
    engine = chunked(max_model_len=MAX_LEN, max_num_batched_tokens=16, block_size=16, max_num_seqs=4).engine
    prompt = tiny_tokenizer().encode(parity_prompts(tiny_tokenizer())[-1])[:40]
    rid = engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True, n=3))
    other = engine.add_request(prompt_ids(5, 1), SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, n=2))
    parent, *siblings = engine.requests[rid].seqs
    for _ in range(2):
        engine.step()
        assert all(s.status is SequenceStatus.WAITING and s.seq_id not in engine.kv.block_tables for s in siblings)
        assert engine.scheduler._seats() == 3  # the other request (n = 2) would need 2 more seats: it waits
        assert engine.requests[other].seqs[0].status is SequenceStatus.WAITING
    engine.step()  # the last 8 tokens: the parent samples, and the siblings sample from the same logits and fork
    assert all(s.status is SequenceStatus.RUNNING and len(s.output_token_ids) == 1 for s in (parent, *siblings))
    shared = engine.kv.block_table(parent)[:2]
    assert all(engine.kv.block_table(s)[:2] == shared for s in siblings)
    out = drain(engine)[rid]
    assert [c.token_ids for c in out.outputs] == hf_outputs((tuple(prompt),)) * 3


def test_a_partially_prefilled_sequence_is_preempted_and_recomputed(chunked):
    """Two 100-token prompts progress side by side (32 tokens of budget, 16 each) in memory for 8 blocks of 16:
    the newer one is preempted mid-prompt, recomputed later, and both give what they give with memory to spare."""
    prompts = [prompt_ids(100, 1), prompt_ids(100, 2)]
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    llm = chunked(max_model_len=MAX_LEN, max_num_batched_tokens=32, long_prefill_token_threshold=16, block_size=16,
                  max_num_seqs=4, kv_cache_memory_bytes=128 * kv_bytes_per_token())
    engine = llm.engine
    ids = [engine.add_request(p, params) for p in prompts]
    newer = engine.requests[ids[1]].seqs[0]
    while newer.num_preemptions == 0:
        engine.step()
        engine.scheduler.check_invariants()
    assert newer.output_token_ids == [] and newer.status is SequenceStatus.PREEMPTED  # caught mid-prompt
    assert engine.kv.num_computed_tokens(newer) == 0 and newer.seq_id not in engine.kv.block_tables
    outs = drain(engine)
    ref = make_llm("m4_flash", max_model_len=MAX_LEN).generate(prompts, params, use_tqdm=False)
    assert [outs[i].outputs[0].token_ids for i in ids] == [o.outputs[0].token_ids for o in ref]
    assert outs[ids[1]].metrics.num_preemptions >= 1


@pytest.mark.parametrize(("seed", "budget", "cap"), [(0, 8, 0), (1, 16, 8), (2, 32, 0), (3, 24, 16)])
def test_randomized_run_with_small_budgets(seed, budget, cap, engine_name):
    """tests/kept/batching.py's random adds, aborts and steps under tiny KV memory, with budgets that cut most
    prompts: the budget is never exceeded, the invariants hold after every action, every request finishes or
    is aborted, every block comes back, and greedy requests give m4's tokens."""
    specs, finished = randomized_run(engine_name, seed, max_num_batched_tokens=budget, long_prefill_token_threshold=cap)
    kept = [(rid, ids, p) for rid, ids, p in specs if rid in finished and p.greedy]
    ref = make_llm("m4_flash", max_model_len=MAX_LEN).generate([ids for _, ids, _ in kept], [p for _, _, p in kept],
                                                               use_tqdm=False)
    for (rid, _, _), r in zip(kept, ref, strict=True):
        assert [c.token_ids for c in finished[rid].outputs] == [c.token_ids for c in r.outputs], f"{rid} changed"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"long_prefill_token_threshold": -1}, "long_prefill_token_threshold must be an integer >= 0"),
        ({"long_prefill_token_threshold": 2.5}, "long_prefill_token_threshold must be an integer >= 0"),
        ({"enable_chunked_prefill": "yes"}, "enable_chunked_prefill must be True or False"),
        ({"enable_chunked_prefill": False, "long_prefill_token_threshold": 64}, "needs enable_chunked_prefill=True"),
        ({"enable_chunked_prefill": False, "max_num_batched_tokens": 100}, "must be an integer >= max_model_len"),
        ({"max_num_batched_tokens": 8, "max_num_seqs": 16}, "must be an integer >= max_num_seqs"),
    ],
)
def test_bad_chunking_options(options, message, chunked):
    with pytest.raises(ValueError, match=message):
        chunked(max_model_len=256, **options)


def test_defaults_and_m4_behaviour_on_request(chunked, engine_name):
    """Chunked prefill is on by default with a budget below the context; enable_chunked_prefill=False gives m4's
    scheduling back: the whole prompt in one step, whatever its length."""
    engine_module = importlib.import_module(f"{engine_name}.engine")
    DEFAULT_LONG_PREFILL_TOKEN_THRESHOLD = engine_module.DEFAULT_LONG_PREFILL_TOKEN_THRESHOLD
    DEFAULT_MAX_NUM_BATCHED_TOKENS = engine_module.DEFAULT_MAX_NUM_BATCHED_TOKENS

    config = chunked(max_model_len=MAX_LEN).engine.scheduler_config
    assert config.enable_chunked_prefill and config.max_num_batched_tokens == DEFAULT_MAX_NUM_BATCHED_TOKENS
    assert config.long_prefill_token_threshold == DEFAULT_LONG_PREFILL_TOKEN_THRESHOLD
    assert chunked(max_model_len=MAX_LEN, max_num_seqs=1024).engine.scheduler_config.max_num_batched_tokens == 1024
    whole = chunked(max_model_len=1024, enable_chunked_prefill=False)
    assert whole.engine.scheduler_config.max_num_batched_tokens == 1024
    whole.generate(prompt_ids(900, 1), SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)
    assert whole.engine.stats.history[0].num_prefill_tokens == 900
