"""Engine benchmark on mixed-length traffic (issue 14): the engine in its default dtype against transformers'
`generate` in float32 and in the engine's dtype, in one run, with the share of time in matmuls and their GFLOP/s
against the machine's measured matmul peak.

    python bench/engine.py --mixed                          # 3 workloads x 64 requests, the ~85M Mixtral below
    python bench/engine.py --mixed --num-requests 8 --seeds 1 --layers 2 --max-prompt 64 --max-output 16  # smoke

Workload (one per seed, the seeds' times summed, since padding waste varies from one workload to the next):
`--num-requests` requests of random token ids with lognormal prompt lengths (median 96, clipped to 16-512) and
output lengths (median 48, clipped to 8-192), greedy, eos ignored. Model: a random Mixtral, hidden 512, 6 layers,
8 experts top-2, 8 query / 4 KV heads of 64, expert width 1024, vocabulary 4096 (~85M parameters).

- pqrag: `LLM.generate` of all requests at once, EngineConfig's defaults, the dtype left to the engine
  (common.device.default_dtype: bf16 on CPUs with AMX / avx512_bf16, float32 elsewhere; `--dtype` overrides).
- transformers: MixtralForCausalLM.generate over static batches of `--hf-batch` requests in arrival order, left
  padded; a batch runs until its longest output, and only the requested tokens count.
Each side runs a small warm-up workload first, then every workload once. A profiled run of the first
workload's first 16 requests (torch.profiler, with_flops) gives the share of time in matmuls (aten::mm / addmm /
bmm self time) and their FLOP rate; the peak is F.linear at 2048 x 2048 x 2048 in the same dtype, measured in the same run.
Writes bench/out/engine_mixed.md.
"""

from __future__ import annotations

import datetime
import os
import random
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from engine import machine, random_model, write_report

from llm.checkpoint import save_model
from llm.offline import LLM
from llm.sampler import SamplingParams

HERE = os.path.dirname(os.path.abspath(__file__))
MIXTRAL_512 = dict(
    hidden_size=512,
    num_layers=6,
    num_heads=8,
    num_kv_heads=4,
    head_dim=64,
    intermediate_size=1024,
    num_experts=8,
    num_experts_per_tok=2,
    vocab_size=4096,
    tie_word_embeddings=False,
)
MATMULS = ("aten::mm", "aten::addmm", "aten::bmm")


def workload(seed: int, n: int, vocab: int, max_prompt: int, max_output: int) -> tuple[list[list[int]], list[int]]:
    """n prompts (random token ids) and their output lengths, lognormal, clipped."""
    r = random.Random(seed)
    lens = [min(max_prompt, max(16, round(r.lognormvariate(4.56, 0.8)))) for _ in range(n)]  # median e^4.56 = 96
    outs = [min(max_output, max(8, round(r.lognormvariate(3.87, 0.8)))) for _ in range(n)]  # median 48
    return [[r.randrange(3, vocab) for _ in range(p)] for p in lens], outs


def matmul_peak(dtype: torch.dtype, size: int = 2048, iters: int = 3) -> float:
    """GFLOP/s of F.linear at size x size x size in dtype (best of iters)."""
    x, w = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    F.linear(x, w)
    best = float("inf")
    for _ in range(iters):
        t = time.perf_counter()
        F.linear(x, w)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def profile_matmuls(fn) -> tuple[float, float, float]:
    """(wall s, matmul self-time share of the wall time, matmul GFLOP/s) of one profiled call of fn."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        t = time.perf_counter()
        fn()
        wall = time.perf_counter() - t
    events = [e for e in prof.key_averages() if e.key in MATMULS]
    mm_s = sum(e.self_cpu_time_total for e in events) / 1e6
    flops = sum(e.flops for e in events)
    return wall, mm_s / wall, flops / mm_s / 1e9 if mm_s else 0.0


def hf_generate(hf, prompts: list[list[int]], outs: list[int], batch: int, pad: int) -> None:
    """transformers' generate over static batches, left padded, each batch to its longest requested output."""
    for s in range(0, len(prompts), batch):
        ps, os_ = prompts[s : s + batch], outs[s : s + batch]
        width = max(len(p) for p in ps)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in ps])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps])
        with torch.inference_mode():
            hf.generate(
                ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=max(os_),
                min_new_tokens=max(os_),
                pad_token_id=pad,
            )


