"""The colocated generator, loaded for RAG: an AsyncLLM whose tokenizer can render the RAG chat prompt.

A checkpoint that cannot build the prompt is refused when the server starts, not on every request.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from common.errors import InvalidArgumentError

if TYPE_CHECKING:
    from llm.async_engine import AsyncLLM

log = logging.getLogger("pqrag.rag")


def load_generator(model_dir: str | os.PathLike, device: str | None = None, **engine: Any) -> AsyncLLM:
    """The started AsyncLLM of a checkpoint directory (config.json, *.safetensors, tokenizer.json).

    engine: EngineConfig fields to override (max_num_seqs, kv_cache_memory, ...); the rest are the engine's
    defaults. Raises InvalidArgumentError for a checkpoint whose tokenizer cannot render the chat prompt.
    """
    from llm.async_engine import AsyncLLM

    llm = AsyncLLM.from_dir(model_dir, device=device, **engine)
    if llm.tokenizer is None:
        raise InvalidArgumentError(f"{model_dir} has no tokenizer.json: the generator needs one to build prompts")
    try:  # the prompt needs the chat template's special tokens
        llm.tokenizer.apply_chat_template([{"role": "user", "content": "?"}], tokenize=True)
    except ValueError as exc:  # not started yet: no engine thread to stop
        raise InvalidArgumentError(
            f"{model_dir}: {exc} (serve it with --no-generator, or give it a pqrag tokenizer)"
        ) from exc
    llm.start()
    log.info("generator %s loaded (%d layers, %d experts)", model_dir, llm.config.num_layers, llm.config.num_experts)
    return llm
