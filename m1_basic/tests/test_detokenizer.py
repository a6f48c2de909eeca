"""The incremental detokenizer: streaming deltas add up to the full decode, and never show half a character."""

import pytest

from shared.tokenizer import REPLACEMENT, IncrementalDetokenizer
from shared.tools.testing import tiny_tokenizer

TEXTS = [
    "def greet(name):\n    return f'Grüße, {name}!'\n",
    "世界你好 — naïve café 🚀🚀 ünïcödé; 日本語のテキスト",
    "emoji only: 👩‍💻🧪🎉",
    "plain ascii, with    spaces and\ttabs",
]


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_add_up_to_full_decode(text):
    tok = tiny_tokenizer()
    prompt = tok.encode("x = 1\n")
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok, prompt)
    deltas = [detok.step(t) for t in ids]
    deltas.append(detok.flush())
    assert "".join(deltas) == tok.decode(ids) == text
    assert all(REPLACEMENT not in d for d in deltas)


def test_multibyte_characters_span_tokens():
    """The test above only means something if some character is split across tokens."""
    tok = tiny_tokenizer()
    ids = tok.encode("🚀")
    assert len(ids) > 1 and REPLACEMENT in tok.decode(ids[:1])


def test_incomplete_character_is_flushed_at_end():
    tok = tiny_tokenizer()
    ids = tok.encode("a🚀")[:-1]  # stop halfway through the emoji
    detok = IncrementalDetokenizer(tok, [])
    text = "".join(detok.step(t) for t in ids) + detok.flush()
    assert text == tok.decode(ids)
