"""What every engine keeps from M6 on: full KV blocks cached by a chained hash of their prefix, reused by later
requests. Each test builds the engine under test (m6_prefix, m7_gptq, ...) with `cached`, and takes its block
pool, hash chain and scheduler from `engine_modules`.

The hash chain (canonical, and a hit's parent and tokens are checked: an injected collision gives no wrong
K/V); the block pool's LRU free queue (cached blocks evicted least recently freed first, blocks in use never);
lookup on admission (the longest cached run, the last prompt token always computed). Parity: greedy output
equals HuggingFace, m5, and the engine with caching off on few-shot, multi-turn and shared-system-prompt workloads,
with the exact number of cached tokens each request should find; under tiny KV memory (evictions and
preemptions); with n > 1 on cached blocks (copy-on-write). A randomized run checks the invariants after every
action, and cached blocks hold the K/V a fresh computation of their prefix gives. Statistics, options, and
the cache-aware waiting order (lpm) with its fairness bound.
"""

from __future__ import annotations

import functools
import importlib
import random
import types

import pytest
import torch

from shared.request import SequenceStatus
from shared.sampling import SamplingParams
from shared.tools.reference import hf_greedy, parity_prompts
from shared.tools.testing import drain, hf_model, kv_bytes_per_token, prompt_ids, tiny_tokenizer
from tests.kept.base import engine_name, make_llm  # noqa: F401
from tests.kept.batching import MAX_LEN, randomized_run

NEW = 16  # tokens generated per request
GREEDY = SamplingParams(temperature=0, max_tokens=NEW, ignore_eos=True)


@pytest.fixture
def cached(engine_name):
    """Builds an LLM of the engine under test on the bundled model, CPU, fp32, with the given options."""
    return functools.partial(make_llm, engine_name)


@pytest.fixture
def engine_modules(engine_name):
    """The engine under test's own prefix-caching parts: its block pool, its hash chain, its scheduler module."""
    block_pool = importlib.import_module(f"{engine_name}.block_pool")
    prefix_hash = importlib.import_module(f"{engine_name}.prefix_hash")
    return types.SimpleNamespace(
        BlockPool=block_pool.BlockPool, NoFreeBlocksError=block_pool.NoFreeBlocksError,
        ROOT=prefix_hash.ROOT, extend_hashes=prefix_hash.extend_hashes, hash_block=prefix_hash.hash_block,
        scheduler=importlib.import_module(f"{engine_name}.scheduler"),
    )


def token_ids(llm, prompts, params=GREEDY) -> list[list[list[int]]]:
    """Every completion's token ids, per request, from one `generate` call."""
    return [[c.token_ids for c in o.outputs] for o in llm.generate(prompts, params, use_tqdm=False)]


@functools.cache
def hf_tokens(prompt: tuple[int, ...]) -> list[int]:
    return hf_greedy(hf_model("tiny-qwen3"), [list(prompt)], NEW, ignore_eos=True)[0]


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def hit_tokens(llm) -> int:
    return llm.engine.stats.prefix_hit_tokens


# -- the hash chain ---------------------------------------------------------------------------------------
def test_block_hash_is_a_canonical_chain(engine_modules):
    ROOT, extend_hashes, hash_block = engine_modules.ROOT, engine_modules.extend_hashes, engine_modules.hash_block
    a = hash_block(ROOT, [1, 2, 3])
    assert a == hash_block(ROOT, (1, 2, 3)) and len(a) == 32
    assert len({a, hash_block(ROOT, [3, 2, 1]), hash_block(ROOT, [1, 2, 4]), hash_block(ROOT, [1, 2, 3, 0]),
                hash_block(a, [1, 2, 3]), hash_block(ROOT, [1, 2, 3], b"salt"), hash_block(ROOT, [1 << 40, 2, 3])}) == 7
    ids = prompt_ids(70)
    whole = extend_hashes([], ids, 16)
    grown = extend_hashes(extend_hashes([], ids[:20], 16), ids, 16)  # computed as the sequence grows
    assert whole == grown and len(whole) == 4  # the 6-token tail is not a full block
    assert whole[1] == hash_block(whole[0], ids[16:32])
    other = extend_hashes([], [9, *ids[1:]], 16)
    assert all(a != b for a, b in zip(other, whole, strict=True)), "a changed token must change every later block's hash"
    assert extend_hashes([], ids, 16, extra=b"tenant")[3] != whole[3]


