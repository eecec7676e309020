"""SpeculativeConfig: the options of speculative decoding, vLLM's names, validated where they enter.

    LLM(dir, speculative_config={"method": "ngram", "num_speculative_tokens": 4,
                                 "prompt_lookup_max": 4, "prompt_lookup_min": 2})
    pqrag serve --speculative-config '{"method": "ngram", "num_speculative_tokens": 4}'

Only the "ngram" method (prompt lookup: drafts copied from the sequence's own prompt and output) exists: RAG answers
copy from their passages, and it needs no draft model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from common.checks import positive_int
from common.errors import InvalidArgumentError

METHODS = ("ngram",)


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str = "ngram"  # how drafts are proposed; "ngram" = prompt lookup over prompt + output tokens
    num_speculative_tokens: int = 4  # draft tokens verified per sequence and step (at most)
    prompt_lookup_max: int = 4  # longest n-gram suffix looked up in the sequence's earlier tokens
    prompt_lookup_min: int = 2  # shortest one; no match of at least this length = no draft this step
    # Speculate only in steps with at most this many running sequences: on a compute-bound CPU verifying k drafts
    # costs about k+1 tokens' compute per sequence, which a large batch no longer hides (bench/speculative.py on a
    # 2-core AVX2 CPU: 1.13x at 1 stream, 0.93x at 8; bench/RESULTS.md). 2: single users gain, batches don't pay.
    # Above it, quote-constrained sequences still draft the tokens their constraint forces (always accepted).
    disable_by_batch_size: int = 2

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidArgumentError(
                f"speculative_config: unknown method {self.method!r}; the methods are {list(METHODS)}"
            )
        for name in ("num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min", "disable_by_batch_size"):
            positive_int(getattr(self, name), f"speculative_config.{name}")
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise InvalidArgumentError(
                f"speculative_config: prompt_lookup_min ({self.prompt_lookup_min}) must be <= prompt_lookup_max "
                f"({self.prompt_lookup_max})"
            )

    @classmethod
    def parse(cls, value: SpeculativeConfig | dict[str, Any] | str | None) -> SpeculativeConfig | None:
        """A config from a SpeculativeConfig, a dict (the offline API) or a JSON object (the CLI); None stays None.
        Unknown keys raise InvalidArgumentError naming the known ones."""
        if value is None or isinstance(value, SpeculativeConfig):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise InvalidArgumentError(f"speculative_config is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise InvalidArgumentError(f"speculative_config must be a JSON object / dict, got {type(value).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise InvalidArgumentError(f"speculative_config: unknown key(s) {unknown}; the keys are {sorted(names)}")
        return cls(**value)
