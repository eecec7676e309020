"""The online softmax shared by the attention kernels (kernels/triton/online_softmax.py), on its own: a tiny kernel
streams key tiles through it, unmasked and masked, and the result must be softmax(q k^T * scale) v and its
logsumexp."""

from __future__ import annotations

import math

import pytest
import torch

from tests.kernels.helpers import gen, randn, rel_err

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
from kernels.triton.online_softmax import (  # noqa: E402  (needs triton)
    log2_scale,
    online_softmax_finish,
    online_softmax_init,
    online_softmax_update,
)

M, N, D = 16, 16, 16  # tl.dot's smallest tiles


@triton.jit
def _attend_kernel(Q, K, V, O, LSE, LAST, n_keys, full, sm_scale, M: tl.constexpr, N: tl.constexpr, D: tl.constexpr):
    # One program: M query rows over n_keys keys; keys [0, full) visible to every row, then masked tiles where row r
    # sees keys j <= LAST[r] (LAST[r] = -1: none).
    offs_m = tl.arange(0, M)
    offs_n = tl.arange(0, N)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + offs_m[:, None] * D + offs_d[None, :])
    last = tl.load(LAST + offs_m)
    qk_scale = log2_scale(sm_scale)
    acc, l_i, m_i = online_softmax_init(M, D)
    for start in range(0, full, N):
        cols = start + offs_n
        k = tl.load(K + cols[None, :] * D + offs_d[:, None])
        v = tl.load(V + cols[:, None] * D + offs_d[None, :])
        qk = tl.dot(q, k, input_precision="ieee")
        acc, l_i, m_i = online_softmax_update(acc, l_i, m_i, qk, True, v, qk_scale, False, "ieee")
    for start in range(full, n_keys, N):
        cols = start + offs_n
        k = tl.load(K + cols[None, :] * D + offs_d[:, None], mask=cols[None, :] < n_keys, other=0.0)
        v = tl.load(V + cols[:, None] * D + offs_d[None, :], mask=cols[:, None] < n_keys, other=0.0)
        qk = tl.dot(q, k, input_precision="ieee")
        keep = (cols[None, :] < n_keys) & (cols[None, :] <= last[:, None])
        acc, l_i, m_i = online_softmax_update(acc, l_i, m_i, qk, keep, v, qk_scale, True, "ieee")
    out, lse = online_softmax_finish(acc, l_i, m_i, float("inf"))
    tl.store(O + offs_m[:, None] * D + offs_d[None, :], out)
    tl.store(LSE + offs_m, lse)


# (n_keys, full, first row sees nothing): unmasked tiles then a causal band and a ragged end; all tiles masked with a
# row that sees no key (zeros and +inf logsumexp).
@pytest.mark.parametrize("n_keys,full,empty_row", [(40, 16, False), (37, 0, True)])
def test_streamed_softmax_matches_dense(n_keys, full, empty_row, device):
    g = gen()
    q, k, v = (randn(n, D, g=g, dtype=torch.float32, device=device) for n in (M, n_keys, n_keys))
    last = torch.arange(M, device=device) + n_keys - M  # bottom-right causal: every row sees keys < n_keys - M + 1
    if empty_row:
        last[0] = -1
    scale = 0.7
    o = torch.empty(M, D, device=device)
    lse = torch.empty(M, device=device)
    _attend_kernel[(1,)](q, k, v, o, lse, last.to(torch.int32), n_keys, full, scale, M=M, N=N, D=D)

    s = (q.double() @ k.double().T) * scale  # (M, n_keys)
    visible = torch.arange(n_keys, device=device)[None, :] <= last[:, None]
    s = s.masked_fill(~visible, float("-inf"))
    seen = visible.any(1)
    ref = torch.zeros(M, D, dtype=torch.float64, device=device)
    ref[seen] = torch.softmax(s[seen], dim=1) @ v.double()
    assert rel_err(o, ref) < 1e-5  # fp32 accumulation over 40 keys
    ref_lse = torch.logsumexp(s[seen], dim=1) / math.log(2)  # log2 units
    assert rel_err(lse[seen], ref_lse) < 1e-5
    assert torch.isinf(lse[~seen]).all() and torch.equal(o[~seen].cpu(), torch.zeros_like(o[~seen].cpu()))