# -- the block pool ---------------------------------------------------------------------------------------
def _key(root: bytes, i: int):
    return root, (i,) * 4


def test_freed_cached_blocks_are_evicted_least_recently_freed_first(engine_modules):
    BlockPool, NoFreeBlocksError = engine_modules.BlockPool, engine_modules.NoFreeBlocksError
    ROOT, hash_block = engine_modules.ROOT, engine_modules.hash_block
    pool = BlockPool(4)
    blocks = [pool.allocate() for _ in range(3)]
    hashes = [hash_block(ROOT, _key(ROOT, i)[1]) for i in range(3)]
    for b, h, i in zip(blocks, hashes, range(3), strict=True):
        assert pool.cache(b, h, _key(ROOT, i))
    for b in reversed(blocks):  # a sequence frees its tail first
        pool.decref(b)
    assert list(pool.free_queue) == [3, 2, 1, 0] and pool.num_cached_free == 3
    assert pool.allocate() == 3 and pool.num_evictions == 0  # the never-cached block goes first
    assert pool.allocate() == 2 and pool.num_evictions == 1 and pool.lookup(hashes[2], _key(ROOT, 2)) is None
    hit = pool.lookup(hashes[1], _key(ROOT, 1))
    pool.touch(hit)  # a hit takes block 1 out of the free queue: it is in use, and cannot be evicted
    assert hit == 1 and pool.ref_counts[1] == 1 and 1 not in pool.free_queue
    assert pool.allocate() == 0 and pool.num_evictions == 2
    with pytest.raises(NoFreeBlocksError):
        pool.allocate()
    pool.decref(1)  # still cached after its last holder lets go
    assert pool.lookup(hashes[1], _key(ROOT, 1)) == 1 and list(pool.free_queue) == [1]


def test_a_block_without_a_hash_is_reused_before_cached_ones(engine_modules):
    BlockPool, ROOT, hash_block = engine_modules.BlockPool, engine_modules.ROOT, engine_modules.hash_block
    pool = BlockPool(3)
    a, b, _c = (pool.allocate() for _ in range(3))
    pool.cache(a, hash_block(ROOT, _key(ROOT, 0)[1]), _key(ROOT, 0))
    pool.decref(a)
    pool.decref(b)  # never cached: holds nothing findable, so it goes to the front
    assert list(pool.free_queue) == [b, a]
    with pytest.raises(AssertionError, match="freed twice"):
        pool.decref(b)  # a reference count never goes below zero


def test_a_hash_match_with_other_tokens_is_a_collision_not_a_hit(engine_modules):
    BlockPool, ROOT, hash_block = engine_modules.BlockPool, engine_modules.ROOT, engine_modules.hash_block
    pool = BlockPool(2)
    a, b = pool.allocate(), pool.allocate()
    h = hash_block(ROOT, _key(ROOT, 0)[1])
    assert pool.cache(a, h, _key(ROOT, 0))
    assert pool.lookup(h, _key(ROOT, 1)) is None and pool.num_collisions == 1
    assert pool.cache(b, h, _key(ROOT, 0)) and pool.block_hashes[b] is None  # same key: a duplicate, left unnamed
    assert not pool.cache(b, h, _key(ROOT, 1)) and pool.num_collisions == 2  # another key under a taken hash


def test_an_injected_collision_never_hands_out_wrong_kv(cached, engine_modules):
    """A hash that ignores the parent and sees only each token's parity collides all the time. A = [x | y] is
    cached; B = [x' | z], where x' differs from x but has the same parities: its first block collides with A's
    (the token check refuses the hit), and it must not cache its later blocks, whose hashes chain through the
    collision. Otherwise D = [x | z] would find A's first block, then B's second block computed after x'."""
    ROOT, hash_block = engine_modules.ROOT, engine_modules.hash_block

    def parity_hash(parent, token_ids, extra=b""):
        return hash_block(ROOT, [t % 2 for t in token_ids])

    x, y, z = prompt_ids(16, 1), prompt_ids(16, 2), prompt_ids(21, 3)
    prompts = {"A": x + y + z[:5], "B": [t + 2 for t in x] + z, "D": x + z}
    llm = cached(max_model_len=MAX_LEN, block_size=16)
    llm.engine.kv.hash_fn = parity_hash
    for name, ids in prompts.items():
        assert token_ids(llm, [ids]) == [[hf_tokens(tuple(ids))]], f"{name} diverges from HF"
        llm.engine.kv.check_invariants(set())
    assert llm.engine.kv.pool.num_collisions >= 2
    assert hit_tokens(llm) == 16  # D found A's first block, and nothing of B


