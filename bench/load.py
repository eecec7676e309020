"""Checkpoint load benchmark (CPU): wall time and peak resident memory of loading a random bf16 checkpoint with
`llm.checkpoint.load_model` against `transformers.AutoModelForCausalLM.from_pretrained`, in the same run.

    python bench/load.py                    # ~1.1B parameters (TinyLlama's shape, Llama family), bf16, 3 repeats
    python bench/load.py --size small       # ~60M parameters: a smoke run

The checkpoint (sharded safetensors + index, written once into bench/out/load-<size>/) is random: loading does not
depend on the values. Each load runs in a fresh child process, which reports the seconds `load` took, then the seconds
until every weight page was read once (memory-mapped weights are read lazily, by both loaders: a first forward
pays for it), its resident set before the load (after the imports) and its peak resident set (ru_maxrss, after the
read); "peak - before" is what the loaded weights cost, reported against their bytes (the goal: <= 1.2x). The files are read once before the
runs, so every run reads them from the page cache (the warm case; a cold read adds disk time to both loaders).
Runs alternate between the loaders; the median counts. Prints a table and writes bench/out/load.md, to be copied
into bench/RESULTS.md; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

# name -> llama-family shape: TinyLlama-1.1B, and a narrower, shallower one for smoke runs
SIZES = {"1b": dict(vocab_size=32000, hidden_size=2048, num_layers=22, num_heads=32, num_kv_heads=4, head_dim=64)}
SIZES["1b"]["intermediate_size"] = 5632
SIZES["small"] = {**SIZES["1b"], "hidden_size": 512, "num_layers": 8, "num_heads": 8, "num_kv_heads": 2}
SIZES["small"]["intermediate_size"] = 1408


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def write_checkpoint(directory: str, size: str) -> int:
    """A random bf16 Llama checkpoint in ~500 MB shards with an index; returns the weights' bytes. Kept for reuse."""
    import torch
    from safetensors.torch import save_file

    from llm.checkpoint import internal_to_hf
    from llm.config import ModelConfig
    from llm.model import CausalLM

    cfg = ModelConfig(
        model_type="llama",
        num_experts=0,
        num_experts_per_tok=0,
        tie_word_embeddings=False,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        **SIZES[size],
    )
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in internal_to_hf(CausalLM(cfg).state_dict(), cfg).items()}
    total = sum(s.numel() * 2 for s in shapes.values())
    marker = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(marker):
        return total
    os.makedirs(directory, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    shards: list[list[str]] = [[]]
    used = 0
    for name in sorted(shapes):
        n = shapes[name].numel() * 2
        if shards[-1] and used + n > 500 << 20:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += n
    weight_map = {}
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: torch.randn(shapes[n], generator=g).mul_(0.02).to(torch.bfloat16) for n in names}
        save_file(tensors, os.path.join(directory, fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, fname))
        del tensors
    cfg.save(directory, dtype="bfloat16")
    with open(marker, "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return total


def child(loader: str, directory: str) -> None:
    """One load in this (fresh) process, then one read of every weight page; prints {seconds (the load), touched
    (load + the read), rss_before, peak, param_bytes, dtype} as JSON."""
    import resource
    import time

    import torch

    if loader == "ours":
        from llm.checkpoint import load_model

        def load():
            return load_model(directory, device="cpu", dtype=torch.bfloat16)
    else:  # the model class imported up front: its lazy import is not part of loading
        from transformers import AutoModelForCausalLM, LlamaForCausalLM  # noqa: F401

        def load():
            return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)

    before = _rss_bytes()
    t0 = time.perf_counter()
    model = load()
    seconds = time.perf_counter() - t0
    params = {p.data_ptr(): p for p in model.parameters()}.values()
    with torch.no_grad():  # read one byte per page: memory-mapped weights become resident, as a first forward does
        for p in params:
            p.detach().reshape(-1).view(torch.uint8)[::4096].sum()
    touched = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = {
        "seconds": seconds,
        "touched": touched,
        "rss_before": before,
        "peak": peak,
        "param_bytes": sum(p.numel() * p.element_size() for p in params),
        "dtype": str(next(iter(params)).dtype),
    }
    print(json.dumps(out))


def run(loader: str, directory: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", loader, directory]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--child", nargs=2, metavar=("LOADER", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)

    directory = os.path.join(args.out, f"load-{args.size}")
    weights = write_checkpoint(directory, args.size)
    for name in os.listdir(directory):  # warm the page cache: both loaders read from memory
        with open(os.path.join(directory, name), "rb") as f:
            while f.read(64 << 20):
                pass
    results: dict[str, list[dict]] = {"ours": [], "transformers": []}
    for _ in range(args.repeats):
        for loader in results:
            results[loader].append(run(loader, directory))

    import torch

    from bench.engine import machine

    lines = [
        f"Checkpoint load, {datetime.date.today()}: random Llama-family checkpoint {args.size} "
        f"({weights / 2**30:.2f} GiB of bf16 weights, sharded safetensors), CPU, page cache warm, median of "
        f"{args.repeats} fresh processes per loader",
        f"Machine: {machine()}; transformers {__import__('transformers').__version__}, torch {torch.__version__}",
        "",
        "| loader | load s | load + read every weight s | RSS before GiB | peak RSS GiB | peak - before GiB | "
        "(peak - before) / weights | dtype |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for loader, rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("seconds", "touched", "rss_before", "peak")}
        cost = med["peak"] - med["rss_before"]
        lines.append(
            f"| {loader} | {med['seconds']:.2f} | {med['touched']:.2f} | {med['rss_before'] / 2**30:.2f} | "
            f"{med['peak'] / 2**30:.2f} | {cost / 2**30:.2f} | {cost / weights:.2f}x | {rs[0]['dtype']} |"
        )
        assert all(r["param_bytes"] == weights for r in rs), (loader, rs[0]["param_bytes"], weights)
    text = "\n".join(lines)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "load.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
