"""Kernel benchmark (GPU only): the Triton kernels of kernels/ against the best torch baseline in the same run.

    python bench/kernels.py            # full sweep (~10+ min on a fresh box: autotuning compiles every config once)
    python bench/kernels.py --quick    # a small subset, a couple of minutes
    python bench/kernels.py --only flash,moe --out bench/out/kernels.md

Sections (bf16 everywhere; times are medians of triton.testing.do_bench, CUDA-event timed):
* FlashAttention, forward and backward, causal and not, seq 1k-16k, head dim 64 / 128: TFLOP/s of this project's
  kernel and of torch SDPA restricted to its flash backend (sdpa_kernel(SDPBackend.FLASH_ATTENTION)). Batch x seq is
  16k tokens, hidden 2048 (H = 2048 / D), as in the FlashAttention papers. FLOPs: 4 B H T S D forward (halved when
  causal), 2.5 x that backward (5 GEMMs instead of 2); the backward is timed alone (autograd.grad on a kept graph).
* Paged decode: GB/s of K/V read (2 x sum(seq_lens) x Hkv x D x 2 bytes) at batch 1-256 and contexts 512-32k,
  Llama-style GQA (H 32, Hkv 8, D 128, block 16, shuffled block tables), next to the device copy bandwidth measured
  here (a 2 GiB .copy_, read + write bytes): the fraction is what the kernel gets of what the memory can give.
* PQ scan: GB/s of codes read (n x m bytes) by the ADC top-k kernel, same copy bandwidth reference.
* Fused MoE (Mixtral-shaped experts: d 4096, F 14336, E 8, top-2): ms of the Triton kernel, of the grouped torch loop
  (sort by expert, one cuBLAS GEMM chain per expert, as llm/moe.py trains) and of the reference in kernels/reference.py.

Prints markdown tables on stdout; writes nothing else except the same markdown to --out FILE. Without CUDA it says so
and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import math
import os
import sys
import time
import traceback

import torch

# This file is bench/kernels.py: drop its own folder from the path so `import kernels` finds the package at the root.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

SECTIONS = ("flash", "paged", "pq", "moe")

# Sizes of every section, (quick, full) where they differ; module-level so a smoke run can shrink them.
FLASH_TOKENS, FLASH_HIDDEN = 16384, 2048
FLASH_SEQS = ([1024, 4096], [1024, 2048, 4096, 8192, 16384])
FLASH_DIMS = ([128], [64, 128])
PAGED_SHAPE = (32, 8, 128, 16)  # H, Hkv, D, block size
PAGED_BATCHES = ([1, 32], [1, 8, 32, 64, 128, 256])
PAGED_CTXS = ([2048, 16384], [512, 2048, 8192, 32768])
PAGED_MAX_TOKENS = 4 * 2**20  # cap the caches at 4M tokens (16 GiB of bf16 K + V)
PQ_CASES = (
    [(1, 48, 2_000_000, 10), (16, 48, 2_000_000, 10)],
    [
        (1, 48, 10_000_000, 10),
        (16, 48, 10_000_000, 10),
        (64, 48, 10_000_000, 100),
        (1, 96, 10_000_000, 10),
        (256, 48, 1_000_000, 10),
    ],
)
MOE_SHAPE = (4096, 14336, 8, 2)  # d, F, E, topk (Mixtral 8x7B)
MOE_TOKENS = ([1, 512], [1, 16, 128, 512, 2048, 8192])
COPY_GIB = 2.0


def _bench_ms(fn, grad_to_none=None, rep: int = 100) -> float:
    import triton.testing

    kw = dict(warmup=max(5, rep // 4), rep=rep, grad_to_none=grad_to_none)
    try:
        return float(triton.testing.do_bench(fn, return_mode="median", **kw))
    except TypeError:  # triton without return_mode: the mean
        return float(triton.testing.do_bench(fn, **kw))


def _err(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".replace("|", "/").replace("\n", " ")
    return msg[:80]


def _fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{nd}f}"


class Report:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def w(self, s: str = "") -> None:
        print(s, flush=True)
        self.lines.append(s)

    def table(self, header: list[str], align: str) -> None:
        self.w("| " + " | ".join(header) + " |")
        self.w("|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")

    def row(self, cells: list[str]) -> None:
        self.w("| " + " | ".join(cells) + " |")


# ---------------------------------------------------------------------------------------------------------------
# device copy bandwidth


def copy_bandwidth(dev: torch.device) -> float:
    """GB/s of a big device-to-device .copy_, counting the bytes read plus the bytes written."""
    n = int(COPY_GIB * 2**30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=dev).normal_()
    dst = torch.empty_like(src)
    ms = _bench_ms(functools.partial(dst.copy_, src), rep=50)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n * 2 / (ms * 1e-3) / 1e9


# ---------------------------------------------------------------------------------------------------------------
# sections


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    # SDPA wants (B, H, T, D): transposed views of the same (B, T, H, D) storage, the layout its flash backend reads
    # natively.
    o = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal
    )
    return o.transpose(1, 2)


def bench_flash(rep: Report, quick: bool, dev: torch.device) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import kernels

    seqs, dims = FLASH_SEQS[not quick], FLASH_DIMS[not quick]
    tokens, hidden = FLASH_TOKENS, FLASH_HIDDEN
    rep.w(f"\n## FlashAttention (bf16, TFLOP/s; batch x seq = {tokens} tokens, hidden {hidden})\n")
    rep.table(["D", "seq", "causal", "pass", "triton", "sdpa flash", "triton / sdpa"], "rrrlrrr")
    for D in dims:
        H = hidden // D
        for T in seqs:
            B = max(1, tokens // T)
            for causal in (False, True):
                fwd_flops = 4 * B * H * T * T * D * (0.5 if causal else 1.0)
                g = torch.Generator(device=dev).manual_seed(0)
                q, k, v, do = (torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(4))
                res: dict[tuple[str, str], float | None] = {}
                errs: list[str] = []
                for impl in ("triton", "sdpa"):
                    xs = [t.clone().requires_grad_() for t in (q, k, v)]
                    try:
                        if impl == "triton":
                            f = functools.partial(kernels.flash_attention, *xs, causal=causal)
                            ctx = contextlib.nullcontext()
                        else:
                            ctx = sdpa_kernel(SDPBackend.FLASH_ATTENTION)
                            f = functools.partial(_sdpa, *xs, causal=causal)
                        with ctx:
                            with torch.no_grad():
                                ms = _bench_ms(f)
                            res[(impl, "fwd")] = fwd_flops / (ms * 1e-3) / 1e12
                            o = f()
                            gr = functools.partial(torch.autograd.grad, o, xs, do, retain_graph=True)
                            ms = _bench_ms(gr)
                            res[(impl, "bwd")] = 2.5 * fwd_flops / (ms * 1e-3) / 1e12
                            del o, gr, f  # the partials hold the graph and inputs
                    except Exception as e:  # keep the table going; the cell says why
                        errs.append(f"{impl}: {_err(e)}")
                        res.setdefault((impl, "fwd"), None)
                        res.setdefault((impl, "bwd"), None)
                    del xs
                for p in ("fwd", "bwd"):
                    t, s = res.get(("triton", p)), res.get(("sdpa", p))
                    ratio = t / s if t and s else None
                    rep.row([str(D), str(T), "yes" if causal else "no", p, _fmt(t), _fmt(s), _fmt(ratio, 2)])
                for e in errs:
                    rep.w(f"<!-- D={D} seq={T} causal={causal} {e} -->")
                del q, k, v, do
                torch.cuda.empty_cache()


def bench_paged(rep: Report, quick: bool, dev: torch.device, copy_gbs: float) -> None:
    import kernels

    H, Hkv, D, bs = PAGED_SHAPE
    batches, ctxs, max_tokens = PAGED_BATCHES[not quick], PAGED_CTXS[not quick], PAGED_MAX_TOKENS
    rep.w(f"\n## Paged decode (bf16, H {H}, Hkv {Hkv}, D {D}, block {bs}; device copy {copy_gbs:.0f} GB/s)\n")
    rep.table(["batch", "context", "ms", "K/V GB/s", "of copy BW"], "rrrrr")
    for N in batches:
        for ctx in ctxs:
            if N * ctx > max_tokens:
                continue
            try:
                nblk = triton_cdiv(ctx, bs)
                g = torch.Generator(device=dev).manual_seed(0)
                kc = torch.empty(N * nblk, bs, Hkv, D, device=dev, dtype=torch.bfloat16).normal_(generator=g)
                vc = torch.empty_like(kc).normal_(generator=g)
                tables = torch.randperm(N * nblk, device=dev, generator=g).view(N, nblk).to(torch.int32)
                lens = torch.full((N,), ctx, dtype=torch.int32, device=dev)
                q = torch.randn(N, H, D, device=dev, dtype=torch.bfloat16, generator=g)
                ms = _bench_ms(functools.partial(kernels.paged_attention, q, kc, vc, tables, lens))
                gbs = 2 * N * ctx * Hkv * D * 2 / (ms * 1e-3) / 1e9
                rep.row([str(N), str(ctx), _fmt(ms, 3), _fmt(gbs, 0), f"{gbs / copy_gbs:.0%}"])
                del kc, vc, tables, lens, q
            except Exception as e:
                rep.row([str(N), str(ctx), "error", _err(e), "-"])
            torch.cuda.empty_cache()


def bench_pq(rep: Report, quick: bool, dev: torch.device, copy_gbs: float) -> None:
    import kernels

    cases = PQ_CASES[not quick]
    rep.w(f"\n## PQ ADC scan + top-k (8-bit codes; device copy {copy_gbs:.0f} GB/s)\n")
    rep.table(["queries", "m", "codes", "k", "ms", "codes GB/s", "of copy BW"], "rrrrrrr")
    for nq, m, n, k in cases:
        try:
            g = torch.Generator(device=dev).manual_seed(0)
            lut = torch.randn(nq, m, 256, device=dev, generator=g)
            codes = torch.randint(0, 256, (n, m), device=dev, dtype=torch.uint8, generator=g)
            ms = _bench_ms(functools.partial(kernels.pq_adc_topk, lut, codes, k))
            gbs = n * m / (ms * 1e-3) / 1e9
            # Each query rescans the codes, mostly from L2 when queries share a tile; GB/s counts one pass.
            rep.row([str(nq), str(m), f"{n:,}", str(k), _fmt(ms, 3), _fmt(gbs, 0), f"{gbs / copy_gbs:.0%}"])
            del lut, codes
        except Exception as e:
            rep.row([str(nq), str(m), f"{n:,}", str(k), "error", _err(e), "-"])
        torch.cuda.empty_cache()


def _grouped_loop(x, w_gate, w_up, w_down, topk_weights, topk_ids):
    """The torch baseline: llm/moe.py's grouped path (sort by expert, one GEMM chain per expert, index_add back)."""
    n, k = topk_ids.shape
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    tok = order // k
    counts = torch.bincount(flat, minlength=w_gate.shape[0]).tolist()
    xs = x.index_select(0, tok)
    ys = torch.empty_like(xs)
    s = 0
    for e, c in enumerate(counts):
        if c:
            xe = xs[s : s + c]
            ys[s : s + c] = torch.nn.functional.linear(
                torch.nn.functional.silu(xe @ w_gate[e].T) * (xe @ w_up[e].T), w_down[e]
            )
            s += c
    ys = ys * topk_weights.reshape(-1, 1)[order].to(ys.dtype)
    return torch.zeros_like(x).index_add_(0, tok, ys)


