"""An answer request as the domain takes it: validated once, on construction, with the defaults in one place.

Ask is a conversation of one message (`AnswerRequest.ask`); Chat sends the whole conversation. Whatever the
transport (gRPC today), this is where a question enters the domain: the checks here are the only ones, and
everything downstream (retrieval query, prompt, sampling) asserts instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from common.checks import positive_int
from common.errors import InvalidArgumentError
from llm import generation_config
from llm.sampler import SamplingParams
from retrieval import check_fusion, check_mode

if TYPE_CHECKING:
    from llm.generation_config import GenerationConfig

DEFAULT_NUM_PASSAGES = 5  # retrieved passages (before merging and trimming to the window)
MAX_NUM_PASSAGES = 50  # build_prompt renders the prompt once per candidate passage
# Greedy unless asked otherwise: a grounded answer should not change from one call to the next.
DEFAULT_SAMPLING: Mapping[str, Any] = {"max_tokens": 256, "temperature": 0.0}
ROLES = ("system", "user", "assistant")
# free decoding, quotes of the passages only (llm/grounding.py), or the extractive reader's best span (rag/reader.py)
GROUNDINGS = generation_config.GROUNDINGS


@dataclass
class AnswerRequest:
    collection: str
    messages: list[dict[str, str]]  # the conversation, oldest first, the last one the user's question; stripped
    num_passages: int = DEFAULT_NUM_PASSAGES  # chunks retrieved, 1..MAX_NUM_PASSAGES
    filter: dict[str, Any] | None = None  # metadata filter, as Collection.search takes it (checked there)
    sampling: Mapping[str, Any] = field(default_factory=dict)  # SamplingParams fields set by the caller
    mode: str | None = None  # "dense" | "lexical" | "hybrid" retrieval; None: the collection's search_mode
    fusion: Mapping[str, Any] = field(default_factory=dict)  # hybrid's FusionParams fields set by the caller
    # "free" | "quote" | "extract"; None: the collection's, the server's, else the model's (free for checkpoints
    # users bring)
    grounding: str | None = None
    params: SamplingParams = field(init=False)  # DEFAULT_SAMPLING overridden by `sampling`

    def __post_init__(self) -> None:
        self.num_passages = positive_int(self.num_passages, "num_passages", maximum=MAX_NUM_PASSAGES)
        self.mode = check_mode(self.mode)
        unknown = set(self.fusion) - {"rrf_k", "alpha", "candidates"}
        if unknown:
            raise InvalidArgumentError(f"fusion: unknown fields {sorted(unknown)}; use rrf_k, alpha, candidates")
        check_fusion(**self.fusion)
        self.messages = checked_messages(self.messages)
        self.grounding = check_grounding(self.grounding)
        self.params = sampling_params(self.sampling)

    def params_with(self, generation_config: GenerationConfig) -> SamplingParams:
        """The sampling of this answer on a given model: `params`, except that when the caller set no sampling
        field the model's generation_config.json sampling (if any) replaces the greedy default (the answer length
        stays DEFAULT_SAMPLING's unless the caller set it)."""
        defaults = {k: v for k, v in generation_config.defaults_for(self.sampling).items() if k != "max_tokens"}
        return sampling_params({**defaults, **self.sampling}) if defaults else self.params

    @classmethod
    def ask(cls, collection: str, question: str, **fields: Any) -> AnswerRequest:
        """One question, no conversation."""
        return cls(collection=collection, messages=[{"role": "user", "content": question}], **fields)


def check_grounding(grounding: str | None) -> str | None:
    """None (the default) or one of GROUNDINGS; InvalidArgumentError otherwise."""
    if grounding is not None and grounding not in GROUNDINGS:
        raise InvalidArgumentError(f"grounding must be one of {', '.join(GROUNDINGS)}, got {grounding!r}")
    return grounding


def checked_messages(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """The conversation with its contents stripped; InvalidArgumentError unless its last message is the user's
    question, with text."""
    if not messages:
        raise InvalidArgumentError("messages is empty: send the conversation, the last message the user's")
    out = []
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise InvalidArgumentError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise InvalidArgumentError(f"messages[{i}].content must be text, got {type(content).__name__}")
        out.append({"role": role, "content": content.strip()})
    if out[-1]["role"] != "user":
        raise InvalidArgumentError("the last message must be the user's and hold text")
    if not out[-1]["content"]:
        raise InvalidArgumentError("question is empty: the last message must be the user's and hold text")
    return out


def sampling_params(overrides: Mapping[str, Any]) -> SamplingParams:
    """DEFAULT_SAMPLING with the caller's fields (vLLM's names); InvalidArgumentError for a bad or unknown one."""
    try:
        return SamplingParams(**{**DEFAULT_SAMPLING, **overrides})
    except TypeError as exc:  # an unknown field (SamplingParams checks the values: InvalidArgumentError)
        raise InvalidArgumentError(f"params: {exc}") from exc
