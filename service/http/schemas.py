"""The OpenAI-compatible request bodies (pydantic): their wire shape, nothing about values.

Types and shapes are checked here (a string where a number belongs is a 400 naming the field); values are checked
once, by the domain (SamplingParams, AnswerRequest, Collection.search), like the gRPC path. Fields OpenAI clients
send that change nothing here (user, store, metadata, ...) are accepted and ignored, as vLLM does; fields that
would change the answer in a way this server cannot honour (tools, n > 1, a JSON response_format, ...) are refused
by `unsupported`, naming the field.

The RAG extension is the `rag` object, sent by the openai SDK with `extra_body={"rag": {...}}`. vLLM's sampling
extensions (top_k, min_p, repetition_penalty, min_tokens, ignore_eos) are accepted the same way.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.http.errors import ApiError


class RagOptions(BaseModel):
    """Answer from a collection: retrieve, cite, and return the citations with the completion."""

    model_config = ConfigDict(extra="forbid")

    collection: str
    top_k: int | None = Field(None, description="passages retrieved for the context (default: the server's)")
    filter: dict[str, Any] | None = Field(None, description="metadata filter, as for search")
    grounding: str | None = Field(
        None,
        description='"free", "quote" (only verbatim quotes of the passages, each cited) or "extract" (the extractive '
        "reader's best span of the passages, cited); default: the collection's, else the server's",
    )


class StreamOptions(BaseModel):
    include_usage: bool = False


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[ContentPart] | None = None


class GenerationBody(BaseModel):
    """What chat and text completions share: the model, sampling, streaming and the RAG extension."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="the served generator's name (GET /v1/models); unset: that one")
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    rag: RagOptions | None = None
    # vLLM's sampling extensions
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None

    SAMPLING: ClassVar[tuple[str, ...]] = (
        "temperature",
        "top_p",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "top_k",
        "min_p",
        "repetition_penalty",
        "min_tokens",
        "ignore_eos",
    )

    def sampling(self, max_tokens: int | None) -> dict[str, Any]:
        """The SamplingParams fields the client set (unset ones keep the domain's defaults)."""
        fields = {name: getattr(self, name) for name in self.SAMPLING if getattr(self, name) is not None}
        if max_tokens is not None:
            fields["max_tokens"] = max_tokens
        return fields

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(GenerationBody):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def unsupported(self) -> None:
        _refuse_common(self)
        extra = self.model_extra or {}
        if extra.get("tools") or extra.get("functions"):
            raise ApiError(400, "tools and functions are not supported by this server", param="tools")
        if extra.get("tool_choice") not in (None, "none", "auto"):
            raise ApiError(400, "tool_choice is not supported by this server", param="tool_choice")
        fmt = extra.get("response_format")
        if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
            raise ApiError(400, 'only response_format {"type": "text"} is supported', param="response_format")
        if self.top_logprobs is not None and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")

    @property
    def num_logprobs(self) -> int | None:
        """Top-N logprobs per token for SamplingParams.logprobs (None: none asked for)."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(GenerationBody):
    prompt: str | list[str] | list[int]
    logprobs: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None

    def unsupported(self) -> None:
        _refuse_common(self)
        if self.echo:
            raise ApiError(400, "echo is not supported by this server", param="echo")
        if self.suffix:
            raise ApiError(400, "suffix is not supported by this server", param="suffix")
        if self.best_of not in (None, 1):
            raise ApiError(400, "best_of must be 1 on this server", param="best_of")
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str) and len(self.prompt) > 1:
            raise ApiError(400, "send one prompt per request (a list of one string, or a string)", param="prompt")


def _refuse_common(body: GenerationBody) -> None:
    if body.n not in (None, 1):
        raise ApiError(400, f"n must be 1 on this server, got {body.n}", param="n")
    if (body.model_extra or {}).get("logit_bias"):
        raise ApiError(400, "logit_bias is not supported by this server", param="logit_bias")


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    input: str | list[str] | list[int] | list[list[int]]
    model: str = Field(description="an embedder's name (GET /v1/models), e.g. all-MiniLM-L6-v2")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
