"""Checkpoints of every family in llm/families.py: config.json + safetensors (model.safetensors, or shards named by
model.safetensors.index.json), loaded into model.py's CausalLM and saved in the family's own layout (atomic).

Tensor names on disk (see families.py) -> here:
    model.layers.N.block_sparse_moe.experts.E.w1.weight    (I, H)   Mixtral: gate proj  -> block_sparse_moe.experts.w1[E]
    model.layers.N.block_sparse_moe.experts.E.w3.weight    (I, H)   Mixtral: up proj    -> ...experts.w3[E]
    model.layers.N.block_sparse_moe.experts.E.w2.weight    (H, I)   Mixtral: down proj  -> ...experts.w2[E]
    model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight          Qwen-MoE, OLMoE     -> ...experts.{w1,w3,w2}[E]
    model.layers.N.mlp.{gate.weight, shared_expert.*, shared_expert_gate.weight}        -> block_sparse_moe.*
    model.layers.N.mlp.experts.gate_up_proj (E, 2I, H) = [w1; w3], ...mlp.experts.down_proj (E, H, I) = w2
        (transformers >= 5 holds experts fused in memory; a raw state_dict() saved with safetensors loads too)
and every other name (attention, norms, dense `mlp.*_proj`, embeddings, lm_head) as is. In memory the experts are
stacked (E, I, H) tensors (model.py).

Loading (`load_model`): the model is built on the meta device, its parameters allocated on the target device in the
target dtype, and each stored tensor put in place one at a time (safetensors_io.py): on a CPU in the stored dtype a
tensor used as stored becomes a view of the file's memory map (no copy), an expert is read straight into its row
of the stacked parameter; a dtype conversion or a GPU copy stages one tensor at a time. So a bf16 checkpoint loads
in bf16 without a float32 copy or a second copy of the weights. The dtype defaults to the checkpoint's own
("auto").
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

import torch
from safetensors.torch import save_file

from common.device import default_dtype, describe_dtype_choice, parse_dtype
from common.errors import InvalidArgumentError
from common.fs import atomic_write
from llm.config import ModelConfig
from llm.families import FAMILIES
from llm.model import CausalLM
from llm.safetensors_io import (
    INDEX_FILE,
    SINGLE_FILE,
    TensorInfo,
    mappable,
    mapped,
    open_mapped,
    read_headers,
    read_into,
    read_tensor,
)

log = logging.getLogger("pqrag.engine")

_PER_EXPERT = re.compile(
    r"^(model\.layers\.\d+)\.(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)\.weight$"
)
_FUSED = re.compile(r"^(model\.layers\.\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")
_MOE_PART = re.compile(r"^(model\.layers\.\d+)\.mlp\.(gate\.weight|shared_expert\..+|shared_expert_gate\.weight)$")
_STACKED = {"w1": "w1", "w3": "w3", "w2": "w2", "gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


@dataclass(frozen=True)
class Target:
    """Where (part of) a stored tensor goes: a parameter, one expert's row of a stacked parameter, or a half of the
    source's second-to-last dim (transformers 5's fused gate_up_proj)."""

    param: str
    expert: int | None = None
    half: int | None = None  # 0: rows [0, n/2) of dim -2, 1: rows [n/2, n)


def targets(name: str) -> list[Target]:
    """The parameters of model.py a stored tensor fills (usually one)."""
    if m := _PER_EXPERT.match(name):
        return [Target(f"{m[1]}.block_sparse_moe.experts.{_STACKED[m[3]]}", expert=int(m[2]))]
    if m := _FUSED.match(name):
        prefix = f"{m[1]}.block_sparse_moe.experts"
        if m[2] == "down_proj":
            return [Target(f"{prefix}.w2")]
        return [Target(f"{prefix}.w1", half=0), Target(f"{prefix}.w3", half=1)]  # gate rows first, then up rows
    if m := _MOE_PART.match(name):
        return [Target(f"{m[1]}.block_sparse_moe.{m[2]}")]
    return [Target(name)]


def _part(t: torch.Tensor, target: Target) -> torch.Tensor:
    if target.half is None:
        return t
    return t.chunk(2, dim=-2)[target.half]


def _expected(model: CausalLM) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())  # a tied head appears once, as the embedding


class _Filler:
    """Checks and records which parameters (and experts) the stored tensors filled."""

    def __init__(self, params: dict[str, torch.Tensor], config: ModelConfig, where: str):
        self.params, self.config, self.where = params, config, where
        self.done: set[str] = set()
        self.experts: dict[str, set[int]] = defaultdict(set)
        self.unexpected: list[str] = []

    def dest(self, name: str, target: Target, shape: tuple[int, ...]) -> torch.Tensor | None:
        if target.param == "lm_head.weight" and self.config.tie_word_embeddings:
            return None  # tied: the embedding is the head (some checkpoints store both)
        p = self.params.get(target.param)
        if p is None:
            self.unexpected.append(name)
            return None
        if target.expert is not None:
            if not 0 <= target.expert < p.shape[0]:
                raise InvalidArgumentError(
                    f"{self.where}: {name} is expert {target.expert}, config.json has {self.config.num_experts} experts"
                )
            self.experts[target.param].add(target.expert)
            p = p[target.expert]
        else:
            self.done.add(target.param)
        want = tuple(shape) if target.half is None else (*shape[:-2], shape[-2] // 2, shape[-1])
        if tuple(p.shape) != want:
            c = self.config
            shape_of = f"{c.model_type}, {c.num_experts} experts" if c.num_experts else f"{c.model_type}, dense"
            raise InvalidArgumentError(
                f"{self.where}: {name} has shape {tuple(want)}, but config.json ({shape_of}) needs {target.param} "
                f"{tuple(p.shape)}"
            )
        return p

    def check(self) -> None:
        for param, seen in self.experts.items():
            if len(seen) != self.params[param].shape[0]:
                raise InvalidArgumentError(
                    f"{self.where}: {param} found experts {sorted(seen)}, config.json has {self.config.num_experts}"
                )
            self.done.add(param)
        missing = sorted(set(self.params) - self.done)
        if missing or self.unexpected:
            raise InvalidArgumentError(
                f"checkpoint {self.where} does not match its config.json (model_type {self.config.model_type!r}): "
                f"missing {missing[:5]}, unexpected {sorted(self.unexpected)[:5]}"
            )


def checkpoint_dtype(infos: dict[str, TensorInfo]) -> torch.dtype:
    """The dtype most of a checkpoint's floating-point weights are stored in."""
    counts: Counter[torch.dtype] = Counter()
    for info in infos.values():
        if info.dtype.is_floating_point:
            counts[info.dtype] += info.numel
    return counts.most_common(1)[0][0] if counts else torch.float32


