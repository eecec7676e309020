"""A checkpoint's generation_config.json: the ids that end generation, and its default sampling.

Hugging Face checkpoints ship their stop ids and recommended sampling there (Llama-3-Instruct: eos [128001, 128008,
128009], temperature 0.6, top_p 0.9; Qwen2.5-Instruct: eos [151645, 151643], temperature 0.7, top_p 0.8, top_k 20,
repetition_penalty 1.05). As vLLM does, the engine stops on any of those eos ids, and a request that sets no
sampling parameter samples with the checkpoint's (`sampling`, SamplingParams field names). `do_sample: false` means
greedy, as in transformers' generate. A missing file is an empty config: no extra eos, no defaults.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.errors import InvalidArgumentError

FILE = "generation_config.json"
GROUNDINGS = ("free", "quote", "extract")  # the RAG groundings (rag.request.GROUNDINGS is this one)
# generation_config.json key -> SamplingParams field
_SAMPLING_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}
# The sampling fields a request may set; when it sets none of them the checkpoint's apply (max_tokens is a length,
# not a way of sampling, and does not count).
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
)


@dataclass(frozen=True)
class GenerationConfig:
    eos_token_ids: tuple[int, ...] = ()  # stop on any of these (besides the tokenizer's and config.json's eos)
    sampling: Mapping[str, Any] = field(default_factory=dict)  # SamplingParams fields; {} = the engine's defaults
    # pqrag's own key "pqrag_grounding": how the model answers RAG questions by default ("quote" for a model
    # trained to copy and cite, like the bundled one; "extract": the server's extractive reader answers, quote on a
    # server without one); None: free decoding (checkpoints users bring).
    grounding: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GenerationConfig:
        eos = d.get("eos_token_id")
        eos_ids = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
        if any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in eos_ids):
            raise InvalidArgumentError(f"{FILE}: eos_token_id must be an int or a list of ints, got {eos!r}")
        sampling = {ours: d[theirs] for theirs, ours in _SAMPLING_KEYS.items() if d.get(theirs) is not None}
        if d.get("do_sample") is False:  # greedy whatever the temperature says, as transformers' generate
            sampling = {k: v for k, v in sampling.items() if k == "max_tokens"}
            sampling["temperature"] = 0.0
        grounding = d.get("pqrag_grounding")
        if grounding not in (None, *GROUNDINGS):
            raise InvalidArgumentError(
                f'{FILE}: pqrag_grounding must be "free", "quote" or "extract", got {grounding!r}'
            )
        return cls(eos_token_ids=eos_ids, sampling=sampling, grounding=grounding)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> GenerationConfig:
        """The generation_config.json of a checkpoint directory; an empty config when there is none."""
        path = os.path.join(os.fspath(directory), FILE)
        if not os.path.exists(path):
            return cls()
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def defaults_for(self, requested: Mapping[str, Any]) -> dict[str, Any]:
        """The checkpoint's sampling fields to apply under `requested` (the SamplingParams fields a request set):
        all of them when the request sets no sampling field, else none; the request's own fields always win."""
        if any(k in requested for k in SAMPLING_FIELDS):
            return {}
        return {k: v for k, v in self.sampling.items() if k not in requested}
