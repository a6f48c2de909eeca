"""OpenAI's response bodies, built from the engine's RequestOutputs: whole responses, streamed chunks, usage, logprobs.

A stream sends each completion's *new* text since the last chunk. Engine outputs are cumulative snapshots, so a
`DeltaTracker` remembers how much of each completion was sent; the concatenated chunks are exactly the final text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shared.outputs import CompletionOutput, RequestOutput
from shared.sampling import TokenLogprobs
from shared.tokenizer import Tokenizer

MIN_LOGPROB = -9999.0  # JSON has no -inf; vLLM clamps the same way


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, out: RequestOutput) -> None:
        """Count one engine request (a prompt with its n completions) once it has finished."""
        self.prompt_tokens += len(out.prompt_token_ids)
        self.completion_tokens += sum(len(o.token_ids) for o in out.outputs)

    def body(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass
class Delta:
    index: int  # the choice: prompt_index * n + completion index
    text: str
    offset: int  # characters of this choice sent before `text`
    logprobs: list[TokenLogprobs] | None
    finish_reason: str | None


@dataclass
class DeltaTracker:
    """What has been sent of each choice: characters, tokens, and whether its finish_reason went out."""

    sent_chars: dict[int, int] = field(default_factory=dict)
    sent_tokens: dict[int, int] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)

    def deltas(self, prompt_index: int, out: RequestOutput, n: int) -> list[Delta]:
        result = []
        for o in out.outputs:
            index = prompt_index * n + o.index
            if index in self.finished:
                continue
            chars, tokens = self.sent_chars.get(index, 0), self.sent_tokens.get(index, 0)
            text = o.text[chars:]
            logprobs = None if o.logprobs is None else o.logprobs[tokens:]
            if not text and not logprobs and o.finish_reason is None:
                continue  # nothing new for this choice (its text is held back, or another choice advanced)
            self.sent_chars[index], self.sent_tokens[index] = len(o.text), len(o.token_ids)
            if o.finish_reason is not None:
                self.finished.add(index)
            result.append(Delta(index, text, chars, logprobs, o.finish_reason))
        return result


def _lp(value: float) -> float:
    return max(value, MIN_LOGPROB)


class Formatter:
    """Builds the JSON bodies of one endpoint's responses (`kind`: "completion" or "chat")."""

    def __init__(self, kind: str, response_id: str, model: str, tokenizer: Tokenizer) -> None:
        self.kind, self.id, self.model, self.tokenizer = kind, response_id, model, tokenizer
        self.created = int(time.time())

    def _token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    # -- logprobs ----------------------------------------------------------------------------------------------
    def logprobs(self, entries: list[TokenLogprobs] | None, text_offset: int = 0) -> dict | None:
        if entries is None:
            return None
        if self.kind == "chat":
            def item(token_id: int, lp: float) -> dict:
                text = self._token(token_id)
                return {"token": text, "logprob": _lp(lp), "bytes": list(text.encode("utf-8"))}
            return {"content": [{**item(e.token_id, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
                                for e in entries]}
        tokens = [self._token(e.token_id) for e in entries]
        offsets, at = [], text_offset
        for t in tokens:
            offsets.append(at)
            at += len(t)
        return {"tokens": tokens, "token_logprobs": [_lp(e.logprob) for e in entries],
                "top_logprobs": [{self._token(t): _lp(lp) for t, lp in e.top} for e in entries],
                "text_offset": offsets}

    # -- whole responses ---------------------------------------------------------------------------------------
    def choice(self, index: int, o: CompletionOutput) -> dict:
        if self.kind == "chat":
            return {"index": index, "message": {"role": "assistant", "content": o.text},
                    "logprobs": self.logprobs(o.logprobs), "finish_reason": o.finish_reason}
        return {"index": index, "text": o.text, "logprobs": self.logprobs(o.logprobs), "finish_reason": o.finish_reason}

    def response(self, outs: list[RequestOutput], n: int) -> dict:
        usage = Usage()
        choices = []
        for p, out in enumerate(outs):
            usage.add(out)
            choices += [self.choice(p * n + o.index, o) for o in out.outputs]
        return {"id": self.id, "object": "chat.completion" if self.kind == "chat" else "text_completion",
                "created": self.created, "model": self.model, "choices": choices, "usage": usage.body()}

    # -- streamed chunks ---------------------------------------------------------------------------------------
    def chunk(self, choices: list[dict], usage: Usage | None = None) -> dict:
        body = {"id": self.id, "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
                "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            body["usage"] = usage.body()
        return body

    def role_chunk(self, index: int) -> dict:
        """Chat streams open each choice with the assistant role, as OpenAI's do."""
        return self.chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None}])

    def delta_chunk(self, d: Delta) -> dict:
        if self.kind == "chat":
            delta = {"content": d.text} if d.text else {}
            return self.chunk([{"index": d.index, "delta": delta, "logprobs": self.logprobs(d.logprobs),
                                "finish_reason": d.finish_reason}])
        return self.chunk([{"index": d.index, "text": d.text, "logprobs": self.logprobs(d.logprobs, d.offset),
                            "finish_reason": d.finish_reason}])
