"""The plain-torch references against independent formulations: SDPA, dense gathers, brute force."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kernels import reference as R
from tests.kernels.helpers import cu_seqlens, gen, paged_cache, randn, rel_err


def _sdpa(q, k, v, causal: bool, scale: float | None = None) -> torch.Tensor:
    """SDPA on (B, T, H, D) tensors with GQA expanded and the bottom-right causal mask built explicitly."""
    T, S = q.shape[1], k.shape[1]
    group = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    mask = None
    if causal:
        mask = torch.ones(T, S, dtype=torch.bool).tril(S - T)
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale
    )
    return o.transpose(1, 2)


@pytest.mark.parametrize(
    "B,T,S,H,Hkv,D,causal",
    [
        (2, 17, 17, 4, 4, 32, True),
        (1, 9, 30, 4, 2, 64, True),
        (2, 13, 21, 8, 2, 32, False),
        (1, 1, 40, 2, 1, 128, True),
    ],
)
def test_flash_attention_matches_sdpa(B, T, S, H, Hkv, D, causal):
    g = gen()
    q, k, v = (randn(B, n, h, D, g=g, dtype=torch.float64, device="cpu") for n, h in ((T, H), (S, Hkv), (S, Hkv)))
    assert rel_err(R.flash_attention(q, k, v, causal), _sdpa(q, k, v, causal)) < 1e-12
    assert rel_err(R.flash_attention(q, k, v, causal, 0.3), _sdpa(q, k, v, causal, 0.3)) < 1e-12


def test_flash_attention_gradients_match_sdpa():
    g = gen()
    q, k, v = (
        randn(2, n, h, 32, g=g, dtype=torch.float64, device="cpu").requires_grad_()
        for n, h in ((11, 4), (19, 2), (19, 2))
    )
    do = randn(2, 11, 4, 32, g=g, dtype=torch.float64, device="cpu")
    ours = torch.autograd.grad(R.flash_attention(q, k, v, True), (q, k, v), do)
    theirs = torch.autograd.grad(_sdpa(q, k, v, True), (q, k, v), do)
    for a, b in zip(ours, theirs):
        assert rel_err(a, b) < 1e-12


def test_flash_attention_rows_without_keys_are_zero():
    # Causal with S < T: the first T - S queries see no key at all.
    g = gen()
    q = randn(1, 10, 2, 32, g=g, dtype=torch.float64, device="cpu")
    k, v = (randn(1, 4, 2, 32, g=g, dtype=torch.float64, device="cpu") for _ in range(2))
    o = R.flash_attention(q, k, v, True)
    assert torch.equal(o[:, :6], torch.zeros_like(o[:, :6]))
    assert rel_err(o[:, 6:], _sdpa(q[:, 6:], k, v, True)) < 1e-12


def test_varlen_matches_per_sequence_dense():
    g = gen()
    lq, lk = [5, 0, 12, 7], [9, 3, 12, 4]
    q = randn(sum(lq), 4, 32, g=g, dtype=torch.float64, device="cpu")
    k, v = (randn(sum(lk), 2, 32, g=g, dtype=torch.float64, device="cpu") for _ in range(2))
    cq, ck = cu_seqlens(lq, "cpu"), cu_seqlens(lk, "cpu")
    for causal in (True, False):
        o = R.flash_attention_varlen(q, k, v, cq, ck, max(lq), max(lk), causal)
        for b in range(len(lq)):
            qs, ks = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
            if lq[b]:
                ref = R.flash_attention(q[None, qs], k[None, ks], v[None, ks], causal)[0]
                assert rel_err(o[qs], ref) < 1e-12


def test_paged_references_match_contiguous_attention():
    g = gen()
    lens, bs, H, Hkv, D = [1, 23, 40], 8, 4, 2, 32
    kc, vc, tables, sl = paged_cache(lens, bs, Hkv, D, g=g, dtype=torch.float64, device="cpu")
    qlens = [1, 5, 40]
    q = randn(sum(qlens), H, D, g=g, dtype=torch.float64, device="cpu")
    cq = cu_seqlens(qlens, "cpu")
    o = R.paged_prefill_attention(q, kc, vc, tables, sl, cq)
    dec = R.paged_attention(q[cq[1:] - 1], kc, vc, tables, sl)
    for i, n in enumerate(lens):
        rows = torch.cat(
            [torch.arange(tables[i, j].item() * bs, tables[i, j].item() * bs + bs) for j in range(tables.shape[1])]
        )[:n]
        k = kc.reshape(-1, Hkv, D)[rows][None]
        v = vc.reshape(-1, Hkv, D)[rows][None]
        qi = q[cq[i] : cq[i + 1]][None]
        assert rel_err(o[cq[i] : cq[i + 1]], _sdpa(qi, k, v, True)[0]) < 1e-12
        assert rel_err(dec[i], _sdpa(qi[:, -1:], k, v, False)[0, 0]) < 1e-12


def _paged_decode_per_sequence(q, kc, vc, tables, sl):
    """The decode spec one sequence at a time, reading only each sequence's first seq_lens[i] slots."""
    bs, Hkv, D = kc.shape[1:]
    out = torch.zeros_like(q)
    for i, n in enumerate(sl.tolist()):
        if n:
            rows = (tables[i].long()[:, None] * bs + torch.arange(bs)).reshape(-1)[:n]
            k, v = kc.reshape(-1, Hkv, D)[rows][None], vc.reshape(-1, Hkv, D)[rows][None]
            out[i] = _sdpa(q[i][None, None], k, v, False)[0, 0]
    return out


