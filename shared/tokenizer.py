"""Tokenizer wrapper (HF fast tokenizer), chat template, and a streaming-safe incremental detokenizer."""

from __future__ import annotations

import json
from pathlib import Path

REPLACEMENT = "\ufffd"  # what a decoder emits for an incomplete UTF-8 sequence


class Tokenizer:
    """Thin wrapper over `transformers.AutoTokenizer` loaded from a local model directory."""

    def __init__(self, path: str | Path) -> None:
        from transformers import AutoTokenizer

        from shared.loader import ModelFormatError

        path = Path(path)
        for name in ("tokenizer.json", "tokenizer_config.json"):  # name the broken file, not transformers' guess
            file = path / name
            if file.is_file():
                try:
                    json.loads(file.read_text())
                except (ValueError, UnicodeDecodeError) as err:
                    raise ModelFormatError(f"{file}: not valid JSON ({err})") from None
        try:
            self.hf = AutoTokenizer.from_pretrained(str(path))
        except Exception as err:  # transformers raises many kinds, often with several lines of advice
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ModelFormatError(f"{path}: the tokenizer cannot be loaded ({reason.rstrip(': ')}); an HF model "
                                   "directory needs tokenizer.json (or a slow tokenizer's files)") from None
        self.vocab_size = len(self.hf)

    def encode(self, text: str) -> list[int]:
        return self.hf(text, add_special_tokens=False, verbose=False)["input_ids"]  # our own checks name the limit

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(token_ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)

    def apply_chat_template(self, prompt: str | list[dict]) -> str:
        """A user message (or a list of {"role", "content"} messages) -> the prompt text with the assistant turn opened."""
        if self.hf.chat_template is None:
            raise ValueError("this model's tokenizer has no chat template; run without --chat")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas without ever emitting half a UTF-8 character.

    Byte-level BPE can split one character (an emoji, a CJK character) over several tokens; decoding the
    first of them alone gives U+FFFD. As vLLM does, we decode a short window `ids[prefix:]` and compare it
    with `ids[prefix:read]`, the text already emitted from that window; new text is emitted only when it does
    not end in an incomplete character. Each step costs O(window), not O(sequence).
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids[-6:])  # a little prompt context so the first token decodes correctly
        self.prefix = 0
        self.read = len(self.ids)
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def step(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly "")."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            delta = after[len(before) :]
            self.prefix, self.read = self.read, len(self.ids)
            self.text += delta
            return delta
        return ""

    def flush(self) -> str:
        """At the end of generation: emit whatever is still held back (an incomplete character stays U+FFFD)."""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        delta = after[len(before) :]
        self.prefix = self.read = len(self.ids)
        self.text += delta
        return delta
