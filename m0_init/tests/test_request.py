"""Request/Sequence state machine, stop conditions, and per-request metrics."""

import time

import pytest
import torch

from shared.inputs import make_request
from shared.outputs import RequestOutput
from shared.request import SequenceStatus
from shared.sampling import SamplingParams
from shared.tools.testing import tiny_tokenizer

EOS = (0, 2)


def _req(prompt="def f(x):", **params):
    return make_request(prompt, SamplingParams(**params), tiny_tokenizer(), 8192, torch.Generator())


def test_legal_transitions():
    seq = _req().seqs[0]
    assert seq.status is SequenceStatus.WAITING
    seq.set_status(SequenceStatus.RUNNING)
    seq.set_status(SequenceStatus.PREEMPTED)
    seq.set_status(SequenceStatus.RUNNING)
    seq.finish("length")
    assert seq.is_finished and seq.num_preemptions == 1


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        ([], SequenceStatus.PREEMPTED),  # a waiting sequence has nothing to preempt
        ([SequenceStatus.RUNNING], SequenceStatus.WAITING),
        ([SequenceStatus.FINISHED], SequenceStatus.RUNNING),  # finished is final
    ],
)
def test_illegal_transitions(path, bad):
    seq = _req().seqs[0]
    for s in path:
        seq.set_status(s)
    with pytest.raises(RuntimeError, match="illegal transition"):
        seq.set_status(bad)


def _run(req, tokens, max_model_len=8192):
    seq = req.seqs[0]
    seq.set_status(SequenceStatus.RUNNING)
    for t in tokens:
        if seq.is_finished:
            break
        seq.append_token(t, EOS, max_model_len)
    return seq


def test_stops_on_eos_unless_ignored():
    tok = tiny_tokenizer()
    words = tok.encode(" hello world")
    seq = _run(_req(max_tokens=50), [*words, 2, *words])
    assert seq.finish_reason == "stop" and seq.output_token_ids == [*words, 2]
    assert seq.text == " hello world"  # the EOS token is not text
    seq = _run(_req(max_tokens=50, ignore_eos=True), [*words, 2, *words])
    assert not seq.is_finished and len(seq.output_token_ids) == 2 * len(words) + 1


def test_stops_at_max_tokens_and_context():
    assert _run(_req(max_tokens=3), [10, 11, 12, 13]).output_token_ids == [10, 11, 12]
    req = _req(max_tokens=100)
    seq = _run(req, [10] * 100, max_model_len=len(req.prompt_token_ids) + 5)
    assert seq.finish_reason == "length" and len(seq.output_token_ids) == 5


def test_stop_string_truncates_text():
    tok = tiny_tokenizer()
    seq = _run(_req(max_tokens=50, stop=["STOP"]), tok.encode(" one two STOP three"))
    assert seq.finish_reason == "stop"
    assert seq.text == " one two "


def test_metrics_and_output():
    req = _req(max_tokens=3)
    seq = req.seqs[0]
    seq.set_status(SequenceStatus.RUNNING)
    for t in (10, 11, 12):
        time.sleep(0.01)
        seq.append_token(t, EOS, 8192)
    out = RequestOutput.from_request(req)
    m = out.metrics
    assert out.finished and out.outputs[0].token_ids == [10, 11, 12] and out.outputs[0].finish_reason == "length"
    assert 0.01 <= m.ttft < m.e2e
    assert m.tpot == pytest.approx((m.finish_time - m.first_token_time) / 2)
    assert m.num_prompt_tokens == len(req.prompt_token_ids) and m.num_output_tokens == 3


def test_streamed_text_holds_back_a_possible_stop_string():
    tok = tiny_tokenizer()
    req = _req(max_tokens=50, stop=["STOP"])
    seq = req.seqs[0]
    seq.set_status(SequenceStatus.RUNNING)
    seen = []
    for t in tok.encode(" one two STOP three"):
        if seq.is_finished:
            break
        seq.append_token(t, EOS, 8192)
        seen.append(RequestOutput.from_request(req).outputs[0].text)
    assert seq.finish_reason == "stop" and seen[-1] == " one two "
    assert all(" one two ".startswith(s) for s in seen)  # no partial "ST" is ever shown


def test_a_prompt_that_is_not_unicode_text_is_a_clear_error():
    with pytest.raises(ValueError, match=r"prompt is not valid Unicode text: surrogates not allowed .* at position 4"):
        _req("def \ud800(x):")


@pytest.mark.parametrize(("prompt", "message"), [([1.5, 2], "token ids must be integers, got 1.5"),
                                                 ([True], "token ids must be integers, got True"),
                                                 ([["a"]], "token ids must be integers")])
def test_token_ids_must_be_integers(prompt, message):
    with pytest.raises(ValueError, match=message):
        _req(prompt)
