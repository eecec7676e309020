"""What a checkpoint directory holds, without loading its weights (`pqrag models inspect DIR`): the family and its
shape, total and active parameters, dtype and size on disk, the context served, the tokenizer's kind, its chat
template and stop ids. Reads config.json, the safetensors headers, the tokenizer files and generation_config.json.
"""

from __future__ import annotations

import os
from typing import Any

from common.errors import InvalidArgumentError
from llm.checkpoint import checkpoint_dtype
from llm.config import ModelConfig
from llm.generation_config import GenerationConfig
from llm.safetensors_io import read_headers
from llm.tokenizer import Tokenizer


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON-able description of the checkpoint at path; InvalidArgumentError when it is not one pqrag serves."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise InvalidArgumentError(f"{path!r} is not a directory (expected config.json + *.safetensors)")
    cfg = ModelConfig.load(path)
    infos = read_headers(path)
    moe_layers = sum(cfg.is_moe_layer(i) for i in range(cfg.num_layers))
    out: dict[str, Any] = {
        "path": os.path.abspath(path),
        "family": cfg.model_type,
        "layers": cfg.num_layers,
        "moe_layers": moe_layers,
        "experts": cfg.num_experts,
        "top_k": cfg.num_experts_per_tok,
        "shared_expert": cfg.shared_expert_intermediate_size or None,
        "hidden_size": cfg.hidden_size,
        "heads": cfg.num_heads,
        "kv_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "total_params": cfg.num_params(),
        "active_params": cfg.num_params(active=True),
        "dtype": str(checkpoint_dtype(infos)).removeprefix("torch."),
        "size_bytes": sum(i.end - i.start for i in infos.values()),
        "files": len({i.file for i in infos.values()}),
        "max_position_embeddings": cfg.max_position_embeddings,
        "sliding_window": cfg.sliding_window,
        "context_length": cfg.context_length,
        "rope": (cfg.rope_scaling or {}).get("rope_type", "default"),
        "tie_word_embeddings": cfg.tie_word_embeddings,
    }
    gen = GenerationConfig.load(path)
    out["tokenizer"] = None
    if os.path.exists(os.path.join(path, "tokenizer.json")):
        tok = Tokenizer.from_file(path)
        stops = sorted({*tok.stop_ids, *cfg.eos_token_ids, *gen.eos_token_ids})
        out["tokenizer"] = {
            "kind": tok.kind,
            "vocab_size": tok.vocab_size,
            "chat_template": tok.chat_template is not None,
            "system_role": tok.accepts_system_role,
            "stop_tokens": [tok.id_to_token(i) or str(i) for i in stops],
        }
    out["default_sampling"] = dict(gen.sampling)
    return out


def _count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def render(d: dict[str, Any]) -> str:
    """describe()'s dict as aligned lines for a terminal."""
    ffn = "dense"
    if d["experts"]:
        ffn = f"{d['experts']} experts top-{d['top_k']} in {d['moe_layers']} of {d['layers']} layers"
        if d["shared_expert"]:
            ffn += f", shared expert ({d['shared_expert']} wide)"
    window = f", sliding window {d['sliding_window']} (served up to it)" if d["sliding_window"] else ""
    tok = d["tokenizer"]
    rows = [
        ("path", d["path"]),
        ("family", d["family"]),
        (
            "layers",
            f"{d['layers']} (hidden {d['hidden_size']}, {d['heads']} heads / {d['kv_heads']} kv, head_dim "
            f"{d['head_dim']})",
        ),
        ("feed-forward", ffn),
        ("parameters", f"{_count(d['total_params'])} total, {_count(d['active_params'])} active per token"),
        ("dtype", f"{d['dtype']} ({d['size_bytes'] / 2**30:.2f} GiB in {d['files']} file(s))"),
        (
            "context",
            f"{d['context_length']} tokens (max_position_embeddings {d['max_position_embeddings']}"
            f"{window}; rope {d['rope']})",
        ),
    ]
    if tok is None:
        rows.append(("tokenizer", "none (no tokenizer.json)"))
    else:
        template = "yes" if tok["chat_template"] else "no"
        if tok["chat_template"] and not tok["system_role"]:
            template += " (no system role: instructions go into the first user turn)"
        rows += [
            ("tokenizer", f"{tok['kind']}, {tok['vocab_size']} tokens"),
            ("chat template", template),
            ("stop tokens", ", ".join(tok["stop_tokens"]) or "none"),
        ]
    if d["default_sampling"]:
        rows.append(("default sampling", ", ".join(f"{k}={v}" for k, v in d["default_sampling"].items())))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