# -- lookup on admission ------------------------------------------------------------------------------
@pytest.mark.parametrize(("length", "hit", "computed"), [(48, 32, 16), (49, 48, 1), (40, 32, 8)])
def test_the_last_prompt_token_is_always_computed(length, hit, computed, cached):
    """The same prompt twice: the second finds its full blocks cached, but always runs its last token, whose
    logits give the first output token (a whole-block prompt recomputes its last block)."""
    llm = cached(max_model_len=MAX_LEN, block_size=16)
    prompt = prompt_ids(length, 4)
    first = token_ids(llm, [prompt])
    llm.engine.stats.reset()
    assert token_ids(llm, [prompt]) == first
    assert hit_tokens(llm) == hit and llm.engine.stats.history[0].num_prefill_tokens == computed


# -- parity on the workloads prefix caching is for -------------------------------------------------------------
def few_shot() -> list[list[list[int]]]:
    """Four worked examples, then a question: the first request alone, then five more together."""
    tok = tiny_tokenizer()
    shots = "".join(f"# Example {i}\ndef add_{i}(a, b):\n    return a + b + {i}\n\n" for i in range(4))
    prompts = [tok.encode(shots + f"# Example {i}\ndef {name}(") for i, name in enumerate(
        ["mul", "sub", "div", "mod", "pow", "neg"], start=4)]
    return [prompts[:1], prompts[1:]]


