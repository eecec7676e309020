"""The paged KV-cache write in Triton: new tokens' keys and values into their slots of the block pool, in place.

Cache layout as in paged_attention.py: k_cache, v_cache (num_blocks, block_size, Hkv, D); slot = block * block_size
+ offset. One program per token copies all of its kv heads; a negative slot marks a padding token and writes nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton._launch import last_dim_contiguous, unsupported_cache, unsupported_head_dim


def unsupported(k: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> str | None:
    """Why the kernel cannot write these keys (checked arguments) into these caches, or None."""
    return unsupported_head_dim(k.shape[-1]) or unsupported_cache(k_cache, v_cache)


@triton.jit
def _write_kv_kernel(
    K,
    V,
    KC,
    VC,
    SLOTS,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kcb,
    stride_kcs,
    stride_kch,
    stride_vcb,
    stride_vcs,
    stride_vch,
    block_size,
    HKV: tl.constexpr,
    HKV_P: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    i = tl.program_id(0)
    slot = tl.load(SLOTS + i).to(tl.int64)
    if slot < 0:  # padding token
        return
    blk = slot // block_size
    off = slot % block_size
    offs_h = tl.arange(0, HKV_P)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = (offs_h < HKV)[:, None]
    src = offs_h[:, None] * stride_kh + offs_d[None, :]
    k = tl.load(K + i.to(tl.int64) * stride_kt + src, mask=ok)
    v = tl.load(V + i.to(tl.int64) * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=ok)
    tl.store(
        KC + blk * stride_kcb + off * stride_kcs + offs_h[:, None] * stride_kch + offs_d[None, :],
        k.to(KC.dtype.element_ty),
        mask=ok,
    )
    tl.store(
        VC + blk * stride_vcb + off * stride_vcs + offs_h[:, None] * stride_vch + offs_d[None, :],
        v.to(VC.dtype.element_ty),
        mask=ok,
    )


def write_kv(k, v, k_cache, v_cache, slot_mapping) -> None:
    """k/v (N, Hkv, D) into k_cache/v_cache (num_blocks, block_size, Hkv, D) at slot_mapping (N,), in place;
    slot = block * block_size + offset, negative slots skipped. The arguments of kernels.write_kv, checked."""
    N, Hkv, D = k.shape
    if N == 0:
        return
    k, v = last_dim_contiguous(k), last_dim_contiguous(v)
    slots = slot_mapping.to(device=k.device).contiguous()
    _write_kv_kernel[(N,)](
        k,
        v,
        k_cache,
        v_cache,
        slots,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        *k_cache.stride()[:3],  # block, slot, head
        *v_cache.stride()[:3],
        k_cache.shape[1],
        HKV=Hkv,
        HKV_P=triton.next_power_of_2(Hkv),
        HEAD_DIM=D,
        num_warps=1 if Hkv * D <= 512 else 4,
    )