def main(args) -> None:
    load_avg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    model = random_model("small", seed=0, model_type="mixtral", **{**MIXTRAL_512, "num_layers": args.layers or 6})
    cfg = model.config
    loads = [
        workload(seed, args.num_requests, cfg.vocab_size, args.max_prompt, args.max_output)
        for seed in range(args.seeds)
    ]
    warm = workload(99, 4, cfg.vocab_size, 32, 8)
    total_new = sum(sum(outs) for _, outs in loads)
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, tmp)
        llm = LLM(tmp, device="cpu", dtype=args.dtype)  # None: the engine's default dtype
        dtype = next(llm.engine.model.parameters()).dtype
        hf_dtypes = [torch.float32] + ([dtype] if dtype != torch.float32 else [])
        hfs = {dt: AutoModelForCausalLM.from_pretrained(tmp, dtype=dt).eval() for dt in hf_dtypes}

    def run_ours(load):
        prompts, outs = load
        return llm.generate(prompts, [SamplingParams(temperature=0, max_tokens=o, ignore_eos=True) for o in outs])

    sides = {"pqrag": run_ours} | {
        f"hf-{str(dt)[6:]}": (lambda load, hf=hf: hf_generate(hf, *load, args.hf_batch, 2)) for dt, hf in hfs.items()
    }
    times = {}
    for name, fn in sides.items():
        fn(warm)
        t = time.perf_counter()
        for load in loads:
            fn(load)
        times[name] = time.perf_counter() - t
        print(f"{name}: {times[name]:.2f} s, {total_new / times[name]:.1f} new tokens/s", flush=True)
    # The first 16 requests of the first workload: the profiler's event records of all 64 through transformers'
    # generate outgrow 24 GB of memory.
    sample = (loads[0][0][:16], loads[0][1][:16])
    prof = {name: profile_matmuls(lambda fn=fn: fn(sample)) for name, fn in sides.items()}
    peaks = {dt: matmul_peak(dt) for dt in {torch.float32, torch.bfloat16, dtype}}

    name_of = {"pqrag": f"pqrag LLM.generate ({str(dtype)[6:]}, the default)"} | {
        f"hf-{str(dt)[6:]}": f"transformers generate ({str(dt)[6:]}, batches of {args.hf_batch})" for dt in hfs
    }
    rows = "".join(
        f"| {name_of[n]} | {times[n]:.2f} | {total_new / times[n]:.1f} | {times[n] / times['pqrag']:.2f}x | "
        f"{prof[n][1] * 100:.0f}% | {prof[n][2]:.0f} |\n"
        for n in sides
    )
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = f"""# Engine benchmark, mixed-length traffic

`python bench/engine.py {" ".join(sys.argv[1:])}`. Run: {now}.
Machine: {machine()}. Load average before the run: {load_avg}; torch threads: {torch.get_num_threads()}.

Model: random Mixtral, {model.num_params() / 1e6:.1f}M parameters ({cfg.num_layers} layers, hidden {cfg.hidden_size},
{cfg.num_experts} experts top-{cfg.num_experts_per_tok}). Workloads: {args.seeds} seeds x {args.num_requests} requests,
lognormal prompt lengths (16-{args.max_prompt}) and output lengths (8-{args.max_output}), {total_new} new tokens in
all; greedy, eos ignored. Times are the seeds' sum, each side run once after a warm-up.

| engine | time s | new tokens/s | pqrag speed-up | time in matmuls | matmul GFLOP/s |
|---|---:|---:|---:|---:|---:|
{rows}
Matmul share and GFLOP/s: a profiled run of the first workload's first 16 requests (aten::mm / addmm / bmm
self time over its wall time; attention is SDPA, not counted). Measured F.linear peak at 2048^3 in the same run:
{", ".join(f"{str(dt)[6:]} {g:.0f} GFLOP/s" for dt, g in peaks.items())}.
"""
    print(md)
    write_report(args.out or os.path.join(HERE, "out", "engine_mixed.md"), md)
