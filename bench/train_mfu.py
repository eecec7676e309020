"""Training throughput and model FLOP utilisation (MFU) of a ~100M-parameter MoE on one GPU: the Triton
FlashAttention (kernels.flash_attention, what the trainer runs on CUDA) against PyTorch's SDPA, same model, same
batches, same run; and the same step under FSDP2 (a group of one: bf16 parameters, fp32 reduction, no autocast).

    python bench/train_mfu.py                          # CUDA: the ~100M MoE below, bf16, 8 x 1024 tokens per step
    python bench/train_mfu.py --quick --device cpu     # the script itself on a tiny model (no numbers to record)

Model: hidden 768, 8 layers, 12 query / 4 KV heads of 64, 8 SwiGLU experts of width 512 top-2, vocab 16384 (tied):
~101M parameters, ~44M active per token. Steps: forward, cross-entropy + load balancing, backward, clip, fused
AdamW, as llm.train.loop.train_step does them (one micro-step, random tokens: throughput only).

MFU = achieved model FLOP/s / the GPU's peak dense bf16 FLOP/s (--peak-tflops; default by device name: H100/H200
989, A100 312). Model FLOPs per token, as in PaLM (appendix B) and nanoGPT's estimate_mfu: 6 * N (every matmul weight
a token goes through: attention, its top-k experts, the router, the tied head; not the embedding lookup) +
12 * L * heads * head_dim * T (attention scores and values; the causal half is not subtracted).
Writes bench/out/train_mfu.md (copy it into bench/RESULTS.md, "Training").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import kernels  # noqa: E402
from llm.config import ModelConfig, get_config  # noqa: E402
from llm.model import CausalLM  # noqa: E402
from llm.train.config import TrainConfig  # noqa: E402
from llm.train.distributed import distributed  # noqa: E402
from llm.train.loss import micro_batch_loss  # noqa: E402
from llm.train.optim import build_optimizer  # noqa: E402
from llm.train.parallel_dims import ParallelDims  # noqa: E402
from llm.train.parallelize import Parallelism  # noqa: E402

MOE_100M = dict(
    vocab_size=16384,
    hidden_size=768,
    num_layers=8,
    num_heads=12,
    num_kv_heads=4,
    head_dim=64,
    intermediate_size=512,
    num_experts=8,
    num_experts_per_tok=2,
    max_position_embeddings=2048,
)
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def sdpa_attention(q, k, v, causal=True, softmax_scale=None):
    """kernels.flash_attention's signature on PyTorch's scaled_dot_product_attention: (B, T, H, D) in and out."""
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, scale=softmax_scale, enable_gqa=True
    )
    return o.transpose(1, 2)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    h, d = cfg.hidden_size, cfg.head_dim
    attn = h * d * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)  # q, o + k, v
    experts = cfg.num_experts_per_tok * 3 * h * cfg.intermediate_size
    matmul_params = cfg.num_layers * (attn + experts + h * cfg.num_experts) + h * cfg.vocab_size  # + router, head
    return 6 * matmul_params + 12 * cfg.num_layers * cfg.num_heads * d * seq_len


def measure(name: str, cfg: ModelConfig, args, device: torch.device, fsdp: bool) -> dict:
    train_cfg = TrainConfig(fsdp=fsdp)
    with distributed(str(device), group_of_one=fsdp) as info:
        bf16 = device.type == "cuda"
        par = Parallelism(ParallelDims(1, 1, fsdp), info, bf16)
        torch.manual_seed(0)
        model = CausalLM(cfg).to(device)
        par.parallelize(model, activation_checkpointing=False)
        optimizer, _ = build_optimizer(model, train_cfg, device)
        autocast = par.autocast()
        g = torch.Generator(device="cpu").manual_seed(1)
        batches = [
            torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len + 1), generator=g)
            for _ in range(args.steps + args.warmup)
        ]
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        t0 = None
        for i, batch in enumerate(batches):
            if i == args.warmup:
                sync()
                t0 = time.perf_counter()
            x, y = batch[:, :-1].to(device), batch[:, 1:].to(device)
            with autocast:
                logits, router_logits = model(x, return_router_logits=True)
            m = micro_batch_loss(logits, router_logits, y, cfg, train_cfg, info)
            m.loss.backward()
            par.clip_grad_norm_(model, train_cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync()
        dt = time.perf_counter() - t0
        peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    tokens_per_s = args.steps * args.batch_size * args.seq_len / dt
    achieved = tokens_per_s * flops_per_token(cfg, args.seq_len)
    return {
        "name": name,
        "tokens_per_s": tokens_per_s,
        "tflops": achieved / 1e12,
        "mfu": achieved / (args.peak_tflops * 1e12) if args.peak_tflops else float("nan"),
        "loss": float(m.loss),
        "peak_mem_gib": peak_mem,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (default: by name)")
    ap.add_argument("--quick", action="store_true", help="tiny preset, 3 steps: checks the script")
    ap.add_argument("--results", default=str(ROOT / "bench" / "out" / "train_mfu.md"))
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = get_config("tiny") if args.quick else ModelConfig(**MOE_100M)
    if args.quick:
        args.steps, args.warmup, args.batch_size, args.seq_len = 3, 1, 2, 64
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if args.peak_tflops is None:
        args.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in gpu), None)
    flash = kernels.flash_attention
    results = []
    variants = [("Triton FlashAttention", flash, False), ("SDPA", sdpa_attention, False)]
    variants.append(("Triton FlashAttention, FSDP2 (bf16 params)", flash, True))
    for name, attention, fsdp in variants:
        kernels.flash_attention = attention  # the model calls kernels.flash_attention at every forward
        try:
            results.append(measure(name, cfg, args, device, fsdp))
        finally:
            kernels.flash_attention = flash
        print(results[-1], flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    lines = [
        f"### Training throughput and MFU ({datetime.date.today()}, {gpu}, torch {torch.__version__})",
        "",
        f"`python bench/train_mfu.py{' --quick' if args.quick else ''}`: {CausalLM(cfg).num_params() / 1e6:.0f}M "
        f"parameters ({cfg.num_params(active=True) / 1e6:.0f}M active), {args.batch_size} x {args.seq_len} tokens "
        f"per step, {args.steps} timed steps after {args.warmup}; peak {args.peak_tflops} TFLOP/s bf16.",
        "",
        "| attention | tokens/s | model TFLOP/s | MFU | peak memory (GiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['tokens_per_s']:,.0f} | {r['tflops']:.1f} | {r['mfu']:.1%} | {r['peak_mem_gib']:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(text)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