def system_prompt() -> list[list[list[int]]]:
    """A shared system message and different user messages, through the chat template."""
    tok = tiny_tokenizer()
    system = "You are a careful Python reviewer. " * 12
    users = parity_prompts(tok)[:5]
    prompts = [tok.encode(tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": u}]))
               for u in users]
    return [prompts[:1], prompts[1:]]


@pytest.mark.parametrize("workload", [few_shot, system_prompt])
def test_shared_prefixes_equal_hf_m5_and_no_caching(workload, cached):
    """Round 1 caches the prefix; round 2 finds it: each later request hits exactly its shared full blocks."""
    rounds = workload()
    llm, off = cached(max_model_len=MAX_LEN * 4), cached(max_model_len=MAX_LEN * 4, enable_prefix_caching=False)
    m5 = make_llm("m5_chunked", max_model_len=MAX_LEN * 4)
    first = rounds[0][0]
    for prompts in rounds:
        got = token_ids(llm, prompts)
        assert got == [[hf_tokens(tuple(p))] for p in prompts]
        assert got == token_ids(off, prompts) == token_ids(m5, prompts)
    assert hit_tokens(llm) == sum(common_prefix(first, p) // 16 * 16 for p in rounds[1]) > 0
    assert hit_tokens(off) == 0 and "prefix_hit_rate" not in off.engine.stats.summary()


def test_multi_turn_chats_find_the_previous_turns(cached):
    """Two conversations of three turns, interleaved: each turn's prompt is the previous prompt, the model's
    answer and a new user message. A turn finds everything of the previous turn that was computed, that is
    all but the answer's last token (sampled, never fed back), in whole blocks."""
    tok = tiny_tokenizer()
    llm = cached(max_model_len=MAX_LEN * 4)
    m5 = make_llm("m5_chunked", max_model_len=MAX_LEN * 4)
    chats = [tok.encode(tok.apply_chat_template(q * 4)) for q in ("Write a function `merge`. ", "Count lines in a file. ")]
    computed: list[list[int]] = []  # every sequence whose K/V were computed (nothing is evicted here)
    later = [0, 0]  # turns 2 and 3: tokens found cached, prompt tokens
    for turn in range(3):
        for c in range(2):
            before = hit_tokens(llm)
            answer = token_ids(llm, [chats[c]])[0][0]
            assert answer == hf_tokens(tuple(chats[c])) == token_ids(m5, [chats[c]])[0][0], f"chat {c} turn {turn}"
            found = max((common_prefix(chats[c], done) for done in computed), default=0)
            assert hit_tokens(llm) - before == min(found, len(chats[c]) - 1) // 16 * 16, f"chat {c} turn {turn}"
            assert turn == 0 or found >= len(chats[c]) - 40, "a later turn should find its previous turn"
            if turn:
                later = [later[0] + hit_tokens(llm) - before, later[1] + len(chats[c])]
            computed.append(chats[c] + answer[:-1])
            chats[c] = chats[c] + answer + tok.encode(f"<|im_end|>\n<|im_start|>user\nAnd now turn {turn + 2}?"
                                                      "<|im_end|>\n<|im_start|>assistant\n")
    assert later[0] / later[1] > 0.6


def test_eviction_and_preemption_under_tiny_kv_memory_change_no_output(cached):
    """Memory for 14 blocks of 16 tokens, and 18 requests of 40-90 tokens drawn from three shared prefixes:
    cached blocks are evicted to make room, sequences are preempted and come back (finding their own blocks
    still cached), and every output equals the run with memory to spare, and HF."""
    rng = random.Random(0)
    prefixes = [prompt_ids(rng.randint(20, 60), 50 + i) for i in range(3)]
    prompts = [rng.choice(prefixes) + prompt_ids(rng.randint(5, 30), 70 + i) for i in range(18)]
    tight = cached(max_model_len=MAX_LEN, block_size=16, max_num_seqs=6,
                   kv_cache_memory_bytes=14 * 16 * kv_bytes_per_token())
    engine = tight.engine
    for i, p in enumerate(prompts):
        engine.add_request(p, GREEDY, request_id=str(i))
    outs = drain(engine)
    got = [[c.token_ids for c in outs[str(i)].outputs] for i in range(len(prompts))]
    assert got == token_ids(cached(max_model_len=MAX_LEN), prompts)
    assert got[:4] == [[hf_tokens(tuple(p))] for p in prompts[:4]]
    stats = engine.stats
    assert stats.prefix_evictions > 0 and stats.preemptions > 0 and stats.prefix_hit_tokens > 0
    assert engine.kv.num_used_blocks == 0


def test_n_completions_share_cached_blocks_and_copy_on_write(cached):
    """A 40-token prompt (2 full blocks + 8) runs once, then with n = 3: the parent finds its 2 cached blocks
    and computes the last 8 tokens; the siblings fork, so each cached block has 3 holders; the first decode
    copies the shared partial block for all but one. Greedy completions equal HF; seeded ones equal m5's."""
    llm = cached(max_model_len=MAX_LEN, block_size=16)
    engine = llm.engine
    prompt = prompt_ids(40, 6)
    token_ids(llm, [prompt])
    hits = engine.kv.find_cached(_waiting_seq(engine, prompt))
    assert len(hits) == 2
    sampled = SamplingParams(temperature=1.0, top_k=40, max_tokens=NEW, n=3, seed=5, ignore_eos=True)
    for params in (SamplingParams(temperature=0, max_tokens=NEW, n=3, ignore_eos=True), sampled):
        rid = engine.add_request(prompt, params)
        seqs = engine.requests[rid].seqs
        engine.step()  # the last 8 prompt tokens; the siblings fork
        assert all(engine.kv.block_table(s)[:2] == hits for s in seqs)
        assert [engine.kv.pool.ref_counts[b] for b in hits] == [3, 3]
        engine.step()  # the first decode writes into the shared partial block: two copies
        tails = {engine.kv.block_table(s)[2] for s in seqs}
        assert len(tails) == 3
        engine.scheduler.check_invariants()
        out = drain(engine)[rid]
        completions = [c.token_ids for c in out.outputs]
        if params.greedy:
            assert completions == [hf_tokens(tuple(prompt))] * 3
        else:
            assert completions == token_ids(make_llm("m5_chunked", max_model_len=MAX_LEN), [prompt], sampled)[0]
    assert engine.kv.num_used_blocks == 0


def _waiting_seq(engine, prompt):
    """A sequence for `prompt` that is not added to the engine (to ask find_cached what it would get)."""
    rid = engine.add_request(prompt, GREEDY)
    seq = engine.requests[rid].seqs[0]
    engine.abort_request(rid)
    return seq


def shared_prefix_prompt(rng: random.Random, i: int) -> list[int]:
    """Half the randomized run's prompts start with one of three prefixes (of 10-40 tokens)."""
    suffix = prompt_ids(rng.randint(1, 30), 900 + i)
    return prompt_ids(rng.choice([10, 25, 40]), rng.randint(0, 2)) + suffix if i % 2 else suffix


@pytest.mark.parametrize(("seed", "policy"), [(0, "fcfs"), (1, "lpm"), (2, "fcfs")])
def test_randomized_run_with_shared_prefixes_keeps_every_invariant(seed, policy, cached, engine_name):
    """tests/kept/batching.py's random adds, aborts and steps under tiny KV memory, with prompts that share
    prefixes: reference counts equal the block tables holding each block, no block is both free and in use,
    the hash map matches the blocks' hashes and contents, every block comes back; prefixes were found and
    evicted; greedy requests give the tokens of the same engine without caching."""
    specs, finished = randomized_run(engine_name, seed, prompt=shared_prefix_prompt, scheduling_policy=policy)
    kept = [(rid, ids, p) for rid, ids, p in specs if rid in finished and p.greedy]
    ref = cached(max_model_len=MAX_LEN, enable_prefix_caching=False).generate(
        [ids for _, ids, _ in kept], [p for _, _, p in kept], use_tqdm=False)
    for (rid, _, _), r in zip(kept, ref, strict=True):
        assert [c.token_ids for c in finished[rid].outputs] == [c.token_ids for c in r.outputs], f"{rid} changed"


def test_cached_blocks_hold_what_a_fresh_computation_of_their_prefix_gives(cached, engine_modules):
    """After a mixed workload, every cached block whose whole chain is still cached: rebuild its prefix from the
    chain's tokens, compute that prefix alone (caching off), and compare the K/V of its last block (fp32,
    atol 1e-4: the same math in other batches)."""
    ROOT = engine_modules.ROOT
    llm = cached(max_model_len=MAX_LEN, block_size=8)
    prompts = [prompt_ids(30, 1) + prompt_ids(n, 2 + n) for n in (5, 17, 40)]
    token_ids(llm, prompts)
    token_ids(llm, [prompts[0][:33] + prompt_ids(9, 9)])
    pool, cache = llm.engine.kv.pool, llm.engine.cache
    fresh = cached(max_model_len=MAX_LEN, block_size=8, enable_prefix_caching=False).engine
    checked = 0
    for block_hash, block in pool.cached.items():
        chain, h = [], block_hash
        while h != ROOT and h in pool.cached:
            parent, ids = pool.block_keys[pool.cached[h]]
            chain, h = list(ids) + chain, parent
        if h != ROOT:
            continue
        rid = fresh.add_request(chain, SamplingParams(temperature=0, max_tokens=2))
        fresh.step()
        seq = fresh.requests[rid].seqs[0]
        mine = fresh.kv.block_table(seq)[len(chain) // 8 - 1]
        for layer in (0, len(cache.k) - 1):
            torch.testing.assert_close(cache.k[layer][block], fresh.cache.k[layer][mine], atol=1e-4, rtol=0)
            torch.testing.assert_close(cache.v[layer][block], fresh.cache.v[layer][mine], atol=1e-4, rtol=0)
        fresh.abort_request(rid)
        checked += 1
    assert checked >= 10


# -- statistics and options ---------------------------------------------------------------------------------
def test_statistics_count_queries_hits_and_evictions(cached):
    llm = cached(max_model_len=MAX_LEN, block_size=16, kv_cache_memory_bytes=8 * 16 * kv_bytes_per_token())
    a, b = prompt_ids(50, 1), prompt_ids(50, 2)
    token_ids(llm, [a])
    token_ids(llm, [a])  # 48 of 50 cached
    stats = llm.engine.stats
    assert (stats.prefix_queried_tokens, stats.prefix_hit_tokens) == (100, 48)
    assert stats.prefix_hit_rate == pytest.approx(0.48) and stats.prefix_evictions == 0
    # b needs 5 of the 8 blocks: the 4 holding nothing findable go first, then a's least recently used one
    token_ids(llm, [b])
    summary = stats.summary()
    assert summary["prefix_evictions"] == 1 and summary["prefix_hit_tokens"] == 48
    assert summary["prefix_queried_tokens"] == 150 and summary["prefix_hit_rate"] == pytest.approx(0.32)
    assert llm.engine.reset_prefix_cache() == 7  # a's 3 blocks left, and b's 4
    token_ids(llm, [a])
    assert stats.prefix_hit_tokens == 48


def test_caching_is_on_by_default_and_can_be_turned_off(cached):
    on, off = cached(max_model_len=MAX_LEN), cached(max_model_len=MAX_LEN, enable_prefix_caching=False)
    prompt = prompt_ids(60, 3)
    for llm in (on, off):
        token_ids(llm, [prompt, prompt])
        token_ids(llm, [prompt])
    assert hit_tokens(on) == 48 and hit_tokens(off) == 0
    assert on.engine.cache_config.enable_prefix_caching and on.engine.scheduler_config.scheduling_policy == "fcfs"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"enable_prefix_caching": "yes"}, "enable_prefix_caching must be True or False"),
        ({"scheduling_policy": "sjf"}, "scheduling_policy must be one of 'fcfs', 'lpm'"),
        ({"scheduling_policy": "lpm", "enable_prefix_caching": False}, "needs enable_prefix_caching=True"),
    ],
)
def test_bad_prefix_options(options, message, cached):
    with pytest.raises(ValueError, match=message):
        cached(max_model_len=256, **options)


