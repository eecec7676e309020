"""Train the MoE generator (or a dense baseline) from text: tokenizer, shards, AdamW loop, eval, checkpoints, export.

    python -m llm.train --data docs/ notes.jsonl --out out/run1                 # laptop CPU defaults (preset small)
    python -m llm.train --pydoc --out out/pydoc --max-steps 1000                 # the demo generator (demo_config)
    python -m llm.train --config train.toml --out out/run1 --resume              # continue after an interruption
    python -m llm.train --init-from out/pydoc --data sft.jsonl --out out/sft     # fine-tune an exported model
    torchrun --nproc_per_node 4 -m llm.train --data corpus/ --out out/ddp        # DDP, one process per GPU
    pqrag train ...                                                              # the same, from the service CLI

Outputs in --out: tokenizer.json (+ tokenizer_config.json), data/{train,val}.bin token shards, checkpoint.pt
(model, optimizer, schedule, data position, RNG states; replaced atomically), metrics.jsonl (one line per step),
loss.png, and at the end config.json + model.safetensors in Hugging Face Mixtral layout, so the directory loads with
`llm.checkpoint.load_model(out)` and with `transformers.AutoModelForCausalLM.from_pretrained(out)`.

Loss = cross-entropy + aux_loss_coef * load-balancing loss + z_loss_coef * router z-loss. The load-balancing loss
takes its expert counts f_e over the global micro-batch (all-reduced across DDP ranks) and its router
probabilities P_e over the local tokens: DDP's gradient average then equals the gradient of the single-process
loss on the whole batch, so 1 process and N processes with the same global batch train the same model.

Structure follows nanoGPT's train.py: config -> DDP setup -> data -> model/optimizer -> (resume) -> loop.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from llm.config import ModelConfig, get_config
from llm.data import BatchSampler, CorpusError, CorpusSpec, Shards, build_shards, tokenizer_hash, train_tokenizer
from llm.model import CausalLM, cross_entropy_loss, cross_entropy_sum
from llm.moe import router_z_loss
from llm.tokenizer import SPECIAL_TOKENS, Tokenizer
from llm.train_config import TrainConfig, config_from_dict, load_toml

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
PLOT = "loss.png"
CHECKPOINT_FORMAT = 1


# ---- command line -------------------------------------------------------------------------------------------------


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llm.train",
        description="Train the pqrag MoE generator. Options override --config FILE.toml, which overrides defaults.",
    )
    S = argparse.SUPPRESS  # only options actually given override the TOML file
    p.add_argument("--config", default=None, help="TOML file of TrainConfig keys ([model] table for the model)")
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", default=S, metavar="PATH", help="files/folders: .txt .md .jsonl .json .html")
    g.add_argument(
        "--from-collection",
        dest="from_collection",
        default=S,
        metavar="NAME",
        help="train on the documents of this pqrag collection",
    )
    g.add_argument("--data-dir", dest="data_dir", default=S, help="pqrag data directory of --from-collection")
    g.add_argument(
        "--pydoc", action="store_true", default=S, help="train on Python's docs (pydoc_data topics + stdlib docstrings)"
    )
    g.add_argument("--tokenizer", default=S, help="reuse this tokenizer.json instead of training a BPE")
    g.add_argument("--vocab-size", dest="vocab_size", type=int, default=S, help="BPE vocabulary to train")
    g.add_argument("--out", default=S, help="output directory (default out/train)")
    g = p.add_argument_group("model and schedule")
    g.add_argument("--preset", default=S, help="model preset: tiny, small (default), small-dense")
    g.add_argument(
        "--init-from",
        dest="init_from",
        default=S,
        metavar="DIR",
        help="fine-tune: start from this exported model's weights and tokenizer (fresh optimizer, step 0)",
    )
    g.add_argument(
        "--model",
        action="append",
        default=S,
        metavar="KEY=VALUE",
        help="ModelConfig override, e.g. --model num_experts=1 (repeatable)",
    )
    g.add_argument("--seq-len", dest="seq_len", type=int, default=S)
    g.add_argument(
        "--train-on-prompt",
        dest="train_on_prompt",
        action="store_true",
        default=S,
        help="chat records: train on every token, not only the assistant's turns",
    )
    g.add_argument("--batch-size", dest="batch_size", type=int, default=S, help="sequences per micro-step (global)")
    g.add_argument("--grad-accum", dest="grad_accum", type=int, default=S)
    g.add_argument("--max-steps", dest="max_steps", type=int, default=S)
    g.add_argument("--lr", type=float, default=S)
    g.add_argument("--warmup-steps", dest="warmup_steps", type=int, default=S)
    g.add_argument("--lr-decay-steps", dest="lr_decay_steps", type=int, default=S)
    g.add_argument("--aux-loss-coef", dest="aux_loss_coef", type=float, default=S)
    g.add_argument("--z-loss-coef", dest="z_loss_coef", type=float, default=S)
    g.add_argument("--eval-interval", dest="eval_interval", type=int, default=S)
    g.add_argument("--eval-batches", dest="eval_batches", type=int, default=S)
    g.add_argument("--checkpoint-interval", dest="checkpoint_interval", type=int, default=S)
    g.add_argument("--sample-tokens", dest="sample_tokens", type=int, default=S)
    g = p.add_argument_group("system")
    g.add_argument("--device", default=S, help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--dtype", default=S, choices=["auto", "fp32", "bf16"])
    g.add_argument("--compile", action="store_true", default=S, help="torch.compile the model")
    g.add_argument("--threads", type=int, default=S, help="torch CPU threads (0: torch's default)")
    g.add_argument("--seed", type=int, default=S)
    g.add_argument("--resume", action="store_true", default=S, help="continue from OUT/checkpoint.pt")
    g.add_argument("--quiet", action="store_true", default=S, help="no progress bar")
    return p


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)  # 4 -> int, 1e-3 -> float, true -> bool
    except json.JSONDecodeError:
        return text


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    args = vars(build_arg_parser().parse_args(argv))
    path = args.pop("config")
    base = load_toml(path).to_dict() if path else {}
    if "model" in args:  # ["k=v", ...] merged over the TOML [model] table
        model = dict(base.get("model", {}))
        for item in args.pop("model"):
            if "=" not in item:
                raise ValueError(f"--model expects KEY=VALUE, got {item!r}")
            k, v = item.split("=", 1)
            model[k.strip()] = _parse_value(v.strip())
        args["model"] = model
    return config_from_dict({**base, **args}, where="command line")


# ---- distributed --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(cfg: TrainConfig) -> DistInfo:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: join the group (NCCL on CUDA, gloo on CPU), one device per rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise ValueError(f"device={cfg.device!r} but CUDA is not available")
    if world <= 1:
        device = torch.device(
            "cuda" if cfg.device == "auto" and want_cuda else ("cpu" if cfg.device == "auto" else cfg.device)
        )
        return DistInfo(device=device)
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if want_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(
        backend="nccl" if want_cuda else "gloo",
        rank=rank,
        world_size=world,
        **({"device_id": device} if want_cuda else {}),
    )
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=device)


def _all_reduce(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def _broadcast_error(message: str | None, info: DistInfo) -> None:
    """Rank 0 prepares the data; if it failed, every rank raises the same error instead of hanging in a barrier."""
    if info.enabled:
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message:
        raise CorpusError(message)


# ---- data ---------------------------------------------------------------------------------------------------------


def prepare_tokenizer_and_shards(
    cfg: TrainConfig, model_cfg: ModelConfig, spec: CorpusSpec, out: Path, info: DistInfo
) -> tuple[Tokenizer, Shards]:
    """Rank 0: load or train the tokenizer (saved to out/tokenizer.json), tokenize once into out/data/. The other
    ranks wait, then open the same files."""
    # Chat records start on sequence boundaries (see build_shards). Only files can hold them: pydoc and
    # collection corpora keep their unaligned shard key, so their checkpoints stay resumable.
    align = cfg.seq_len if spec.paths else 0
    assistant_only = bool(spec.paths) and not cfg.train_on_prompt
    error = None
    if info.is_main:
        try:
            if cfg.resume:
                tok = Tokenizer.from_file(out)  # the run's own tokenizer: the checkpoint's vocabulary
            elif cfg.tokenizer or cfg.init_from:
                tok = Tokenizer.from_file(cfg.tokenizer or cfg.init_from)  # an init model's embedding rows fit it
            else:
                # The tiny preset's 256-token vocabulary cannot hold 256 bytes + the specials; give it room.
                vocab = cfg.vocab_size or max(model_cfg.vocab_size, 256 + len(SPECIAL_TOKENS) + 249)
                tok = train_tokenizer(spec.texts(), vocab_size=vocab)
            if tok.eos_id is None:
                raise ValueError(f"tokenizer {cfg.tokenizer!r} has no EOS token to separate documents")
            if not cfg.resume:
                tok.save(out)
            build_shards(
                spec.texts,
                tok,
                out / "data",
                min_val_tokens=cfg.seq_len + 1,
                val_fraction=cfg.val_fraction,
                fingerprint=spec.fingerprint(),
                align=align,
                assistant_only=assistant_only,
            )
        except (ValueError, OSError) as exc:
            if not info.enabled:
                raise
            error = str(exc)
    _broadcast_error(error, info)
    tok = Tokenizer.from_file(out)
    shards = build_shards(
        spec.texts,
        tok,
        out / "data",
        min_val_tokens=cfg.seq_len + 1,
        val_fraction=cfg.val_fraction,
        fingerprint=spec.fingerprint(),
        align=align,
        assistant_only=assistant_only,
    )  # reuses rank 0's files
    return tok, shards


# ---- optimizer, schedule, losses ----------------------------------------------------------------------------------


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (attention, experts, router, an untied head); not norms, biases or embeddings: decaying
    rare tokens' embeddings towards 0 only because they are rarely seen hurts them (nanoGPT, Llama recipes)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # a tied weight is yielded once, under embed_tokens
        if not p.requires_grad:
            continue
        if p.dim() < 2 or "embed_tokens" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr for 0-based optimizer step `step`: linear warm-up, then cosine to min_lr_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    decay_steps = cfg.lr_decay_steps or cfg.max_steps
    progress = min(max(step - cfg.warmup_steps, 0) / max(decay_steps - cfg.warmup_steps, 1), 1.0)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def router_losses(
    router_logits: list[torch.Tensor], config: ModelConfig, info: DistInfo
) -> tuple[torch.Tensor, torch.Tensor]:
    """(load-balancing loss, per-layer assignment counts (L, E)) of one micro-batch.

    Same value as moe.load_balancing_loss on the global micro-batch: num_experts * sum_e f_e * P_e with f_e (top-k
    assignments per token) all-reduced over ranks and P_e (mean router probability) local; see the module doc."""
    E, k = config.num_experts, config.num_experts_per_tok
    logits = torch.stack([r.float() for r in router_logits])  # (L, N, E)
    probs = torch.softmax(logits, dim=-1)
    selected = torch.topk(probs, k, dim=-1).indices  # (L, N, k)
    with torch.no_grad():
        counts = F.one_hot(selected, E).sum(dim=(1, 2)).float()  # (L, E) assignments per layer and expert
        global_counts = _all_reduce(counts.clone(), info)
        tokens = logits.shape[0] * logits.shape[1] * info.world_size  # all layers' tokens, all ranks
        f = global_counts.sum(0) / tokens  # (E,) sums to k
    P = probs.reshape(-1, E).mean(0)  # (E,)
    return E * torch.sum(f * P), global_counts


# ---- eval and sampling --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, shards: Shards, cfg: TrainConfig, info: DistInfo, autocast, ignore_id: int | None = None
) -> float:
    """Mean next-token CE over the first eval_batches * batch_size val sequences (the same ones every time),
    targets equal to ignore_id (alignment PAD) not scored. model is the unwrapped module: a DDP forward could
    wait on buffer syncs that ranks without a slice skip."""
    model.eval()
    n = min(shards.val.num_sequences(cfg.seq_len), cfg.eval_batches * cfg.batch_size)
    total = torch.zeros(2, dtype=torch.float64, device=info.device)  # (sum of losses, tokens)
    for start in range(0, n, cfg.batch_size):
        idx = np.arange(start, min(start + cfg.batch_size, n))
        local = np.array_split(idx, info.world_size)[info.rank]  # ranks split the batch; some may get none
        if len(local) == 0:
            continue
        x, y = (t.to(info.device) for t in shards.val.batch(local, cfg.seq_len, ignore_id))
        with autocast:
            logits = model(x)
        loss, counted = cross_entropy_sum(logits, y)  # PAD and masked prompt targets are not scored
        total += torch.stack([loss.double(), counted.double()])
    _all_reduce(total, info)
    model.train()
    return float(total[0] / total[1])


@torch.no_grad()
def greedy_sample(model: CausalLM, tok: Tokenizer, prompt: str, n: int, device: torch.device, autocast) -> str:
    """Greedy continuation of prompt (after an EOS, as documents start in training), no KV cache: a short
    progress check, not the serving path."""
    model.eval()
    ids = [tok.eos_id, *tok.encode(prompt)]
    max_len = model.config.max_position_embeddings
    for _ in range(n):
        x = torch.tensor([ids[-max_len:]], device=device)
        with autocast:
            nxt = int(model(x)[0, -1].argmax())
        if nxt == tok.eos_id:
            break
        ids.append(nxt)
    model.train()
    return tok.decode(ids[1:])


# ---- checkpoints --------------------------------------------------------------------------------------------------


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, fsync, then os.replace: a kill mid-write leaves the previous checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_TOKENIZER_FIELDS = frozenset({"vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"})


def check_resume_compatible(
    ckpt: dict[str, Any], model_cfg: ModelConfig, cfg: TrainConfig, path: Path, ignore: frozenset[str] = frozenset()
) -> None:
    """A checkpoint only resumes into the same model and sequence length (the data position counts sequences)."""
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {ckpt.get('format')!r}, this trainer reads {CHECKPOINT_FORMAT}")
    now = dataclasses.asdict(model_cfg)
    diffs = [
        f"{k}: checkpoint {v!r} != now {now.get(k)!r}"
        for k, v in ckpt["model_config"].items()
        if k not in ignore and now.get(k) != v
    ]
    if diffs:
        raise ValueError(
            f"cannot resume from {path}: the model config differs ({'; '.join(diffs)}); "
            "use the same --preset/--model/[model] settings, or a new --out"
        )
    if ckpt["train_config"]["seq_len"] != cfg.seq_len:
        raise ValueError(
            f"cannot resume from {path}: seq_len {cfg.seq_len} != checkpoint's "
            f"{ckpt['train_config']['seq_len']} (the data position counts sequences of that length)"
        )


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_losses(metrics_path: Path, png: Path, title: str = "") -> bool:
    """Train and val loss against step (matplotlib, Agg); False (with a note) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; skipping the loss plot", file=sys.stderr)
        return False
    rows = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [r["ce_loss"] for r in rows], lw=0.8, alpha=0.7, label="train (CE)")
    val = [r for r in rows if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or str(metrics_path.parent))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