def bench_moe(rep: Report, quick: bool, dev: torch.device) -> None:
    import kernels
    from kernels import reference

    d, Fd, E, topk = MOE_SHAPE
    tokens = MOE_TOKENS[not quick]
    rep.w(f"\n## Fused MoE (bf16, d {d}, F {Fd}, E {E}, top-{topk}; ms, TFLOP/s of the routed GEMMs)\n")
    rep.table(
        ["tokens", "triton ms", "TFLOP/s", "grouped torch ms", "reference ms", "speedup vs grouped", "max rel err"],
        "rrrrrrr",
    )
    g = torch.Generator(device=dev).manual_seed(0)
    wg, wu = (
        torch.empty(E, Fd, d, device=dev, dtype=torch.bfloat16).normal_(0, d**-0.5, generator=g) for _ in range(2)
    )
    wd = torch.empty(E, d, Fd, device=dev, dtype=torch.bfloat16).normal_(0, Fd**-0.5, generator=g)
    for T in tokens:
        try:
            x = torch.randn(T, d, device=dev, dtype=torch.bfloat16, generator=g)
            logits = torch.randn(T, E, device=dev, generator=g)
            w, ids = torch.topk(torch.softmax(logits, -1), topk, dim=-1)
            w = w / w.sum(-1, keepdim=True)
            args = (x, wg, wu, wd, w, ids)
            out = kernels.fused_moe(*args)
            base = _grouped_loop(*args)
            err = ((out.float() - base.float()).norm() / base.float().norm()).item()
            ms_t = _bench_ms(functools.partial(kernels.fused_moe, *args))
            ms_g = _bench_ms(functools.partial(_grouped_loop, *args))
            # The reference upcasts every expert's weights to fp32 per call: slow, timed with few repetitions.
            ms_r = _bench_ms(functools.partial(reference.fused_moe, *args), rep=20) if T <= 2048 else None
            flops = 2 * T * topk * 3 * d * Fd
            rep.row(
                [
                    str(T),
                    _fmt(ms_t, 3),
                    _fmt(flops / (ms_t * 1e-3) / 1e12),
                    _fmt(ms_g, 3),
                    _fmt(ms_r, 3),
                    _fmt(ms_g / ms_t, 2),
                    f"{err:.1e}",
                ]
            )
        except Exception as e:
            rep.row([str(T), "error", _err(e), "-", "-", "-", "-"])
        torch.cuda.empty_cache()


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small subset of every section")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    ap.add_argument("--out", help="also write the markdown here")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error(f"unknown sections {bad}; choose from {SECTIONS}")
    if not torch.cuda.is_available():
        print("bench/kernels.py: no CUDA device here; the kernel benchmark runs on a GPU only (nothing to do).")
        return 0
    try:
        import triton
    except ImportError:
        print("bench/kernels.py: triton is not installed; the kernel benchmark needs it (nothing to do).")
        return 0
    os.environ.setdefault("PQRAG_KERNELS", "auto")
    dev = torch.device("cuda")
    rep = Report()
    rep.w("# Kernel benchmark" + (" (--quick)" if args.quick else ""))
    rep.w(
        f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC | {torch.cuda.get_device_name(dev)} | "
        f"torch {torch.__version__} | triton {triton.__version__} | PQRAG_TUNE_MS={os.environ.get('PQRAG_TUNE_MS', '40')}"
    )
    t0 = time.perf_counter()
    copy_gbs = float("nan")
    if {"paged", "pq"} & set(only):
        copy_gbs = copy_bandwidth(dev)
        rep.w(f"\nDevice copy bandwidth (2 GiB .copy_, read + write): {copy_gbs:.0f} GB/s")
    failed = []
    for name in only:
        t = time.perf_counter()
        try:
            if name == "flash":
                bench_flash(rep, args.quick, dev)
            elif name == "paged":
                bench_paged(rep, args.quick, dev, copy_gbs)
            elif name == "pq":
                bench_pq(rep, args.quick, dev, copy_gbs)
            elif name == "moe":
                bench_moe(rep, args.quick, dev)
        except Exception:
            failed.append(name)
            rep.w(f"\n{name}: failed\n```\n{traceback.format_exc()[-1500:]}```")
        print(f"({name}: {time.perf_counter() - t:.0f}s)", file=sys.stderr, flush=True)
    rep.w(f"\nTotal {time.perf_counter() - t0:.0f}s (first runs include Triton compilation and autotuning).")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(rep.lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
