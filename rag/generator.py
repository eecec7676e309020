"""The colocated generator, loaded for RAG: an AsyncLLM over a checkpoint of any supported family, whose own
tokenizer and chat template render the RAG prompt.

A checkpoint that cannot build the prompt (no tokenizer, no chat template, a template that fails on a plain
question) is refused when the server starts, not on every request.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from common.errors import InvalidArgumentError

if TYPE_CHECKING:
    from llm.async_engine import AsyncLLM

log = logging.getLogger("pqrag.rag")


def load_generator(
    model_dir: str | os.PathLike, device: str | None = None, dtype: str | None = None, **engine: Any
) -> AsyncLLM:
    """The started AsyncLLM of a checkpoint directory (config.json, *.safetensors, tokenizer.json with its
    tokenizer_config.json or chat_template.jinja, optionally generation_config.json), in dtype (a name; None:
    common.device.default_dtype).

    engine: EngineConfig fields to override (max_num_seqs, kv_cache_memory, ...); the rest are the engine's
    defaults. Raises InvalidArgumentError for a checkpoint whose tokenizer cannot render the chat prompt.
    """
    from llm.async_engine import AsyncLLM

    llm = AsyncLLM.from_dir(model_dir, device=device, dtype=dtype, **engine)
    tok = llm.tokenizer
    if tok is None:
        raise InvalidArgumentError(f"{model_dir} has no tokenizer.json: the generator needs one to build prompts")
    if tok.chat_template is None:
        raise InvalidArgumentError(
            f"{model_dir}: its tokenizer has no chat template (tokenizer_config.json's chat_template, or "
            f"chat_template.jinja), so it cannot build the RAG prompt; serve it with --no-generator, or add one"
        )
    try:  # a template that cannot render a plain question fails here, once, not on every Ask
        tok.apply_chat_template([{"role": "user", "content": "?"}], tokenize=True)
    except InvalidArgumentError as exc:  # not started yet: no engine thread to stop
        raise InvalidArgumentError(f"{model_dir}: {exc} (serve it with --no-generator)") from exc
    llm.start()
    cfg = llm.config
    log.info(
        "generator %s loaded (%s, %d layers, %s; system role %s)",
        model_dir,
        cfg.model_type,
        cfg.num_layers,
        f"{cfg.num_experts} experts top-{cfg.num_experts_per_tok}" if cfg.num_experts else "dense",
        "in the template" if tok.accepts_system_role else "folded into the first user turn",
    )
    return llm