def auto_dtype(stored: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype a checkpoint runs in when none is asked for: common.device.default_dtype (float32 narrowed to
    bfloat16 on a GPU and on a CPU with native bf16, bfloat16 kept as stored, float32 on other CPUs)."""
    return default_dtype(device, stored)


def load_model(
    path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype | str | None = None
) -> CausalLM:
    """A CausalLM from a Hugging Face-style checkpoint directory of any supported family, in eval mode, on device, in
    dtype (a torch.dtype or its name; None / "auto": auto_dtype of the stored one, logged with the reason). Peak
    memory: the parameters plus the largest single tensor."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise InvalidArgumentError(
            f"checkpoint path {path!r} is not a directory (expected config.json + *.safetensors)"
        )
    config = ModelConfig.load(path)
    infos = read_headers(path)
    device = torch.device(device)
    stored = checkpoint_dtype(infos)
    auto = dtype is None or dtype == "auto"
    dtype = parse_dtype(dtype, device, stored)
    why = describe_dtype_choice(device, stored) if auto else f"{str(dtype).removeprefix('torch.')} (asked for)"
    log.info("%s runs in %s on %s", path, why, device)
    with torch.device("meta"):
        model = CausalLM(config)
    _allocate(model, device, dtype)
    filler = _Filler(_expected(model), config, path)
    by_file: dict[str, list[tuple[str, TensorInfo]]] = defaultdict(list)
    for name, info in infos.items():
        by_file[info.file].append((name, info))
    with torch.no_grad():
        for file, entries in by_file.items():
            mm = open_mapped(file) if device.type == "cpu" else None
            with open(file, "rb", buffering=0) as f:
                for name, info in sorted(entries, key=lambda e: e[1].start):  # sequential reads
                    _load_tensor(f, mm, name, info, filler)
    filler.check()
    return model.eval()


