"""Safetensors checkpoints in Hugging Face's Mixtral layout (config.json + model.safetensors or shards + index).

On disk the experts are per-expert matrices, as in Mistral's Mixtral releases and in what transformers'
`save_pretrained` writes (it un-fuses its in-memory tensors on save):
    model.layers.N.block_sparse_moe.gate.weight            (E, H)
    model.layers.N.block_sparse_moe.experts.E.w1.weight    (I, H)   gate proj
    model.layers.N.block_sparse_moe.experts.E.w3.weight    (I, H)   up proj
    model.layers.N.block_sparse_moe.experts.E.w2.weight    (H, I)   down proj
transformers >= 5 holds them fused in memory; a raw `state_dict()` of its model saved with safetensors has
    model.layers.N.mlp.gate.weight, model.layers.N.mlp.experts.gate_up_proj (E, 2I, H) = [w1; w3],
    model.layers.N.mlp.experts.down_proj (E, H, I) = w2
and loads here too. In memory (model.py) the experts are stacked: block_sparse_moe.experts.w1/w3 (E, I, H), w2 (E, H, I).
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from common.fs import atomic_write
from llm.config import ModelConfig
from llm.model import CausalLM

_PER_EXPERT = re.compile(r"^(model\.layers\.\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$")
_FUSED = re.compile(r"^(model\.layers\.\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")
_MLP_GATE = re.compile(r"^(model\.layers\.\d+)\.mlp\.gate\.weight$")


def _checkpoint_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(single):
        return [single]
    found = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    if not found:
        raise ValueError(f"no *.safetensors in {path!r} (pytorch_model.bin checkpoints are not supported)")
    return [os.path.join(path, n) for n in found]


def hf_to_internal(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Hugging Face names (per-expert or transformers-5 fused) -> this module's state_dict names."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[str, str], dict[int, torch.Tensor]] = defaultdict(dict)
    for name, t in tensors.items():
        if m := _PER_EXPERT.match(name):
            experts[(m[1], m[3])][int(m[2])] = t
        elif m := _FUSED.match(name):
            prefix = f"{m[1]}.block_sparse_moe.experts"
            if m[2] == "gate_up_proj":  # (E, 2I, H): gate rows first, then up rows
                out[f"{prefix}.w1"], out[f"{prefix}.w3"] = t.chunk(2, dim=1)
            else:
                out[f"{prefix}.w2"] = t
        elif m := _MLP_GATE.match(name):
            out[f"{m[1]}.block_sparse_moe.gate.weight"] = t
        else:
            out[name] = t
    for (prefix, w), per in experts.items():
        if sorted(per) != list(range(config.num_experts)):
            raise ValueError(f"{prefix}: found experts {sorted(per)} for {w}, config has {config.num_experts}")
        out[f"{prefix}.block_sparse_moe.experts.{w}"] = torch.stack([per[e] for e in range(config.num_experts)])
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)  # tied: the embedding is the head (transformers omits it on save)
    return out


def internal_to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """This module's state_dict -> per-expert Hugging Face names (contiguous tensors, ready for safetensors)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if (
            name.endswith(".block_sparse_moe.experts.w1")
            or name.endswith(".block_sparse_moe.experts.w2")
            or name.endswith(".block_sparse_moe.experts.w3")
        ):
            prefix, w = name.rsplit(".", 1)
            for e in range(t.shape[0]):
                out[f"{prefix}.{e}.{w}.weight"] = t[e].contiguous()
        elif name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        else:
            out[name] = t.contiguous()
    return out


def load_state_dict(path: str | os.PathLike, config: ModelConfig | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (single file or shards), mapped to this module's names, on CPU."""
    path = os.fspath(path)
    config = config or ModelConfig.load(path)
    tensors: dict[str, torch.Tensor] = {}
    for file in _checkpoint_files(path):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    return hf_to_internal(tensors, config)


def load_model(
    path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> CausalLM:
    """A CausalLM from a Hugging Face-style Mixtral checkpoint directory, in eval mode, on device, in dtype.

    The module is built on the meta device and the tensors assigned, so no random init or double copy happens.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"checkpoint path {path!r} is not a directory (expected config.json + *.safetensors)")
    config = ModelConfig.load(path)
    state = load_state_dict(path, config)
    with torch.device("meta"):
        model = CausalLM(config)
    expected = set(model.state_dict())
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path!r} does not match its config.json: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    for name, t in state.items():
        want = model.get_parameter(name).shape
        if t.shape != want:
            raise ValueError(f"{name}: checkpoint shape {tuple(t.shape)} != config shape {tuple(want)}")
        state[name] = t.to(device=device, dtype=dtype)
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight  # assign=True replaced the shared Parameter
    return model.eval()


def save_model(
    model: CausalLM, path: str | os.PathLike, dtype: torch.dtype | None = None, max_shard_bytes: int | None = None
) -> None:
    """Write config.json and model.safetensors (or shards + model.safetensors.index.json when the weights exceed
    max_shard_bytes) with Hugging Face Mixtral names; `AutoModelForCausalLM.from_pretrained(path)` loads it.
    Each file is written atomically: a crash leaves it old or new, never torn."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    config = model.config
    state = {k: v.detach().to("cpu", dtype or v.dtype) for k, v in model.state_dict().items()}
    tensors = internal_to_hf(state, config)
    config.save(path, dtype=str(next(iter(tensors.values())).dtype).removeprefix("torch."))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        _save_safetensors(tensors, os.path.join(path, "model.safetensors"))
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        _save_safetensors(shard, os.path.join(path, fname))
        weight_map.update({name: fname for name in shard})
    with atomic_write(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)


def _save_safetensors(tensors: dict[str, torch.Tensor], file: str) -> None:
    """save_file, atomically: safetensors writes the temporary file by its name (no second copy of the weights in
    memory, as safetensors.torch.save's bytes would be); atomic_write then fsyncs it and renames it into place."""
    with atomic_write(file) as f:
        save_file(tensors, f.name, metadata={"format": "pt"})