# ---- the model to train -------------------------------------------------------------------------------------------

# ModelConfig fields that set parameter shapes (or tie them): an --init-from model keeps them. The others
# (max_position_embeddings, rope_theta, num_experts_per_tok, ...) may be overridden with --model.
_SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "intermediate_size",
    "num_experts",
    "tie_word_embeddings",
)


def resolve_model_config(cfg: TrainConfig) -> tuple[ModelConfig, ModelConfig | None]:
    """(config of the model to train, config of the --init-from model or None).

    Without init_from: the preset (default small) with the --model overrides. With it: the init model's config
    with the --model overrides, which must keep every shape; a --preset must have the init model's shapes
    (vocab_size aside: a trained BPE may stop short of the preset's). ValueError names the offending fields."""
    if not cfg.init_from:
        return get_config(cfg.preset or "small", **cfg.model), None
    init_cfg = ModelConfig.load(cfg.init_from)
    if cfg.preset:
        preset = get_config(cfg.preset)
        diffs = [
            f"{k}: preset {getattr(preset, k)!r} != model {getattr(init_cfg, k)!r}"
            for k in _SHAPE_FIELDS
            if k != "vocab_size" and getattr(preset, k) != getattr(init_cfg, k)
        ]
        if diffs:
            raise ValueError(
                f"--preset {cfg.preset!r} does not match the --init-from model {cfg.init_from!r} "
                f"({'; '.join(diffs)}); drop --preset to use the model's own shapes"
            )
    diffs = [
        f"{k}={v!r} (model: {getattr(init_cfg, k)!r})"
        for k, v in cfg.model.items()
        if k in _SHAPE_FIELDS and v != getattr(init_cfg, k)
    ]
    if diffs:
        raise ValueError(
            f"--model {', '.join(diffs)} would change the shapes of the --init-from model's weights; "
            f"only {sorted(set(dataclasses.asdict(init_cfg)) - set(_SHAPE_FIELDS))} may change"
        )
    return init_cfg.replace(**cfg.model), init_cfg


