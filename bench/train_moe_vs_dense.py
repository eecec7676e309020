"""MoE vs dense at equal active parameters per token, same corpus, same tokens, same schedule, on this machine.

    python bench/train_moe_vs_dense.py --steps 300            # ~4-5 min per model on 2 CPU cores
    python bench/train_moe_vs_dense.py --steps 20 --quick     # smoke test of the script

MoE: preset "small" (4 experts of SwiGLU width 256, top-2). Dense: the same model with 1 expert of width
top_k * 256 = 512, so each token goes through the same number of FFN weights (the router's h*E weights aside).
The MoE holds 2x the FFN parameters in total; the question is what the extra (inactive) capacity buys per token
and what the routing costs in wall time on a CPU.

Corpus: Python's own docs (llm.train.corpus.pydoc_texts: pydoc_data topics + stdlib docstrings), one BPE tokenizer
trained by the first run and reused by the second, so both see the same shards and the same batches (same seed).
Writes bench/out/train_moe_vs_dense.md (copied into bench/RESULTS.md) and bench/train_moe_vs_dense.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from llm.train import parse_config, read_metrics, train  # noqa: E402


def run(name: str, out: Path, common: list[str], extra: list[str]) -> dict:
    print(f"== {name}", flush=True)
    summary = train(parse_config(["--out", str(out), *common, *extra]))
    rows = read_metrics(out / "metrics.jsonl")
    tps = [r["tokens_per_s"] for r in rows[len(rows) // 10 :]]  # skip the first steps (allocator warm-up)
    summary.update(
        name=name,
        rows=rows,
        tokens_per_s=sum(tps) / len(tps),
        val=[(r["step"], r["val_loss"], r["elapsed_s"]) for r in rows if "val_loss" in r],
    )
    return summary


def plot(results: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        steps, vals, secs = zip(*r["val"])
        (line,) = a1.plot(steps, vals, "o-", ms=3, label=f"{r['name']} val")
        tr = r["rows"]
        a1.plot([x["step"] for x in tr], [x["ce_loss"] for x in tr], lw=0.6, alpha=0.35, color=line.get_color())
        a2.plot(secs, vals, "o-", ms=3, color=line.get_color(), label=r["name"])
    a1.set_xlabel("step (same tokens per step)")
    a1.set_ylabel("loss (nats/token)")
    a1.set_title("val loss (dots) and train CE (thin) vs step")
    a2.set_xlabel("training wall time (s, this machine)")
    a2.set_title("val loss vs wall time")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--eval-interval", type=int, default=25)
    ap.add_argument("--out-root", default=str(ROOT / "out" / "bench_train"))
    ap.add_argument("--results", default=str(ROOT / "bench" / "out" / "train_moe_vs_dense.md"))
    ap.add_argument("--png", default=str(ROOT / "bench" / "train_moe_vs_dense.png"))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny preset, for checking the script")
    args = ap.parse_args()

    root = Path(args.out_root)
    if root.exists():
        import shutil

        shutil.rmtree(root)  # fresh runs: the trainer refuses to overwrite a run without --resume
    preset = "tiny" if args.quick else "small"
    warmup = max(args.steps // 10, 1)
    common = [
        "--pydoc",
        "--preset",
        preset,
        "--max-steps",
        str(args.steps),
        "--seq-len",
        str(args.seq_len),
        "--batch-size",
        str(args.batch_size),
        "--eval-interval",
        str(args.eval_interval),
        "--eval-batches",
        "8",
        "--warmup-steps",
        str(warmup),
        "--checkpoint-interval",
        str(args.steps),
        "--device",
        "cpu",
        "--threads",
        str(args.threads),
        "--quiet",
        "--sample-tokens",
        "24",
    ]
    if args.quick:
        common += ["--vocab-size", "512"]
    load_before = os.getloadavg()
    moe = run("MoE 4x256 top-2", root / "moe", common, [])
    width = 64 if args.quick else 256
    dense = run(
        f"dense 1x{2 * width}",
        root / "dense",
        common,
        [
            "--tokenizer",
            str(root / "moe" / "tokenizer.json"),
            "--model",
            "num_experts=1",
            "--model",
            "num_experts_per_tok=1",
            "--model",
            f"intermediate_size={2 * width}",
        ],
    )
    load_after = os.getloadavg()
    results = [moe, dense]
    plot(results, Path(args.png))

    meta = json.loads((root / "moe" / "data" / "meta.json").read_text())
    tokens_per_step = args.batch_size * args.seq_len
    lines = [
        "# MoE vs dense at equal active parameters (CPU)",
        "",
        f"Date: {datetime.date.today().isoformat()}. Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores visible ({torch.get_num_threads()} torch threads), torch {torch.__version__}, "
        f"Python {platform.python_version()}; shared with other jobs (1-min load average {load_before[0]:.1f} at the "
        f"start, {load_after[0]:.1f} at the end), so wall times and tokens/s are indicative only.",
        "",
        f"Command: `python bench/train_moe_vs_dense.py --steps {args.steps}`. Corpus: Python docs "
        f"(`--pydoc`: pydoc_data topics + stdlib docstrings), BPE vocab {meta['vocab_size']}, "
        f"{meta['tokens']['train']:,} train / {meta['tokens']['val']:,} val tokens. Both models: preset "
        f"`{preset}` attention/embeddings, seq_len {args.seq_len}, batch {args.batch_size} "
        f"({tokens_per_step:,} tokens/step), {args.steps} steps = {args.steps * tokens_per_step:,} tokens "
        f"({args.steps * tokens_per_step / meta['tokens']['train']:.2f} epochs), AdamW lr 1e-3, warm-up {warmup}, "
        f"cosine to 1e-4, aux_loss_coef 0.02 (MoE only). Same tokenizer, shards, batch order and init seed.",
        "",
        "| model | params (total) | active params/token | final val loss | val ppl | train wall time | CPU tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        v = r["val"][-1][1]
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.2f} M | {r['active_params'] / 1e6:.2f} M | {v:.3f} | "
            f"{2.718281828**v:.1f} | {r['elapsed_s']:.0f} s | {r['tokens_per_s']:.0f} |"
        )
    lines += [
        "",
        "Val loss over steps (eval on the same 64 held-out sequences each time):",
        "",
        "| step | " + " | ".join(r["name"] for r in results) + " |",
        "|---:|" + "---:|" * len(results),
    ]
    for i, (step, _, _) in enumerate(moe["val"]):
        lines.append(f"| {step} | " + " | ".join(f"{r['val'][i][1]:.3f}" for r in results) + " |")
    share = moe["rows"][-1]["expert_share"]
    lines += [
        "",
        "MoE expert share of routed tokens at the last step, per layer: "
        + "; ".join("[" + ", ".join(f"{x:.2f}" for x in layer) + "]" for layer in share)
        + ".",
        "",
        f'Greedy samples at the end (prompt "The"): MoE {moe["rows"][-1].get("sample", "")!r}; '
        f"dense {dense['rows'][-1].get('sample', '')!r}.",
        "",
        "![val loss](train_moe_vs_dense.png)",
        "",
    ]
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