# -- the cache-aware waiting order ----------------------------------------------------------------------------
def admission_order(engine) -> list[str]:
    """Step `engine` to the end one sequence at a time; the request ids in the order they were admitted."""
    order = []
    while engine.has_unfinished_requests():
        engine.step()
        for seq in engine.scheduler.running:
            if seq.request.request_id not in order:
                order.append(seq.request.request_id)
    return order


@pytest.mark.parametrize(("policy", "overtakes", "expected"), [
    ("fcfs", 32, ["b1", "a1", "b2", "a2"]),
    ("lpm", 32, ["a1", "a2", "b1", "b2"]),  # the cached prefix first, arrival order among equals
    ("lpm", 1, ["a1", "b1", "a2", "b2"]),  # b1, overtaken once, may not be overtaken again
])
def test_lpm_admits_the_longest_cached_prefix_first_within_the_fairness_bound(monkeypatch, policy, overtakes, expected,
                                                                              cached, engine_modules):
    monkeypatch.setattr(engine_modules.scheduler, "LPM_MAX_OVERTAKES", overtakes)
    llm = cached(max_model_len=MAX_LEN, max_num_seqs=1, scheduling_policy=policy)
    shared = prompt_ids(64, 1)
    token_ids(llm, [[*shared, 20]])  # caches the 4 blocks of `shared`
    engine = llm.engine
    short = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    for rid, prompt in [("b1", prompt_ids(40, 2)), ("a1", [*shared, 21]), ("b2", prompt_ids(40, 3)), ("a2", [*shared, 22])]:
        engine.add_request(prompt, short, request_id=rid)
    assert admission_order(engine) == expected


def test_lpm_gives_the_same_tokens_and_keeps_preempted_sequences_first(cached):
    """Under tiny memory with preemptions, lpm changes only the order: every output equals fcfs's, and a
    preempted sequence is re-admitted before any waiting one."""
    rng = random.Random(3)
    prompts = [shared_prefix_prompt(rng, i) + prompt_ids(20, i) for i in range(16)]
    outs = {}
    for policy in ("fcfs", "lpm"):
        engine = cached(max_model_len=MAX_LEN, block_size=8, max_num_seqs=6, scheduling_policy=policy,
                        kv_cache_memory_bytes=20 * 8 * kv_bytes_per_token()).engine
        for i, p in enumerate(prompts):
            engine.add_request(p, GREEDY, request_id=str(i))
        finished = {}
        while engine.has_unfinished_requests():
            finished.update({o.request_id: o.outputs[0].token_ids for o in engine.step() if o.finished})
            preempted = [s.status is SequenceStatus.PREEMPTED for s in engine.scheduler.waiting]
            assert preempted == sorted(preempted, reverse=True), "a waiting sequence is ahead of a preempted one"
        outs[policy] = finished
        assert engine.stats.preemptions > 0
    assert outs["fcfs"] == outs["lpm"]
