"""Fused mixture-of-experts SwiGLU in Triton: tokens sorted by expert, two grouped GEMM launches.

out[t] = sum_k w[t, k] * w_down[e] @ (silu(w_gate[e] @ x_t) * (w_up[e] @ x_t)),  e = topk_ids[t, k]

1. align (torch, no host sync): the T * topk (token, slot) assignments are sorted by expert and each expert's run
   is padded to a multiple of BLOCK_M, so every BLOCK_M-row block belongs to one expert. `sorted_ids` holds the
   flat assignment index t * topk + k of every row (N = T * topk marks padding), `block_expert` the expert of
   every block (-1 for the unused tail: the grid is sized by an upper bound so the host never waits on counts);
2. gate-up: one program per (block, tile of F) computes both x W_gate^T and x W_up^T over the same token tile
   (one read of x for two GEMMs), applies silu(g) * u in fp32 and stores h (padded rows, F) in the input dtype;
3. down: one program per (block, tile of d) computes h W_down^T, scales each row by its routing weight and stores
   it at its assignment row of y (T * topk, d) fp32; padding rows are dropped;
4. the scatter-add back to tokens is y.view(T, topk, d).sum(1): every assignment owns one row, so no atomics and
   the result is deterministic.

The block index is the fastest grid axis: consecutive programs share an expert's weight tile, so expert weights
come from HBM about once even when many blocks use the same expert.

The kernels compute in float16, bfloat16 and float32 (`unsupported`); the dispatch runs float64 through the
reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton import _alloc, _tuning
from kernels.triton._launch import INTERPRET, last_dim_contiguous, precision, unsupported_dtype

# (BLOCK_N, BLOCK_K, warps, stages) around the tiles vLLM's fused_moe uses on H100-class parts; prune drops those
# whose fp32 accumulators or pipelined shared-memory tiles would not fit for the BLOCK_M of the call. The first
# (smallest) fits every BLOCK_M and dtype: the one used when PQRAG_TUNE_CONFIGS=1 skips the tuning (see _tuning.py).
GPU_CONFIGS = _tuning.tile_configs(
    [
        (64, 32, 4, 3),
        (64, 64, 4, 4),
        (128, 64, 4, 3),
        (128, 64, 8, 3),
        (64, 128, 4, 3),
        (128, 128, 8, 3),
        (256, 64, 8, 3),
        (128, 32, 8, 3),
    ],
    ("BLOCK_N", "BLOCK_K"),
)
# One small config under the interpreter; BLOCK_N != BLOCK_K so a swapped stride shows up.
INTERP_CONFIGS = _tuning.tile_configs([(32, 16, 4, 1)], ("BLOCK_N", "BLOCK_K"))
_CONFIGS = INTERP_CONFIGS if INTERPRET else GPU_CONFIGS


def unsupported(x: torch.Tensor) -> str | None:
    """Why the kernels cannot take these activations (checked arguments), or None."""
    return unsupported_dtype(x.dtype, "x and the expert weights")


def prune(configs, named_args, **kwargs):
    bm = kwargs.get("BLOCK_M", named_args.get("BLOCK_M", 64))
    n_acc = kwargs.get("N_ACC", named_args.get("N_ACC", 1))
    elt = 4 if kwargs.get("PRECISION", named_args.get("PRECISION")) == "ieee" else 2

    def cost(c):
        bn, bk = c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
        regs = n_acc * bm * bn / (32 * c.num_warps)  # fp32 accumulator registers per thread
        smem = c.num_stages * (bm * bk + n_acc * bk * bn) * elt  # pipelined A and B tiles, bytes
        return regs, smem

    keep = [c for c in configs if cost(c)[0] <= 128 and cost(c)[1] <= 160 * 1024]
    return keep or [min(configs, key=lambda c: cost(c)[1])]


_TUNE_KEY = ["TUNE_ROWS", "N", "K", "BLOCK_M", "PRECISION"]


@_tuning.autotune(configs=_CONFIGS, key=_TUNE_KEY, prune_configs_by={"early_config_prune": prune})
@triton.jit
def _gate_up_kernel(
    X,
    WG,
    WU,
    H,
    SORTED,
    BLOCK_EXPERT,
    n_assign,
    N,
    K,
    TUNE_ROWS,
    stride_xt,
    stride_xd,
    stride_we,
    stride_wn,
    stride_wk,
    stride_hm,
    TOPK: tl.constexpr,
    N_ACC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # X (T, d=K), WG/WU (E, F=N, d=K), H (rows, F) -> H[r] = silu(x WG[e]^T) * (x WU[e]^T) for the rows of one block.
    blk = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(BLOCK_EXPERT + blk)
    if e < 0:  # beyond the last used block: nothing reads these rows
        return
    offs_m = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    assign = tl.load(SORTED + offs_m)  # (BLOCK_M,) flat assignment t * TOPK + k, n_assign on padding
    row_ok = assign < n_assign
    tok = (assign // TOPK).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = X + tok[:, None] * stride_xt + offs_k[None, :] * stride_xd  # (BLOCK_M, BLOCK_K)
    w_off = e.to(tl.int64) * stride_we + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None] * stride_wk
    g_ptrs = WG + w_off  # (BLOCK_K, BLOCK_N): W^T tiles, read straight from the (out, in) layout
    u_ptrs = WU + w_off
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        a = tl.load(x_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        bg = tl.load(g_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        bu = tl.load(u_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc_g = tl.dot(a, bg, acc_g, input_precision=PRECISION)
        acc_u = tl.dot(a, bu, acc_u, input_precision=PRECISION)
        x_ptrs += BLOCK_K * stride_xd
        g_ptrs += BLOCK_K * stride_wk
        u_ptrs += BLOCK_K * stride_wk
    # silu in fp32; padding rows are 0 (silu(0) * 0) and are never stored by the down kernel anyway.
    h = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u
    h_ptrs = H + offs_m.to(tl.int64)[:, None] * stride_hm + offs_n[None, :]
    tl.store(h_ptrs, h.to(H.dtype.element_ty), mask=n_ok[None, :])


@_tuning.autotune(configs=_CONFIGS, key=_TUNE_KEY, prune_configs_by={"early_config_prune": prune})
@triton.jit
def _down_kernel(
    H,
    WD,
    Y,
    TOPK_W,
    SORTED,
    BLOCK_EXPERT,
    n_assign,
    N,
    K,
    TUNE_ROWS,
    stride_hm,
    stride_we,
    stride_wn,
    stride_wk,
    stride_ym,
    N_ACC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # H (rows, F=K), WD (E, d=N, F=K), TOPK_W (T * topk,) -> Y[assign] = w[assign] * (h WD[e]^T), Y (T * topk, d).
    blk = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(BLOCK_EXPERT + blk)
    if e < 0:
        return
    offs_m = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    assign = tl.load(SORTED + offs_m)
    row_ok = assign < n_assign
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    # Padding rows of h hold zeros (see the gate-up kernel), so the A tile needs no row mask.
    h_ptrs = H + offs_m.to(tl.int64)[:, None] * stride_hm + offs_k[None, :]  # (BLOCK_M, BLOCK_K)
    w_ptrs = WD + e.to(tl.int64) * stride_we + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None] * stride_wk
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        a = tl.load(h_ptrs, mask=k_ok[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        h_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * stride_wk
    w = tl.load(TOPK_W + assign, mask=row_ok, other=0.0).to(tl.float32)  # routing weight of each row
    acc = acc * w[:, None]
    y_ptrs = Y + assign.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, acc, mask=row_ok[:, None] & n_ok[None, :])


# ----------------------------------------------------------------------------------------------------------------
# host side


def block_rows(n_assign: int, num_experts: int) -> int:
    """BLOCK_M from the mean tokens per expert: small blocks waste less on padding at decode, large ones reuse each
    weight tile over more rows at prefill. tl.dot needs >= 16."""
    if INTERPRET:
        return 16
    avg = n_assign / max(1, num_experts)
    return 16 if avg <= 16 else 32 if avg <= 48 else 64 if avg <= 512 else 128


def align(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """topk_ids (T, topk) -> sorted_ids (max_blocks * block_m,) int32, block_expert (max_blocks,) int32.

    Rows of block b all belong to expert block_expert[b]; sorted_ids holds the flat assignment t * topk + k of each
    row (T * topk on padding rows and in unused blocks), assignments of one expert in token order. max_blocks is an
    upper bound of sum_e ceil(count_e / block_m), so nothing here waits for the GPU.
    """
    n = topk_ids.numel()
    dev = topk_ids.device
    flat = topk_ids.reshape(-1).long()  # (N,)
    max_blocks = triton.cdiv(n, block_m) + min(num_experts, n)
    counts = torch.bincount(flat, minlength=num_experts)  # (E,)
    blocks = (counts + block_m - 1) // block_m  # (E,)
    block_end = blocks.cumsum(0)  # (E,) one past each expert's last block
    order = torch.argsort(flat, stable=True)  # (N,) assignments grouped by expert
    e_sorted = flat[order]
    rank = torch.arange(n, device=dev) - (counts.cumsum(0) - counts)[e_sorted]  # position inside its expert
    dest = (block_end - blocks)[e_sorted] * block_m + rank
    sorted_ids = torch.full((max_blocks * block_m,), n, dtype=torch.int32, device=dev)
    sorted_ids[dest] = order.to(torch.int32)
    b = torch.arange(max_blocks, device=dev)
    block_expert = torch.searchsorted(block_end, b, right=True)  # (max_blocks,) E past the last used block
    block_expert = torch.where(block_expert < num_experts, block_expert, -1).to(torch.int32)
    return sorted_ids, block_expert


def fused_moe(x, w_gate, w_up, w_down, topk_weights, topk_ids, block_m: int | None = None) -> torch.Tensor:
    """x (T, d); w_gate, w_up (E, F, d), w_down (E, d, F) (nn.Linear layout); topk_weights (T, topk) float,
    topk_ids (T, topk) int -> (T, d) in x's dtype. Ids outside [0, E) contribute nothing, as in the reference.

    The arguments of kernels.fused_moe, checked; block_m overrides block_rows (tests).
    """
    T, d = x.shape
    E, Fdim, _ = w_gate.shape
    topk = topk_ids.shape[1]
    n = T * topk
    if n == 0 or d == 0 or Fdim == 0:
        return torch.zeros(T, d, dtype=x.dtype, device=x.device)
    # Invalid ids go to expert 0 with weight 0: no host-side check (a sync), same result as skipping them.
    ok = (topk_ids >= 0) & (topk_ids < E)
    ids = torch.where(ok, topk_ids, 0)
    weights = torch.where(ok, topk_weights, 0).reshape(-1).float()  # (N,) fp32, as the reference multiplies
    w_gate, w_up, w_down = (last_dim_contiguous(w) for w in (w_gate, w_up, w_down))
    if w_gate.stride() != w_up.stride():
        w_gate, w_up = w_gate.contiguous(), w_up.contiguous()
    bm = block_m or block_rows(n, E)
    sorted_ids, block_expert = align(ids, E, bm)
    rows = sorted_ids.numel()
    dot_precision = precision(x.dtype)
    h = _alloc.empty((rows, Fdim), x.dtype, x.device)  # (padded rows, F)
    y = _alloc.empty((n, d), torch.float32, x.device)  # (T * topk, d) weighted expert outputs
    n_blocks = block_expert.numel()
    tune_rows = _tuning.bucket(n)
    _gate_up_kernel[lambda meta: (n_blocks, triton.cdiv(Fdim, meta["BLOCK_N"]))](
        x,
        w_gate,
        w_up,
        h,
        sorted_ids,
        block_expert,
        n,
        Fdim,
        d,
        tune_rows,
        x.stride(0),
        x.stride(1),
        w_gate.stride(0),
        w_gate.stride(1),
        w_gate.stride(2),
        h.stride(0),
        TOPK=topk,
        N_ACC=2,
        BLOCK_M=bm,
        PRECISION=dot_precision,
    )
    _down_kernel[lambda meta: (n_blocks, triton.cdiv(d, meta["BLOCK_N"]))](
        h,
        w_down,
        y,
        weights,
        sorted_ids,
        block_expert,
        n,
        d,
        Fdim,
        tune_rows,
        h.stride(0),
        w_down.stride(0),
        w_down.stride(1),
        w_down.stride(2),
        y.stride(0),
        N_ACC=1,
        BLOCK_M=bm,
        PRECISION=dot_precision,
    )
    return y.view(T, topk, d).sum(1).to(x.dtype)
