"""The training loop, in nanoGPT's order: checks -> distributed set-up -> data -> model/optimizer -> (resume) ->
steps (with eval, logging, checkpoints) -> export.

    plan = plan_run(cfg)           # every check that needs no data (the layout too): bad input fails in seconds
    with distributed(cfg.device) as info:
        run = set_up(plan, info)   # tokenizer + shards (rank 0), model laid out (Parallelism), optimizer, checkpoint
        while run.progress.step < cfg.max_steps:
            row = train_step(run)  # grad_accum micro-steps, clip, one optimizer step -> the metrics row
            ...                    # eval / sample, log, checkpoint when due
        export(run)                # config.json + model.safetensors (HF Mixtral layout), tokenizer, loss.png
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.errors import InvalidArgumentError
from common.fs import atomic_write
from llm.config import ModelConfig
from llm.model import CausalLM
from llm.tokenizer import Tokenizer
from llm.train.checkpointing import (
    CHECKPOINT,
    Progress,
    check_resume_compatible,
    check_resume_data,
    checkpoint_to_resume,
    restore_checkpoint,
    save_checkpoint,
    sharded_run_state,
)
from llm.train.config import TrainConfig, demo_config
from llm.train.corpus import CorpusError, CorpusSpec
from llm.train.dataset import prepare_data
from llm.train.distributed import DistInfo, all_reduce, barrier, distributed
from llm.train.evaluation import evaluate, greedy_sample
from llm.train.loss import micro_batch_loss
from llm.train.metrics import METRICS, PLOT, MetricsLog, plot_losses, truncate_metrics
from llm.train.model_init import load_init_state, resolve_model_config
from llm.train.optim import build_optimizer, set_lr_for_step
from llm.train.parallel_dims import ParallelDims, plan_parallel_dims, world_size_from_env
from llm.train.parallelize import Parallelism
from llm.train.sampler import BatchSampler
from llm.train.sharded_checkpoint import save_sharded, tensor_state
from llm.train.shards import Shards, tokenizer_hash


@dataclass
class RunPlan:
    """What a run will do, decided and checked before any work (no data read, no process group)."""

    cfg: TrainConfig
    model_cfg: ModelConfig  # the preset's or the --init-from model's, with --model overrides
    init_cfg: ModelConfig | None  # the --init-from model's own config
    init_state: dict[str, torch.Tensor] | None  # its weights; None when resuming or training from scratch
    spec: CorpusSpec
    out: Path
    ckpt: dict[str, Any] | None  # the checkpoint to resume from
    dims: ParallelDims  # the layout over torchrun's processes


@dataclass
class Run:
    """A run's live state on one rank."""

    cfg: TrainConfig
    model_cfg: ModelConfig  # with the tokenizer's vocabulary and special ids
    info: DistInfo
    out: Path
    tok: Tokenizer
    shards: Shards
    par: Parallelism  # the layout: how the model is laid out, gradients synchronised, checkpoints written
    raw_model: CausalLM  # laid out by par (this rank's shards); what is checkpointed, sampled from and exported
    fwd_model: torch.nn.Module  # raw_model, compiled when cfg.compile (evaluation runs it)
    model: torch.nn.Module  # fwd_model, wrapped for the world (DDP); the training forward runs through it
    num_params: int  # of the whole model
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: BatchSampler
    autocast: contextlib.AbstractContextManager
    progress: Progress


# ---- before any work ----------------------------------------------------------------------------------------------


def plan_run(cfg: TrainConfig) -> RunPlan:
    """Every check that needs no data, so bad input fails in seconds, not after tokenizing."""
    cfg.validate()
    model_cfg, init_cfg = resolve_model_config(cfg)
    if cfg.seq_len > model_cfg.max_position_embeddings:
        where = "the --init-from model" if init_cfg else f"preset {cfg.preset or 'small'!r}"
        raise InvalidArgumentError(
            f"seq_len={cfg.seq_len} > max_position_embeddings={model_cfg.max_position_embeddings} of "
            f"{where}; lower --seq-len or raise [model] max_position_embeddings"
        )
    spec = CorpusSpec(paths=cfg.data, collection=cfg.from_collection, data_dir=cfg.data_dir, pydoc=cfg.pydoc)
    spec.validate()
    dims = plan_parallel_dims(cfg, model_cfg, world_size_from_env())
    out = Path(cfg.out)
    ckpt = checkpoint_to_resume(out, cfg, model_cfg)
    # A resumed fine-tuning run continues from its own checkpoint; the init weights only seed step 0.
    init_state = load_init_state(cfg) if init_cfg is not None and ckpt is None else None
    return RunPlan(cfg, model_cfg, init_cfg, init_state, spec, out, ckpt, dims)