def _allocate(model: CausalLM, device: torch.device, dtype: torch.dtype) -> None:
    """Replace the meta parameters by uninitialised ones on device in dtype, once each (a tied weight stays tied).
    Plain torch.empty: Module.to_empty would route meta tensors through torch's Python decompositions, whose
    first import costs seconds and ~150 MB."""
    new: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if id(p) not in new:
                new[id(p)] = torch.nn.Parameter(torch.empty(p.shape, dtype=dtype, device=device), p.requires_grad)
            module.register_parameter(name, new[id(p)])
    assert not any(b.is_meta for b in model.buffers())


def _load_tensor(f, mm: mmap.mmap | None, name: str, info: TensorInfo, filler: _Filler) -> None:
    tgts = targets(name)
    if len(tgts) == 1 and tgts[0].half is None:
        dest = filler.dest(name, tgts[0], info.shape)
        if dest is None:
            return
        if mm is not None and tgts[0].expert is None and dest.dtype == info.dtype and mappable(info):
            dest.data = mapped(mm, info)  # used as stored: the parameter is the file's map (a tie stays a tie)
        else:
            read_into(f, info, dest)
        return
    whole = read_tensor(f, info)  # a fused tensor split over two parameters: staged once
    for target in tgts:
        dest = filler.dest(name, target, info.shape)
        if dest is not None:
            dest.copy_(_part(whole, target))


def hf_to_internal(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Stored (Hugging Face) names -> this module's state_dict names, for tensors already in memory (e.g. a
    transformers model's state_dict()); experts stacked."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)
    for name, t in tensors.items():
        for target in targets(name):
            if target.expert is not None:
                experts[target.param][target.expert] = t
            else:
                out[target.param] = _part(t, target)
    for param, per in experts.items():
        if sorted(per) != list(range(config.num_experts)):
            raise InvalidArgumentError(f"{param}: found experts {sorted(per)}, config has {config.num_experts}")
        out[param] = torch.stack([per[e] for e in range(config.num_experts)])
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)  # tied: the embedding is the head (transformers omits it on save)
    return out


def internal_to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """This module's state_dict -> the family's stored names (per-expert tensors; contiguous, ready for safetensors)."""
    fam = FAMILIES[config.model_type]
    stored = dict(zip(("w1", "w3", "w2"), fam.expert_names))
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        layer, sep, rest = name.partition(".block_sparse_moe.")
        if not sep:
            out[name] = t.contiguous()
        elif rest in ("experts.w1", "experts.w2", "experts.w3"):
            w = stored[rest.rsplit(".", 1)[1]]
            for e in range(t.shape[0]):
                out[f"{layer}.{fam.moe_module}.experts.{e}.{w}.weight"] = t[e].contiguous()
        else:
            out[f"{layer}.{fam.moe_module}.{rest}"] = t.contiguous()
    return out


def load_state_dict(path: str | os.PathLike, config: ModelConfig | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (single file or shards), mapped to this module's names, on CPU, in
    their stored dtype."""
    path = os.fspath(path)
    config = config or ModelConfig.load(path)
    tensors: dict[str, torch.Tensor] = {}
    for name, info in read_headers(path).items():
        with open(info.file, "rb", buffering=0) as f:
            tensors[name] = read_tensor(f, info)
    return hf_to_internal(tensors, config)


def save_model(
    model: CausalLM, path: str | os.PathLike, dtype: torch.dtype | None = None, max_shard_bytes: int | None = None
) -> None:
    """Write config.json and model.safetensors (or shards + model.safetensors.index.json when the weights exceed
    max_shard_bytes) with the family's names; `AutoModelForCausalLM.from_pretrained(path)` loads it.
    Each file is written atomically: a crash leaves it old or new, never torn."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    config = model.config
    state = {k: v.detach().to("cpu", dtype or v.dtype) for k, v in model.state_dict().items()}
    tensors = internal_to_hf(state, config)
    config.save(path, dtype=str(next(iter(tensors.values())).dtype).removeprefix("torch."))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        _save_safetensors(tensors, os.path.join(path, SINGLE_FILE))
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
    with atomic_write(os.path.join(path, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)


def _save_safetensors(tensors: dict[str, torch.Tensor], file: str) -> None:
    """save_file, atomically: safetensors writes the temporary file by its name (no second copy of the weights in
    memory, as safetensors.torch.save's bytes would be); atomic_write then fsyncs it and renames it into place."""
    with atomic_write(file) as f:
        save_file(tensors, f.name, metadata={"format": "pt"})
