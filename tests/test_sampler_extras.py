"""The sampler's newer parts: repetition penalty and min-p against HuggingFace's logits processors, presence and
frequency penalties against OpenAI's formula, greedy after penalties, per-token log-probabilities (from the raw
logits: value, rank, top alternatives), validation of the new SamplingParams fields, and min-p's empirical
frequencies."""

import math

import pytest
import torch
from transformers import MinPLogitsWarper, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper

from shared.sampling import MAX_LOGPROBS, Sampler, SamplingParams, apply_min_p, apply_penalties, sampling_probs
from shared.tools.testing import sampling_rows

VOCAB = 64


def _rows(params: list[SamplingParams], prompts: list[list[int]], outputs: list[list[int]]) -> list:
    """One stand-in row per params, each with its own prompt and output tokens."""
    return [sampling_rows([p], prompt=pr, outputs=[o])[0] for p, pr, o in zip(params, prompts, outputs, strict=True)]


def _histories(batch: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts and outputs of different lengths, with repeated tokens, drawn from a small part of the vocabulary."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, VOCAB // 2, (3 + 2 * i,), generator=g).tolist() for i in range(batch)]
    outputs = [torch.randint(0, VOCAB, (i,), generator=g).tolist() for i in range(batch)]  # row 0: no output yet
    return prompts, outputs


def _logits(batch: int, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    """Random logits of both signs."""
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def _openai(logits: torch.Tensor, output: list[int], frequency: float, presence: float) -> torch.Tensor:
    """OpenAI's penalties written out: logit[j] -= frequency * count[j] + presence * (count[j] > 0)."""
    out = logits.clone()
    for j in set(output):
        count = output.count(j)
        out[j] -= frequency * count + presence * (1.0 if count > 0 else 0.0)
    return out


# --- repetition penalty vs HF ---------------------------------------------------------------------------------


@pytest.mark.parametrize("penalty", [0.5, 0.8, 1.3, 2.0])
def test_repetition_penalty_equals_hf(penalty):
    """Each row equals HF's processor given prompt + output as input_ids (duplicates included)."""
    batch = 5
    logits = _logits(batch, seed=int(penalty * 10))
    assert (logits < 0).any() and (logits > 0).any()
    prompts, outputs = _histories(batch, seed=1)
    ours = apply_penalties(logits, _rows([SamplingParams(repetition_penalty=penalty)] * batch, prompts, outputs))
    hf = RepetitionPenaltyLogitsProcessor(penalty)
    for i in range(batch):
        ids = torch.tensor([prompts[i] + outputs[i]])
        expected = hf(ids, logits[i:i + 1].clone())[0]
        torch.testing.assert_close(ours[i], expected, rtol=0, atol=0)
        seen = set(prompts[i] + outputs[i])
        changed = set(torch.nonzero(ours[i] != logits[i]).flatten().tolist())
        assert changed == {j for j in seen if logits[i, j] != 0}  # only (and every) token of the history moves


def test_repetition_penalty_lowers_every_seen_token_of_both_signs():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    out = apply_penalties(logits, sampling_rows([SamplingParams(repetition_penalty=2.0)], prompt=[0, 1], outputs=[[2]]))
    assert out.tolist() == [[1.0, -4.0, 0.5, -1.0]]  # token 3 never appeared: untouched
    assert logits.tolist() == [[2.0, -2.0, 1.0, -1.0]]  # the input is not modified in place


def test_repetition_mixed_batch_equals_hf_row_by_row():
    penalties = [1.0, 0.7, 1.5, 1.0, 3.0]
    logits = _logits(len(penalties), seed=3)
    prompts, outputs = _histories(len(penalties), seed=4)
    ours = apply_penalties(logits, _rows([SamplingParams(repetition_penalty=p) for p in penalties], prompts, outputs))
    for i, p in enumerate(penalties):
        expected = RepetitionPenaltyLogitsProcessor(p)(torch.tensor([prompts[i] + outputs[i]]), logits[i:i + 1].clone())[0]
        assert torch.equal(ours[i], expected), f"row {i} (penalty {p})"
    assert torch.equal(ours[0], logits[0]) and torch.equal(ours[3], logits[3])


# --- presence and frequency (OpenAI) --------------------------------------------------------------------------


@pytest.mark.parametrize(("frequency", "presence"), [(0.5, 0.0), (0.0, 1.2), (0.7, 0.3), (-0.5, -1.0), (2.0, -2.0)])
def test_presence_and_frequency_follow_openai(frequency, presence):
    batch = 4
    logits = _logits(batch, seed=5)
    prompts, outputs = _histories(batch, seed=6)
    outputs[2] = [7, 7, 7, 9, 7, 9, 11]  # counts 4, 2, 1
    params = SamplingParams(frequency_penalty=frequency, presence_penalty=presence)
    ours = apply_penalties(logits, _rows([params] * batch, prompts, outputs))
    for i in range(batch):
        torch.testing.assert_close(ours[i], _openai(logits[i], outputs[i], frequency, presence))
    torch.testing.assert_close(ours[2, 7], logits[2, 7] - 4 * frequency - presence)


def test_prompt_tokens_do_not_count_for_presence_or_frequency():
    logits = _logits(1, seed=7)
    params = SamplingParams(frequency_penalty=1.5, presence_penalty=1.0)
    ours = apply_penalties(logits, sampling_rows([params], prompt=[1, 2, 2, 3], outputs=[[3, 4, 4]]))[0]
    assert torch.equal(ours[[1, 2]], logits[0, [1, 2]])  # prompt only: untouched
    torch.testing.assert_close(ours[3], logits[0, 3] - 1.5 - 1.0)  # once in the output (the prompt's copy ignored)
    torch.testing.assert_close(ours[4], logits[0, 4] - 3.0 - 1.0)
    assert torch.equal(ours[5:], logits[0, 5:]) and torch.equal(ours[0], logits[0, 0])


def test_repetition_then_presence_and_frequency():
    """vLLM's order: the repetition penalty first (on prompt and output tokens), then OpenAI's (output tokens)."""
    logits = _logits(1, seed=8)
    prompt, output = [1, 2, 3], [3, 5, 5]
    params = SamplingParams(repetition_penalty=1.4, frequency_penalty=0.3, presence_penalty=0.6)
    ours = apply_penalties(logits, sampling_rows([params], prompt=prompt, outputs=[output]))[0]
    repeated = RepetitionPenaltyLogitsProcessor(1.4)(torch.tensor([prompt + output]), logits.clone())[0]
    torch.testing.assert_close(ours, _openai(repeated, output, 0.3, 0.6))


def test_rows_without_penalties_are_untouched_in_a_mixed_batch():
    logits = _logits(4, seed=9)
    prompts, outputs = _histories(4, seed=10)
    params = [SamplingParams(), SamplingParams(frequency_penalty=1.0), SamplingParams(temperature=0.5),
              SamplingParams(presence_penalty=-0.4, repetition_penalty=1.2)]
    ours = apply_penalties(logits, _rows(params, prompts, outputs))
    assert torch.equal(ours[0], logits[0]) and torch.equal(ours[2], logits[2])
    assert not torch.equal(ours[1], logits[1]) and not torch.equal(ours[3], logits[3])


# --- min-p vs HF ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("min_p", [0.0, 0.01, 0.05, 0.1, 0.3, 0.9, 1.0])
def test_min_p_equals_hf(min_p):
    logits = _logits(6, vocab=500, seed=11)
    ours = apply_min_p(logits, torch.full((6,), min_p))
    expected = MinPLogitsWarper(min_p)(torch.zeros(6, 1, dtype=torch.long), logits.clone())
    assert torch.equal(ours, expected)
    kept = ours > float("-inf")
    assert kept[torch.arange(6), logits.argmax(-1)].all()  # the most likely token always stays
    if 0 < min_p < 0.5:
        assert (~kept).any() and kept.sum(-1).max() > 1  # a real cut: not every token, nor only the top one


def test_min_p_per_row_in_a_batch_equals_hf():
    values = [0.0, 0.02, 0.2, 0.6]
    logits = _logits(len(values), vocab=500, seed=12)
    ours = apply_min_p(logits, torch.tensor(values))
    for i, m in enumerate(values):
        assert torch.equal(ours[i], MinPLogitsWarper(m)(torch.zeros(1, 1, dtype=torch.long), logits[i:i + 1].clone())[0])


@pytest.mark.parametrize(("temperature", "min_p"), [(1.0, 0.1), (0.5, 0.1), (2.0, 0.05), (0.7, 0.4), (1.5, 0.0)])
def test_min_p_after_temperature_equals_hf(temperature, min_p):
    """sampling_probs divides by the temperature before min-p, as HF's TemperatureLogitsWarper then MinPLogitsWarper."""
    logits = _logits(3, vocab=500, seed=13)
    ids = torch.zeros(3, 1, dtype=torch.long)
    hf = MinPLogitsWarper(min_p)(ids, TemperatureLogitsWarper(temperature)(ids, logits.clone())).softmax(-1)
    ours = sampling_probs(logits, [SamplingParams(temperature=temperature, min_p=min_p)] * 3)
    torch.testing.assert_close(ours, hf)
    assert torch.equal(ours > 0, hf > 0)


# --- greedy after penalties, and log-probabilities ------------------------------------------------------------


def test_greedy_picks_the_argmax_of_the_penalized_logits():
    logits = _logits(4, seed=14)
    top = logits.argmax(-1).tolist()
    params = [SamplingParams(temperature=0, repetition_penalty=5.0), SamplingParams(temperature=0, frequency_penalty=2.0),
              SamplingParams(temperature=0, presence_penalty=2.0, frequency_penalty=2.0), SamplingParams(temperature=0)]
    outputs = [[top[0]], [top[1]] * 3, [top[2]] * 2, [top[3]]]
    rows = _rows(params, [[]] * 4, outputs)
    tokens = Sampler()(logits, rows).token_ids
    assert torch.equal(tokens, apply_penalties(logits, rows).argmax(-1))
    assert (tokens[:3] != logits[:3].argmax(-1)).all()  # the penalties did move the choice of the first three
    assert tokens[3] == top[3]  # no penalty: the raw argmax


def _check_logprobs(logits: torch.Tensor, tokens: torch.Tensor, reported, wanted: list[int | None]) -> None:
    logp = logits.float().log_softmax(-1)
    for i, n in enumerate(wanted):
        if n is None:
            assert reported[i] is None, f"row {i} did not ask"
            continue
        r = reported[i]
        token = int(tokens[i])
        assert r.token_id == token
        assert math.isclose(r.logprob, logp[i, token].item(), rel_tol=0, abs_tol=1e-6)
        assert r.rank == int((logp[i] > logp[i, token]).sum()) + 1
        assert len(r.top) == n
        assert [t for t, _ in r.top] == (logp[i].topk(n).indices.tolist() if n else [])
        assert [v for _, v in r.top] == sorted((v for _, v in r.top), reverse=True)
        for t, v in r.top:
            assert math.isclose(v, logp[i, t].item(), rel_tol=0, abs_tol=1e-6)


def test_logprobs_are_the_raw_distribution_with_rank_and_top():
    """Penalties, temperature and filters change the draw, not the reported log-probabilities."""
    logits = _logits(6, vocab=300, seed=15)
    top = logits.argmax(-1).tolist()
    wanted = [0, 3, None, MAX_LOGPROBS, 1, None]
    params = [SamplingParams(temperature=0, repetition_penalty=4.0, logprobs=wanted[0]),
              SamplingParams(temperature=0.8, top_k=5, presence_penalty=1.0, logprobs=wanted[1]),
              SamplingParams(temperature=1.0),
              SamplingParams(temperature=1.3, min_p=0.05, logprobs=wanted[3]),
              SamplingParams(temperature=0, logprobs=wanted[4]),
              SamplingParams(temperature=0, frequency_penalty=2.0)]
    rows = _rows(params, [[top[0]]] + [[]] * 5, [[], [top[1]], [], [], [], [top[5]]])
    out = Sampler()(logits, rows)
    _check_logprobs(logits, out.token_ids, out.logprobs, wanted)
    assert out.logprobs[0].rank > 1  # the penalty moved greedy off the raw argmax, and the rank says so
    assert out.logprobs[4].rank == 1 and out.logprobs[4].top[0][0] == top[4]
    assert out.logprobs[0].top == ()  # logprobs=0: the sampled token alone


def test_logprobs_none_everywhere_gives_none():
    out = Sampler()(_logits(3), sampling_rows([SamplingParams(temperature=0.5)] * 3))
    assert out.logprobs == [None, None, None]


def test_logprobs_of_sampled_tokens_in_a_large_batch():
    logits = _logits(32, vocab=1000, seed=16)
    wanted = [i % 5 for i in range(32)]
    out = Sampler()(logits, sampling_rows([SamplingParams(temperature=1.0, logprobs=n) for n in wanted]))
    _check_logprobs(logits, out.token_ids, out.logprobs, wanted)
    assert any(r.rank > 1 for r in out.logprobs)  # sampled, not greedy


# --- validation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_p", 1.5), ("min_p", -0.1), ("min_p", float("nan")), ("presence_penalty", 3), ("presence_penalty", float("nan")),
     ("frequency_penalty", -2.5), ("frequency_penalty", float("inf")), ("repetition_penalty", 0),
     ("repetition_penalty", -1.0), ("repetition_penalty", float("nan")), ("repetition_penalty", True),
     ("logprobs", 21), ("logprobs", -1), ("logprobs", True), ("logprobs", 2.0), ("logprobs", float("nan")),
     ("min_p", "0.1")],
)
def test_bad_values_of_the_new_fields_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_bounds_of_the_new_fields_are_accepted():
    p = SamplingParams(min_p=1, presence_penalty=-2, frequency_penalty=2, repetition_penalty=0.01, logprobs=MAX_LOGPROBS)
    assert (p.min_p, p.presence_penalty, p.frequency_penalty, p.logprobs) == (1.0, -2.0, 2.0, 20)
    assert isinstance(p.min_p, float) and p.penalized
    assert SamplingParams(logprobs=0).logprobs == 0 and not SamplingParams().penalized
    assert SamplingParams(min_p=0, presence_penalty=2, frequency_penalty=-2).penalized


# --- empirical frequencies ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("min_p", "temperature"), [(0.3, 1.0), (0.2, 0.7), (0.3, 1.5)])
def test_min_p_empirical_frequencies(min_p, temperature):
    """20,000 draws: each token's frequency is within 0.015 of min-p's distribution, written out here."""
    target = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04], dtype=torch.float64)
    tempered = target ** (1 / temperature)
    tempered /= tempered.sum()
    expected = torch.where(tempered >= min_p * tempered.max(), tempered, 0)
    expected /= expected.sum()
    assert 1 < int((expected > 0).sum()) < 6  # min-p cuts some tokens, and leaves more than one
    n = 20_000
    g = torch.Generator().manual_seed(0)
    logits = target.float().log()[None].expand(n, -1).contiguous()
    params = SamplingParams(temperature=temperature, min_p=min_p)
    tokens = Sampler()(logits, sampling_rows([params] * n, [g] * n)).token_ids
    freq = torch.bincount(tokens, minlength=6).double() / n
    assert (freq - expected).abs().max() < 0.015
    assert freq[expected == 0].sum() == 0  # masked tokens are never drawn
