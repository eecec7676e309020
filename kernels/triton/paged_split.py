"""Split-K for the paged attention kernel (flash-decoding): the partition plan and the merge of partial outputs.

When sequences x kv heads x query tiles would not fill the GPU, paged_attention.py cuts each sequence's key range
into `num_splits` partitions handled by separate programs; each writes a normalised partial output and its
logsumexp, and _merge_kernel here combines them, weighting each partition by exp2(lse - max lse).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from kernels.triton._launch import INTERPRET

# Partitions are multiples of this many keys (a multiple of every BLOCK_N of paged_attention.py's configs).
GPU_PARTITION_ALIGN = 128
PARTITION_ALIGN = 16 if INTERPRET else GPU_PARTITION_ALIGN
# Below this many keys per partition the merge costs more than the extra parallelism brings.
_MIN_PARTITION = 32 if INTERPRET else 256


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_programs_target(device: torch.device) -> int:
    # Two waves of programs per SM keep the memory system busy; under the interpreter pretend to a tiny GPU so the
    # split path is exercised by small tests.
    if device.type != "cuda":
        return 8
    return 2 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def split_plan(programs: int, max_ctx: int, device: torch.device, num_splits: int | None) -> tuple[int, int]:
    """(num_splits, partition): cut up to max_ctx keys into partitions when `programs` alone would not fill the GPU."""
    max_ctx = max(max_ctx, 1)
    if num_splits is None:
        target = _num_programs_target(device)
        num_splits = 1 if programs >= target else min(triton.cdiv(target, programs), max(1, max_ctx // _MIN_PARTITION))
    partition = triton.cdiv(triton.cdiv(max_ctx, max(1, int(num_splits))), PARTITION_ALIGN) * PARTITION_ALIGN
    return triton.cdiv(max_ctx, partition), partition


@triton.jit
def _merge_kernel(
    O,
    O_PART,
    LSE_PART,
    stride_ot,
    stride_oh,
    num_splits,
    H: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    t = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    s_ok = offs_s < num_splits
    base = (t.to(tl.int64) * H + h) * num_splits
    lse = tl.load(LSE_PART + base + offs_s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)  # every partition empty: all weights 0, output 0
    w = tl.math.exp2(lse - m)  # empty partitions (lse = -inf) weigh 0
    part = tl.load(O_PART + (base + offs_s)[:, None] * HEAD_DIM + offs_d[None, :], mask=s_ok[:, None], other=0.0)
    den = tl.sum(w, 0)
    o = tl.sum(part * w[:, None], 0) / tl.where(den > 0.0, den, 1.0)
    tl.store(O + t.to(tl.int64) * stride_ot + h * stride_oh + offs_d, o.to(O.dtype.element_ty))


def merge(o: torch.Tensor, o_part: torch.Tensor, lse_part: torch.Tensor) -> None:
    """Partials o_part (total_q, H, num_splits, D) fp32 and lse_part (total_q, H, num_splits) -> o (total_q, H, D)."""
    total_q, H, splits, D = o_part.shape
    _merge_kernel[(total_q, H)](
        o,
        o_part,
        lse_part,
        o.stride(0),
        o.stride(1),
        splits,
        H=H,
        HEAD_DIM=D,
        BLOCK_S=max(2, triton.next_power_of_2(splits)),
        num_warps=4 if D >= 128 else 2,
    )