@pytest.mark.parametrize(
    "lens,H,Hkv,bs",
    # lengths on and off block boundaries, one sequence much longer than the rest (most of the padded batch is
    # masked), GQA 1/2/4, MHA, a block size that is not a power of two
    [([1, 16, 17, 32, 5], 4, 2, 16), ([3, 90, 2, 7, 64, 1, 33, 12], 8, 2, 16), ([20, 21], 4, 1, 7), ([9], 2, 2, 4)],
)
def test_batched_paged_decode_matches_per_sequence(lens, H, Hkv, bs):
    g = gen()
    kc, vc, tables, sl = paged_cache(lens, bs, Hkv, 32, g=g, dtype=torch.float64, device="cpu")
    q = randn(len(lens), H, 32, g=g, dtype=torch.float64, device="cpu")
    assert rel_err(R.paged_attention(q, kc, vc, tables, sl), _paged_decode_per_sequence(q, kc, vc, tables, sl)) < 1e-12
    assert (
        rel_err(
            R.paged_attention(q, kc, vc, tables, sl, 0.2),
            _paged_decode_per_sequence(q * 0.2 * math.sqrt(32), kc, vc, tables, sl),
        )
        < 1e-12
    )


def test_paged_decode_ignores_garbage_past_each_sequence():
    # The batched decode reads whole blocks (and padding blocks of short sequences); NaN / inf in slots past a
    # sequence's end, the state of a reused or uninitialised pool, must not reach the output. A sequence with no
    # cached key outputs zeros.
    g = gen()
    lens, bs, H, Hkv, D = [5, 0, 23, 1], 8, 4, 2, 32
    kc, vc, tables, sl = paged_cache(lens, bs, Hkv, D, g=g, dtype=torch.float64, device="cpu")
    q = randn(len(lens), H, D, g=g, dtype=torch.float64, device="cpu")
    ref = _paged_decode_per_sequence(q, kc, vc, tables, sl)
    live = torch.zeros(kc.shape[:2], dtype=torch.bool)
    for i, n in enumerate(lens):
        for j in range(n):
            live[tables[i, j // bs], j % bs] = True
    kc[~live] = float("nan")
    vc[~live] = float("inf")
    o = R.paged_attention(q, kc, vc, tables, sl)
    assert torch.isfinite(o).all()
    assert torch.equal(o[1], torch.zeros_like(o[1]))
    assert rel_err(o, ref) < 1e-12
    assert torch.equal(R.paged_attention(q[:0], kc, vc, tables[:0], sl[:0]), q[:0])
    # table entries past a sequence's last block are never read: -1 or an out-of-range id there is fine
    used = torch.arange(tables.shape[1])[None, :] * bs < sl[:, None]
    junk = torch.where(used, tables, torch.tensor([[-1, 10**6, -5, 7]], dtype=tables.dtype)[:, : tables.shape[1]])
    assert rel_err(R.paged_attention(q, kc, vc, junk, sl), ref) < 1e-12


def test_paged_decode_float32_accumulates_like_float64():
    g = gen()
    lens = [40, 3, 17]
    kc, vc, tables, sl = paged_cache(lens, 16, 2, 64, g=g, dtype=torch.float32, device="cpu")
    q = randn(3, 4, 64, g=g, dtype=torch.float32, device="cpu")
    o = R.paged_attention(q, kc, vc, tables, sl)
    assert o.dtype == torch.float32
    assert rel_err(o, R.paged_attention(q.double(), kc.double(), vc.double(), tables, sl)) < 1e-5


def test_cpu_paths_run_in_bf16_within_bf16_tolerance():
    # The engine's CPU paths take bf16 caches and weights as they are (no float32 copies); their outputs stay within
    # bf16 rounding of the float64 result. Lengths from 1 to 300 make several length groups in the paged decode.
    g = gen()
    lens, bs, H, Hkv, D = [300, 1, 17, 160, 64, 290, 33, 5, 128, 250], 16, 8, 2, 64
    kc, vc, tables, sl = paged_cache(lens, bs, Hkv, D, g=g, dtype=torch.float64, device="cpu")
    q = randn(len(lens), H, D, g=g, dtype=torch.float64, device="cpu")
    b = lambda t: t.bfloat16()  # noqa: E731
    o = R.paged_attention(b(q), b(kc), b(vc), tables, sl)
    assert o.dtype == torch.bfloat16
    # bf16 inputs round by 2^-9 relative; scores over D = 64 and the softmax-weighted sum keep it near 1e-2
    assert rel_err(o.double(), R.paged_attention(b(q).double(), b(kc).double(), b(vc).double(), tables, sl)) < 1e-2
    T = 40
    qv, kv = (
        randn(T, H, D, g=g, dtype=torch.float64, device="cpu"),
        randn(T, Hkv, D, g=g, dtype=torch.float64, device="cpu"),
    )
    cu = torch.tensor([0, 25, T], dtype=torch.int32)
    ov = R.flash_attention_varlen(b(qv), b(kv), b(kv), cu, cu)
    assert ov.dtype == torch.bfloat16
    assert rel_err(ov.double(), R.flash_attention_varlen(b(qv).double(), b(kv).double(), b(kv).double(), cu, cu)) < 1e-2
    E, d, Fd = 8, 64, 128
    x = randn(T, d, g=g, dtype=torch.float64, device="cpu")
    wg, wu = (randn(E, Fd, d, g=g, dtype=torch.float64, device="cpu") / math.sqrt(d) for _ in range(2))
    wd = randn(E, d, Fd, g=g, dtype=torch.float64, device="cpu") / math.sqrt(Fd)
    ids = torch.stack([torch.randperm(E, generator=g)[:2] for _ in range(T)])
    w = torch.rand(T, 2, generator=g, dtype=torch.float32)
    om = R.fused_moe(b(x), b(wg), b(wu), b(wd), w, ids)
    assert om.dtype == torch.bfloat16
    # the SwiGLU intermediate is rounded to bf16 before the down projection, as transformers does in bf16
    assert (
        rel_err(om.double(), R.fused_moe(b(x).double(), b(wg).double(), b(wu).double(), b(wd).double(), w, ids)) < 2e-2
    )


def test_write_kv_reference_places_tokens():
    g = gen()
    kc = torch.zeros(4, 3, 2, 8, dtype=torch.float64)
    vc = torch.zeros_like(kc)
    k, v = (randn(4, 2, 8, g=g, dtype=torch.float64, device="cpu") for _ in range(2))
    slots = torch.tensor([7, -1, 0, 11])
    R.write_kv(k, v, kc, vc, slots)
    assert torch.equal(kc[2, 1], k[0]) and torch.equal(vc[2, 1], v[0])
    assert torch.equal(kc[0, 0], k[2]) and torch.equal(kc[3, 2], k[3])
    assert int((kc.abs().sum((-1, -2)) > 0).sum()) == 3  # the padding token wrote nothing


def test_pq_reference_matches_brute_force():
    g = gen()
    nq, m, ksub, n, k = 3, 6, 16, 500, 17
    lut = randn(nq, m, ksub, g=g, dtype=torch.float64, device="cpu")
    codes = torch.randint(0, ksub, (n, m), generator=g, dtype=torch.uint8)
    dist = torch.stack([sum(lut[q, j, codes[:, j].long()] for j in range(m)) for q in range(nq)])  # (nq, n)
    values, indices = R.pq_adc_topk(lut, codes, k, block=128)
    ref_v, _ = dist.sort(dim=1)
    assert torch.allclose(values, ref_v[:, :k])
    assert torch.allclose(dist.gather(1, indices), values)
    v2, i2 = R.pq_adc_topk(lut, codes[:5], 8)
    assert torch.isinf(v2[:, 5:]).all() and (i2[:, 5:] == -1).all() and (i2[:, :5] >= 0).all()


def test_pq_reference_blocks_queries_and_codes():
    # nq > qblock and n > block: several query blocks, each merging a running top-k over several code blocks; a
    # single query goes through the explicit-copy path of the table; float32 tables give float32 values.
    g = gen()
    lut = torch.rand(70, 4, 16, generator=g)
    codes = torch.randint(0, 16, (300, 4), dtype=torch.uint8, generator=g)
    v, i = R.pq_adc_topk(lut, codes, 5, block=64, qblock=32)
    full = lut[:, torch.arange(4)[None, :], codes.long()].sum(-1)  # (nq, n)
    want = full.topk(5, largest=False)
    assert v.dtype == torch.float32 and i.dtype == torch.int64
    torch.testing.assert_close(v, want.values)
    torch.testing.assert_close(full.gather(1, i), want.values)
    v1, i1 = R.pq_adc_topk(lut[3:4], codes, 5, block=64)
    torch.testing.assert_close(v1, want.values[3:4])
    torch.testing.assert_close(full[3:4].gather(1, i1), want.values[3:4])
    v, i = R.pq_adc_topk(lut[:2], codes[:3], 5)  # n < k: padding
    assert (i[:, 3:] == -1).all() and torch.isinf(v[:, 3:]).all()
    v0, i0 = R.pq_adc_topk(lut[:2], codes, 0)
    assert v0.shape == i0.shape == (2, 0)


@pytest.mark.parametrize("E,topk", [(4, 2), (128, 8)])  # Mixtral-like; Qwen3-MoE's 128 experts top-8
def test_fused_moe_reference_matches_dense_mixture(E, topk):
    g = gen()
    T, d, Fd = 9, 16, 24
    x = randn(T, d, g=g, dtype=torch.float64, device="cpu")
    wg, wu = (randn(E, Fd, d, g=g, dtype=torch.float64, device="cpu") / math.sqrt(d) for _ in range(2))
    wd = randn(E, d, Fd, g=g, dtype=torch.float64, device="cpu") / math.sqrt(Fd)
    ids = torch.stack([torch.randperm(E, generator=g)[:topk] for _ in range(T)])
    w = torch.rand(T, topk, generator=g, dtype=torch.float64)
    gate = torch.zeros(T, E, dtype=torch.float64).scatter(1, ids, w)  # dense routing weights
    every = torch.stack([(F.silu(x @ wg[e].T) * (x @ wu[e].T)) @ wd[e].T for e in range(E)], dim=1)  # (T, E, d)
    ref = (gate[:, :, None] * every).sum(1)
    assert rel_err(R.fused_moe(x, wg, wu, wd, w, ids), ref) < 1e-12


def test_fused_moe_reference_skips_invalid_ids_and_empty_batches():
    g = gen()
    T, d, Fd, E = 7, 16, 24, 3
    x = randn(T, d, g=g, dtype=torch.float64, device="cpu")
    wg, wu = (randn(E, Fd, d, g=g, dtype=torch.float64, device="cpu") / math.sqrt(d) for _ in range(2))
    wd = randn(E, d, Fd, g=g, dtype=torch.float64, device="cpu") / math.sqrt(Fd)
    ids = torch.tensor([[0, 2], [-1, 1], [3, 0], [2, 2], [1, 5], [0, 1], [-7, 3]], dtype=torch.int32)
    w = torch.rand(T, 2, generator=g, dtype=torch.float64)
    ref = torch.zeros(T, d, dtype=torch.float64)
    for t in range(T):
        for j in range(2):
            e = int(ids[t, j])
            if 0 <= e < E:  # out-of-range ids contribute nothing
                ref[t] += w[t, j] * ((F.silu(x[t] @ wg[e].T) * (x[t] @ wu[e].T)) @ wd[e].T)
    assert rel_err(R.fused_moe(x, wg, wu, wd, w, ids), ref) < 1e-12
    assert R.fused_moe(x[:0], wg, wu, wd, w[:0], ids[:0]).shape == (0, d)
