"""What m1 adds: one request at a time, with a contiguous KV cache sized for exactly that request.
(Everything m1 shares with later engines — HF parity, the API, aborts, bad input — is in test_kept.py.)"""

from m1_basic import LLM, SamplingParams
from shared.tools.testing import drain, tiny_tokenizer


def test_kv_cache_is_sized_for_the_running_request_and_released_with_it():
    engine = LLM(model="tiny-qwen3", device="cpu", dtype="float32").engine
    prompt = tiny_tokenizer().encode("def a():")
    first = engine.add_request(prompt, SamplingParams(max_tokens=10))
    second = engine.add_request("def b():", SamplingParams(max_tokens=4))
    engine.step()
    assert engine.cache.max_len == len(prompt) + 10  # prompt + max_tokens, reserved up front
    assert engine.current.request_id == first and [r.request_id for r in engine.waiting] == [second]
    engine.abort_request(first)
    assert engine.cache is None and engine.current is None  # released at once
    assert list(drain(engine)) == [second] and engine.cache is None