# ---- set-up -------------------------------------------------------------------------------------------------------


def set_up_data(plan: RunPlan, info: DistInfo) -> tuple[Tokenizer, Shards, ModelConfig]:
    """The run's tokenizer and shards, and the model config completed by the tokenizer (vocabulary, special ids),
    checked against the --init-from model and the checkpoint."""
    cfg, out, ckpt = plan.cfg, plan.out, plan.ckpt
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    tok, shards = prepare_data(cfg, plan.model_cfg, plan.spec, out, info)
    if plan.init_cfg is not None and tok.vocab_size != plan.init_cfg.vocab_size:
        raise InvalidArgumentError(
            f"the tokenizer has {tok.vocab_size} tokens but the --init-from model's embedding has "
            f"{plan.init_cfg.vocab_size} rows; use the model's own tokenizer.json"
        )
    model_cfg = plan.model_cfg.replace(
        vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, bos_token_id=tok.bos_id, pad_token_id=tok.pad_id
    )
    if ckpt is not None:
        check_resume_compatible(ckpt, model_cfg, cfg, out / CHECKPOINT)
        check_resume_data(ckpt, tokenizer_hash(tok), shards.meta["key"], out)
    if shards.train.num_sequences(cfg.seq_len) < 1:
        raise CorpusError(f"the training split has {len(shards.train)} tokens, fewer than seq_len + 1")
    return tok, shards, model_cfg


def set_up(plan: RunPlan, info: DistInfo) -> Run:
    """Data (tokenizer and shards), then the model laid out over the ranks, the optimizer and sampler, restored from
    the checkpoint if any."""
    cfg, ckpt = plan.cfg, plan.ckpt
    bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and info.device.type == "cuda")
    par = Parallelism(plan.dims, info, bf16)
    tok, shards, model_cfg = set_up_data(plan, info)
    # Same init on every rank, the same as one process's (DDP also broadcasts rank 0's weights); each rank then
    # keeps its own part of it.
    torch.manual_seed(cfg.seed)
    raw_model = CausalLM(model_cfg).to(info.device)
    if plan.init_state is not None:
        raw_model.load_state_dict(plan.init_state)  # strict: resolve_model_config kept every shape
        plan.init_state = None
    num_params = raw_model.num_params()
    par.parallelize(raw_model, cfg.activation_checkpointing)
    optimizer, scheduler = build_optimizer(raw_model, cfg, info.device)
    sampler = BatchSampler(shards.train.num_sequences(cfg.seq_len), cfg.batch_size, cfg.seed)
    progress = Progress()
    if ckpt is not None:
        progress = restore_checkpoint(
            ckpt, model=raw_model, optimizer=optimizer, scheduler=scheduler, sampler=sampler, par=par
        )
        plan.ckpt = ckpt = None  # its tensors live in the model and optimizer now
        set_lr_for_step(optimizer, scheduler, progress.step, cfg)
    fwd_model: torch.nn.Module = torch.compile(raw_model) if cfg.compile else raw_model
    return Run(
        cfg=cfg,
        model_cfg=model_cfg,
        info=info,
        out=plan.out,
        tok=tok,
        shards=shards,
        par=par,
        raw_model=raw_model,
        fwd_model=fwd_model,
        model=par.wrap(fwd_model),
        num_params=num_params,
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=sampler,
        autocast=par.autocast(),
        progress=progress,
    )


# ---- one step -----------------------------------------------------------------------------------------------------


