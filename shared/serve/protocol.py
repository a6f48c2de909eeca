"""The OpenAI request bodies the server accepts, and how each becomes the engine's prompt and SamplingParams.

Bodies are pydantic models that forbid unknown fields, so a typo (`max_token`) is a 400 that names it rather than
a silently ignored setting. Beyond OpenAI's parameters they take vLLM's extra sampling ones (top_k, min_p,
repetition_penalty, ignore_eos), as vLLM's server does. A parameter OpenAI defines and the engine cannot honour
(echo, suffix, logit_bias, tools, best_of > n) is refused by name instead of being ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.sampling import MAX_LOGPROBS, SamplingParams
from shared.tokenizer import Tokenizer


class ApiError(Exception):
    """A request the server answers with an OpenAI-style error body (`error.message/type/param/code`)."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Sampling(BaseModel):
    """The fields both endpoints share (OpenAI's names and defaults, plus vLLM's extras)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: str | list[str] | None = None
    seed: int | None = None
    ignore_eos: bool = False
    user: str | None = None  # accepted and logged, as OpenAI's; it changes nothing
    best_of: int | None = None
    logit_bias: dict[str, float] | None = None

    def sampling_params(self, max_tokens: int, logprobs: int | None) -> SamplingParams:
        if self.best_of is not None and self.best_of != self.n:
            raise ApiError(400, f"best_of={self.best_of} is not supported (only best_of == n): use n", "best_of")
        if self.logit_bias:
            raise ApiError(400, "logit_bias is not supported by this server", "logit_bias")
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, "stream_options is only allowed with stream=true", "stream_options")
        try:
            return SamplingParams(
                temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
                presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                repetition_penalty=self.repetition_penalty, max_tokens=max_tokens, seed=self.seed,
                ignore_eos=self.ignore_eos, stop=self.stop, n=self.n, logprobs=logprobs)
        except ValueError as err:  # SamplingParams names the field first: "top_p must be in (0, 1], got 2.0"
            name = str(err).split()[0]
            raise ApiError(400, str(err), name if name in SamplingParams.__dataclass_fields__ else None) from None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    """POST /v1/completions: one prompt (text or token ids) or a batch of them."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = Field(default=None, description="top alternatives per token, 0 to 20")
    echo: bool = False
    suffix: str | None = None

    def prompts(self) -> list[str | list[int]]:
        if self.echo:
            raise ApiError(400, "echo is not supported by this server", "echo")
        if self.suffix:
            raise ApiError(400, "suffix is not supported by this server", "suffix")
        p = self.prompt
        prompts = [p] if isinstance(p, str) or (p and isinstance(p[0], int)) else list(p)
        if not prompts or any(len(x) == 0 for x in prompts):
            raise ApiError(400, "prompt is empty: give at least one character or token", "prompt")
        return prompts

    def to_sampling(self, max_model_len: int) -> SamplingParams:
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise ApiError(400, f"logprobs must be an integer in [0, {MAX_LOGPROBS}], got {self.logprobs}", "logprobs")
        return self.sampling_params(max_model_len if self.max_tokens is None else self.max_tokens, self.logprobs)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ...: carried to the template, which may use them
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions: messages rendered through the model's chat template."""

    messages: list[ChatMessage]
    max_tokens: int | None = None  # None: up to the model's context, as OpenAI's and vLLM's chat endpoints
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    def prompt(self, tokenizer: Tokenizer) -> str:
        if self.tools or self.tool_choice not in (None, "none"):
            raise ApiError(400, "tools are not supported by this server", "tools")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise ApiError(400, "only response_format {\"type\": \"text\"} is supported", "response_format")
        if not self.messages:
            raise ApiError(400, "messages is empty: give at least one message", "messages")
        messages = []
        for i, m in enumerate(self.messages):
            content = m.content
            if isinstance(content, list):  # OpenAI's content parts: text only
                if any(part.get("type") != "text" or not isinstance(part.get("text"), str) for part in content):
                    raise ApiError(400, f"messages[{i}].content: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                                   "are supported", "messages")
                content = "".join(part["text"] for part in content)
            messages.append({**(m.model_extra or {}), "role": "system" if m.role == "developer" else m.role,
                             "content": content or ""})
        try:
            return tokenizer.apply_chat_template(messages)
        except ValueError as err:
            raise ApiError(400, str(err), "messages") from None
        except Exception as err:  # a Jinja template that raises on these messages (e.g. roles out of order)
            raise ApiError(400, f"the model's chat template refused these messages: {err}", "messages") from None

    def to_sampling(self, max_model_len: int) -> SamplingParams:
        if self.top_logprobs is not None and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs=true", "top_logprobs")
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= MAX_LOGPROBS:
            raise ApiError(400, f"top_logprobs must be an integer in [0, {MAX_LOGPROBS}], got {self.top_logprobs}",
                           "top_logprobs")
        max_tokens = next((m for m in (self.max_completion_tokens, self.max_tokens) if m is not None), max_model_len)
        try:
            return self.sampling_params(max_tokens, (self.top_logprobs or 0) if self.logprobs else None)
        except ApiError as err:  # SamplingParams calls it max_tokens: name the field the client sent
            if err.param == "max_tokens" and self.max_completion_tokens is not None:
                err.param = "max_completion_tokens"
                err.message = err.message.replace("max_tokens", "max_completion_tokens", 1)
            raise