def load_init_state(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The --init-from model's weights (this module's state_dict names, CPU fp32), checked against its config,
    and its tokenizer's presence: read before any data work so a bad directory fails in seconds."""
    from llm.checkpoint import load_model

    if not cfg.tokenizer and not os.path.exists(os.path.join(cfg.init_from, "tokenizer.json")):
        raise ValueError(f"--init-from {cfg.init_from!r} has no tokenizer.json; pass the model's --tokenizer")
    return load_model(cfg.init_from).state_dict()


# ---- the loop -----------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a training run; returns a summary. Raises ValueError (CorpusError) on bad input, before
    any long work."""
    cfg.validate()
    # ---- checks that need no data: fail in seconds, not after tokenizing ----
    if cfg.init_from and not os.path.isdir(cfg.init_from):
        raise ValueError(
            f"--init-from {cfg.init_from!r} is not a directory (an exported model: config.json, "
            "model.safetensors, tokenizer.json)"
        )
    model_cfg, init_cfg = resolve_model_config(cfg)
    if cfg.seq_len > model_cfg.max_position_embeddings:
        where = "the --init-from model" if init_cfg else f"preset {cfg.preset or 'small'!r}"
        raise ValueError(
            f"seq_len={cfg.seq_len} > max_position_embeddings={model_cfg.max_position_embeddings} of "
            f"{where}; lower --seq-len or raise [model] max_position_embeddings"
        )
    spec = CorpusSpec(paths=cfg.data, collection=cfg.from_collection, data_dir=cfg.data_dir, pydoc=cfg.pydoc)
    spec.validate()
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    ckpt = None
    if cfg.resume:
        if not ckpt_path.exists():
            raise ValueError(f"--resume: no {CHECKPOINT} in {out}")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        # The vocabulary comes from the tokenizer (loaded later); everything else can be checked now.
        check_resume_compatible(ckpt, model_cfg, cfg, ckpt_path, ignore=_TOKENIZER_FIELDS)
    elif ckpt_path.exists():
        raise ValueError(
            f"{out} already holds a training run ({CHECKPOINT}); pass --resume to continue it, or choose another --out"
        )
    # A resumed fine-tuning run continues from its own checkpoint; the init weights only seed step 0.
    init_state = load_init_state(cfg) if init_cfg is not None and ckpt is None else None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    info = setup_distributed(cfg)
    try:
        return _train(cfg, model_cfg, spec, out, ckpt, info, init_cfg, init_state)
    finally:
        if info.enabled:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    spec: CorpusSpec,
    out: Path,
    ckpt: dict | None,
    info: DistInfo,
    init_cfg: ModelConfig | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the world size {info.world_size}")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    tok, shards = prepare_tokenizer_and_shards(cfg, model_cfg, spec, out, info)
    if init_cfg is not None and tok.vocab_size != init_cfg.vocab_size:
        raise ValueError(
            f"the tokenizer has {tok.vocab_size} tokens but the --init-from model's embedding has "
            f"{init_cfg.vocab_size} rows; use the model's own tokenizer.json"
        )
    model_cfg = model_cfg.replace(
        vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, bos_token_id=tok.bos_id, pad_token_id=tok.pad_id
    )
    if ckpt is not None:
        check_resume_compatible(ckpt, model_cfg, cfg, out / CHECKPOINT)
        if ckpt["tokenizer_hash"] != tokenizer_hash(tok):
            raise ValueError(f"cannot resume: {out}/tokenizer.json changed since the checkpoint was written")
        if ckpt["data_key"] != shards.meta["key"]:
            raise ValueError(
                "cannot resume: the corpus changed since the checkpoint (the saved data position would "
                "point into different shards); pass the same data, or start a new --out"
            )
    n_train = shards.train.num_sequences(cfg.seq_len)
    if n_train < 1:
        raise CorpusError(f"the training split has {len(shards.train)} tokens, fewer than seq_len + 1")

    # ---- model, optimizer, schedule ----
    torch.manual_seed(cfg.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
    raw_model = CausalLM(model_cfg).to(info.device)
    if init_state is not None:
        raw_model.load_state_dict(init_state)  # strict: resolve_model_config kept every shape
        del init_state
    use_fused = info.device.type == "cuda"
    optimizer = torch.optim.AdamW(
        param_groups(raw_model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=use_fused
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    sampler = BatchSampler(n_train, cfg.batch_size, cfg.seed)
    step, tokens_seen, elapsed_before = 0, 0, 0.0
    if ckpt is not None:
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        sampler.load_state_dict(ckpt["sampler"])
        set_rng_state(ckpt["rng"])
        step, tokens_seen, elapsed_before = ckpt["step"], ckpt["tokens"], ckpt["elapsed_s"]
        del ckpt
        # The next step's lr under this run's schedule (max_steps / lr_decay_steps may have been raised to extend
        # the run); the same value LambdaLR computes, so an unchanged schedule resumes bit for bit.
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * lr_factor(step, cfg)
    fwd_model: torch.nn.Module = torch.compile(raw_model) if cfg.compile else raw_model
    model = fwd_model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)

    bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and info.device.type == "cuda")
    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    per_rank = cfg.batch_size // info.world_size
    E = model_cfg.num_experts
    use_aux = E > 1 and cfg.aux_loss_coef > 0

    metrics_path = out / METRICS
    if info.is_main:
        kept = [r for r in read_metrics(metrics_path) if r["step"] <= step]  # drop steps after the checkpoint
        with open(metrics_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        with open(out / "train_config.json", "w") as f:
            json.dump(cfg.to_dict(), f, indent=2)
            f.write("\n")

    def save_checkpoint() -> None:
        atomic_save(
            {
                "format": CHECKPOINT_FORMAT,
                "step": step,
                "tokens": tokens_seen,
                "elapsed_s": elapsed,
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "sampler": sampler.state_dict(),
                "rng": rng_state(),
                "model_config": dataclasses.asdict(model_cfg),
                "train_config": cfg.to_dict(),
                "tokenizer_hash": tokenizer_hash(tok),
                "data_key": shards.meta["key"],
            },
            out / CHECKPOINT,
        )

    from tqdm import tqdm

    bar = tqdm(
        total=cfg.max_steps,
        initial=step,
        disable=cfg.quiet or not info.is_main,
        dynamic_ncols=True,
        unit="step",
        file=sys.stderr,
    )
    if info.is_main and step == 0:
        print(
            f"model: {raw_model.num_params() / 1e6:.2f}M params ({model_cfg.num_params(active=True) / 1e6:.2f}M "
            f"active/token), vocab {tok.vocab_size}; data: {len(shards.train):,} train / {len(shards.val):,} val "
            f"tokens; {cfg.batch_size * cfg.grad_accum * cfg.seq_len:,} tokens/step on {info.world_size} x "
            f"{info.device}",
            file=sys.stderr,
        )
    model.train()
    elapsed = elapsed_before
    last = {}
    with open(metrics_path, "a") if info.is_main else contextlib.nullcontext() as mf:
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            sums = torch.zeros(3, dtype=torch.float64)  # (loss, ce, aux) summed over micro-steps
            z_sum = 0.0
            counts = torch.zeros(model_cfg.num_layers, E)
            for micro in range(cfg.grad_accum):
                idx = sampler.next_indices()[info.rank * per_rank : (info.rank + 1) * per_rank]  # this rank's slice
                x, y = (
                    t.to(info.device, non_blocking=True)
                    for t in shards.train.batch(idx, cfg.seq_len, ignore_id=tok.pad_id)
                )
                sync = not info.enabled or micro == cfg.grad_accum - 1  # DDP all-reduces grads once per step
                with contextlib.nullcontext() if sync else model.no_sync():
                    with autocast:
                        logits, router_logits = model(x, return_router_logits=True)  # (B, T, V), [(B*T, E)] * L
                    ce = cross_entropy_loss(logits, y)
                    aux, c = router_losses(router_logits, model_cfg, info)
                    loss = ce + (cfg.aux_loss_coef * aux if use_aux else 0.0)
                    if cfg.z_loss_coef > 0:
                        z = router_z_loss(router_logits)
                        loss = loss + cfg.z_loss_coef * z
                        z_sum += z.item()
                    (loss / cfg.grad_accum).backward()
                sums += torch.tensor([loss.item(), ce.item(), aux.item()], dtype=torch.float64)
                counts += c.cpu()
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
                if cfg.grad_clip > 0
                else torch.zeros(())
            )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            sums = _all_reduce(sums.to(info.device), info).cpu() / (cfg.grad_accum * info.world_size)
            step_tokens = cfg.batch_size * cfg.grad_accum * cfg.seq_len
            tokens_seen += step_tokens
            dt = time.perf_counter() - t0
            elapsed += dt
            share = counts / counts.sum(dim=1, keepdim=True)  # (L, E) share of routed assignments per expert
            row = {
                "step": step,
                "loss": float(sums[0]),
                "ce_loss": float(sums[1]),
                "aux_loss": float(sums[2]),
                "lr": lr,
                "grad_norm": float(grad_norm),
                "tokens": tokens_seen,
                "tokens_per_s": step_tokens / dt,
                "elapsed_s": round(elapsed, 3),
                "epoch": round(sampler.epoch, 4),
                "expert_share": [[round(v, 4) for v in layer] for layer in share.tolist()],
            }
            if cfg.z_loss_coef > 0:
                row["z_loss"] = z_sum / cfg.grad_accum
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                row["val_loss"] = evaluate(fwd_model, shards, cfg, info, autocast, tok.pad_id)
                row["val_ppl"] = math.exp(min(row["val_loss"], 50.0))
                if info.is_main and cfg.sample_tokens > 0:
                    row["sample"] = greedy_sample(
                        raw_model, tok, cfg.sample_prompt, cfg.sample_tokens, info.device, autocast
                    )
                    bar.write(
                        f"step {step}: val_loss {row['val_loss']:.4f} (ppl {row['val_ppl']:.1f}) | {row['sample']!r}"
                    )
            if info.is_main:
                mf.write(json.dumps(row) + "\n")
                mf.flush()
                bar.set_postfix(
                    loss=f"{row['loss']:.3f}", lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_s']:.0f}", refresh=False
                )
                bar.update(1)
                if step % cfg.checkpoint_interval == 0 or step == cfg.max_steps:
                    save_checkpoint()
            last = row
    bar.close()

    # ---- export ----
    if info.is_main:
        from llm.checkpoint import save_model

        save_model(raw_model, out)  # config.json + model.safetensors (HF Mixtral names), fp32
        tok.save(out)
        base = f"from {Path(cfg.init_from).name}" if cfg.init_from else f"preset {cfg.preset or 'small'}"
        plot_losses(
            metrics_path, out / PLOT, title=f"{out.name}: {base}, {E} experts top-{model_cfg.num_experts_per_tok}"
        )
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()  # the export is on disk before any rank returns
    return {
        "out": str(out),
        "step": step,
        "loss": last.get("loss"),
        "val_loss": last.get("val_loss"),
        "tokens": tokens_seen,
        "elapsed_s": round(elapsed, 2),
        "params": raw_model.num_params(),
        "active_params": model_cfg.num_params(active=True),
    }


def demo_config(out: str = "out/pydoc", max_steps: int = 1000, **overrides: Any) -> TrainConfig:
    """The default demo generator: preset "small" (4 experts top-2, 4.99M params -> a 20 MB fp32 model.safetensors,
    under the 30 MB budget) on Python's docs (pydoc_data topics + stdlib docstrings, ~0.53M train tokens with the
    4096-token BPE). 1000 steps x 2048 tokens is ~3.9 epochs. Same as
        python -m llm.train --pydoc --preset small --out out/pydoc --max-steps 1000
    Measured on the 2-core dev VM: ~1,850 tokens/s with 1 thread on a loaded machine (1.1 s/step, ~19 min per
    1000 steps) and ~2,800 tokens/s for a bare step on 2 idle cores (~13 min); data prep adds ~30 s once."""
    cfg = TrainConfig(pydoc=True, preset="small", out=out, max_steps=max_steps, sample_prompt="The", **overrides)
    cfg.validate()
    return cfg


def train_demo_generator(out: str = "out/pydoc", max_steps: int = 1000, **overrides: Any) -> dict[str, Any]:
    """Train (or with resume=True continue) the default demo generator into `out`; see demo_config."""
    return train(demo_config(out, max_steps, **overrides))


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_config(argv)
        summary = train(cfg)
    except KeyboardInterrupt:
        print("interrupted; resume with --resume (from the last checkpoint)", file=sys.stderr)
        return 130
    except ValueError as exc:  # includes CorpusError: bad input, reported without a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