def train_step(run: Run) -> dict[str, Any]:
    """One optimizer step: grad_accum micro-steps over this rank's slice of each global batch, gradient clipping,
    the update; returns the step's metrics row (losses averaged over micro-steps and ranks)."""
    cfg, info, progress = run.cfg, run.info, run.progress
    t0 = time.perf_counter()
    lr = run.optimizer.param_groups[0]["lr"]
    per_rank = cfg.batch_size // info.world_size
    sums = torch.zeros(3, dtype=torch.float64)  # (loss, ce, aux) summed over micro-steps
    z_sum = 0.0
    counts = torch.zeros(())  # -> (L, E): assignments per MoE layer (a dense layer has no router) and expert
    for micro in range(cfg.grad_accum):
        idx = run.sampler.next_indices()[info.rank * per_rank : (info.rank + 1) * per_rank]  # this rank's slice
        x, y = (
            t.to(info.device, non_blocking=True)
            for t in run.shards.train.batch(idx, cfg.seq_len, ignore_id=run.tok.pad_id)
        )
        with run.par.grad_sync(run.model, last_micro_step=micro == cfg.grad_accum - 1):
            with run.autocast:
                logits, router_logits = run.model(x, return_router_logits=True)  # (B, T, V), [(B*T, E)] * L
            m = micro_batch_loss(logits, router_logits, y, run.model_cfg, cfg, info)
            if m.z is not None:
                z_sum += m.z.item()
            (m.loss / cfg.grad_accum).backward()
        sums += torch.tensor([m.loss.item(), m.ce.item(), m.aux.item()], dtype=torch.float64)
        counts = counts + m.counts.cpu()
    run.par.reduce_grads(run.raw_model)
    grad_norm = run.par.clip_grad_norm_(run.raw_model, cfg.grad_clip) if cfg.grad_clip > 0 else torch.zeros(())
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    progress.step += 1
    sums = all_reduce(sums.to(info.device), info).cpu() / (cfg.grad_accum * info.world_size)
    step_tokens = cfg.batch_size * cfg.grad_accum * cfg.seq_len
    progress.tokens += step_tokens
    dt = time.perf_counter() - t0
    progress.elapsed_s += dt
    share = counts / counts.sum(dim=1, keepdim=True)  # (L, E) share of routed assignments per expert
    row = {
        "step": progress.step,
        "loss": float(sums[0]),
        "ce_loss": float(sums[1]),
        "aux_loss": float(sums[2]),
        "lr": lr,
        "grad_norm": float(grad_norm),
        "tokens": progress.tokens,
        "tokens_per_s": step_tokens / dt,
        "elapsed_s": round(progress.elapsed_s, 3),
        "epoch": round(run.sampler.epoch, 4),
        "expert_share": [[round(v, 4) for v in layer] for layer in share.tolist()],
    }
    if cfg.z_loss_coef > 0:
        row["z_loss"] = z_sum / cfg.grad_accum
    return row


# ---- eval, logging, checkpoints -----------------------------------------------------------------------------------


def _due(step: int, interval: int, max_steps: int) -> bool:
    return step % interval == 0 or step == max_steps


def evaluate_into(run: Run, row: dict[str, Any], log: MetricsLog) -> None:
    """Add val_loss / val_ppl (every rank takes part) and, on rank 0, a greedy sample to the step's row (every rank
    samples along when the model is sharded)."""
    cfg, info, lockstep = run.cfg, run.info, run.par.dims.sharded
    row["val_loss"] = evaluate(run.fwd_model, run.shards, cfg, info, run.autocast, run.tok.pad_id, lockstep)
    row["val_ppl"] = math.exp(min(row["val_loss"], 50.0))
    if (info.is_main or lockstep) and cfg.sample_tokens > 0:
        sample = greedy_sample(
            run.raw_model,
            run.tok,
            cfg.sample_prompt,
            cfg.sample_tokens,
            info.device,
            run.autocast,
            info if lockstep else None,
        )
    run.par.reshard(run.raw_model)
    if info.is_main and cfg.sample_tokens > 0:
        row["sample"] = sample
        log.note(f"step {row['step']}: val_loss {row['val_loss']:.4f} (ppl {row['val_ppl']:.1f}) | {row['sample']!r}")


def checkpoint(run: Run) -> None:
    """Rank 0 writes checkpoint.pt (replicated layouts); every rank writes its shards (sharded layouts)."""
    state = dict(
        scheduler=run.scheduler,
        sampler=run.sampler,
        progress=run.progress,
        model_cfg=run.model_cfg,
        cfg=run.cfg,
        tokenizer_hash=tokenizer_hash(run.tok),
        data_key=run.shards.meta["key"],
    )
    if run.par.dims.sharded:
        tensors = tensor_state(run.raw_model, run.optimizer, run.par)
        save_sharded(run.out, run.progress.step, tensors, sharded_run_state(run.optimizer, **state), run.info)
        if run.info.is_main:
            (run.out / CHECKPOINT).unlink(missing_ok=True)  # a checkpoint.pt this run resumed from is older
    elif run.info.is_main:
        save_checkpoint(run.out / CHECKPOINT, model=run.raw_model, optimizer=run.optimizer, **state)


def start_record(run: Run) -> None:
    """Rank 0: metrics.jsonl without the steps after the checkpoint, and the run's train_config.json."""
    if not run.info.is_main:
        return
    truncate_metrics(run.out / METRICS, run.progress.step)
    with atomic_write(run.out / "train_config.json", "w") as f:
        json.dump(run.cfg.to_dict(), f, indent=2)
        f.write("\n")


def describe(run: Run) -> str:
    cfg, tok, shards = run.cfg, run.tok, run.shards
    return (
        f"model: {run.num_params / 1e6:.2f}M params ({run.model_cfg.num_params(active=True) / 1e6:.2f}M "
        f"active/token), vocab {tok.vocab_size}; data: {len(shards.train):,} train / {len(shards.val):,} val "
        f"tokens; {cfg.batch_size * cfg.grad_accum * cfg.seq_len:,} tokens/step on {run.info.world_size} x "
        f"{run.info.device}"
    )


def train_loop(run: Run) -> dict[str, Any]:
    """Steps up to cfg.max_steps; returns the last step's row ({} when there was nothing left to train)."""
    cfg, info = run.cfg, run.info
    start_record(run)
    last: dict[str, Any] = {}
    memory = run.par.memory_report(run.raw_model)  # every rank: the largest over the ranks
    with MetricsLog(run.out / METRICS, cfg.max_steps, run.progress.step, info.is_main, cfg.quiet) as log:
        if info.is_main and run.progress.step == 0:
            print(describe(run), file=sys.stderr)
        if info.is_main:
            print(memory, file=sys.stderr)
        run.model.train()
        while run.progress.step < cfg.max_steps:
            row = train_step(run)
            if _due(run.progress.step, cfg.eval_interval, cfg.max_steps):
                evaluate_into(run, row, log)
            log.log(row)
            if _due(run.progress.step, cfg.checkpoint_interval, cfg.max_steps):
                checkpoint(run)
            last = row
    return last


# ---- export -------------------------------------------------------------------------------------------------------


def full_model(run: Run) -> CausalLM | None:
    """The whole model on rank 0 (None elsewhere): raw_model itself, or gathered from the ranks' shards (every
    rank takes part) into a CPU CausalLM."""
    if not run.par.dims.sharded:
        return run.raw_model if run.info.is_main else None
    state = {}
    for name, p in run.raw_model.named_parameters():
        full = run.par.full_tensor(p)
        if run.info.is_main:
            state[name] = full.to("cpu", torch.float32)
    if not run.info.is_main:
        return None
    with torch.device("meta"):
        model = CausalLM(run.model_cfg)
    model.load_state_dict(state, strict=False, assign=True)  # named_parameters yields a tied weight once
    if run.model_cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    assert not any(p.is_meta for p in model.parameters())
    return model


def export(run: Run) -> None:
    """Rank 0 writes config.json + model.safetensors (HF Mixtral names, fp32), the tokenizer and loss.png; every
    rank returns only once they are on disk."""
    model = full_model(run)
    if run.info.is_main:
        from llm.checkpoint import save_model

        cfg, out = run.cfg, run.out
        save_model(model, out)
        run.tok.save(out)
        base = f"from {Path(cfg.init_from).name}" if cfg.init_from else f"preset {cfg.preset or 'small'}"
        E, k = run.model_cfg.num_experts, run.model_cfg.num_experts_per_tok
        plot_losses(out / METRICS, out / PLOT, title=f"{out.name}: {base}, {E} experts top-{k}")
    barrier(run.info)


def summary(run: Run, last: dict[str, Any]) -> dict[str, Any]:
    return {
        "out": str(run.out),
        "step": run.progress.step,
        "loss": last.get("loss"),
        "val_loss": last.get("val_loss"),
        "tokens": run.progress.tokens,
        "elapsed_s": round(run.progress.elapsed_s, 2),
        "params": run.num_params,
        "active_params": run.model_cfg.num_params(active=True),
    }


# ---- entry points -------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a training run; returns a summary. Raises InvalidArgumentError (CorpusError among them) on
    bad input, before any long work."""
    plan = plan_run(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with distributed(cfg.device, group_of_one=plan.dims.sharded) as info:
        run = set_up(plan, info)
        last = train_loop(run)
        export(run)
        return summary(run, last)


def train_demo_generator(out: str = "out/pydoc", max_steps: int = 1000, **overrides: Any) -> dict[str, Any]:
    """Train (or with resume=True continue) the default demo generator into `out`; see config.demo_config."""
    return train(demo_config(out, max_steps, **overrides))
