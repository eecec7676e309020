"""The ops' argument checks (kernels/checks.py): run by the dispatch before either backend, each naming its argument."""

from __future__ import annotations

import math
import re

import pytest
import torch

import kernels
from kernels import checks


def _z(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.zeros(*shape, dtype=dtype)


def _paged(q: torch.Tensor, tables: torch.Tensor | None = None, lens: torch.Tensor | None = None) -> tuple:
    cache = _z(4, 8, 2, 32)
    tables = torch.zeros(2, 3, dtype=torch.int32) if tables is None else tables
    lens = torch.ones(2, dtype=torch.int32) if lens is None else lens
    return q, cache, cache.clone(), tables, lens


def _moe(x=None, w_down=None, ids=None, weights=None) -> tuple:
    x = _z(3, 16) if x is None else x
    w = _z(2, 24, 16)
    w_down = _z(2, 16, 24) if w_down is None else w_down
    ids = torch.zeros(3, 2, dtype=torch.int64) if ids is None else ids
    weights = _z(3, 2) if weights is None else weights
    return x, w, w.clone(), w_down, weights, ids


q4, k4 = _z(1, 5, 4, 32), _z(1, 6, 2, 32)
q3, k3 = _z(5, 4, 32), _z(6, 2, 32)
cu = torch.tensor([0, 5], dtype=torch.int32)
lut, codes = _z(2, 4, 16), torch.zeros(10, 4, dtype=torch.uint8)
caches = (_z(4, 8, 2, 32), _z(4, 8, 2, 32))

# (op, arguments, a piece of the message): one bad argument per case, the rest well-formed.
CASES = {
    "flash rank": (kernels.flash_attention, (q3, k4, k4), "expected q (B, T, H, D)"),
    "flash batch": (kernels.flash_attention, (_z(2, 5, 4, 32), k4, k4), "expected q (B, T, H, D)"),
    "flash head dim": (kernels.flash_attention, (q4, _z(1, 6, 2, 16), _z(1, 6, 2, 16)), "same head dim"),
    "flash heads": (kernels.flash_attention, (q4, _z(1, 6, 3, 32), _z(1, 6, 3, 32)), "multiple of key/value heads"),
    "flash dtype": (kernels.flash_attention, (q4, k4, k4.double()), "share a dtype"),
    "varlen rank": (kernels.flash_attention_varlen, (q4, k3, k3, cu, cu), "expected q (total_q, H, D)"),
    "varlen cu": (kernels.flash_attention_varlen, (q3, k3, k3, cu, torch.tensor([0, 2, 6])), "cu_seqlens_q"),
    "paged cache": (kernels.paged_attention, (q3[:2], _z(4, 8, 32), _z(4, 8, 32), cu, cu), "caches"),
    "paged heads": (kernels.paged_attention, _paged(_z(2, 3, 32)), "multiple of cache heads"),
    "paged head dim": (kernels.paged_attention, _paged(_z(2, 4, 64)), "head dim must match"),
    "paged tables": (kernels.paged_attention, _paged(_z(2, 4, 32), lens=torch.ones(3)), "block_tables (N"),
    "decode rows": (kernels.paged_attention, _paged(_z(3, 4, 32)), "one query per sequence"),
    "prefill cu": (kernels.paged_prefill_attention, (*_paged(_z(3, 4, 32)), cu), "cu_seqlens_q must be (N + 1,)"),
    "write shapes": (kernels.write_kv, (_z(6, 32), _z(6, 32), *caches, cu), "expected k, v (N"),
    "write heads": (kernels.write_kv, (k3, k3[:, :1], *caches, cu), "expected k, v"),
    "write cache": (kernels.write_kv, (_z(6, 1, 32), _z(6, 1, 32), *caches, cu), "do not match"),
    "write slots": (kernels.write_kv, (k3, k3, *caches, cu), "slot_mapping must be (6,)"),
    "pq shapes": (kernels.pq_adc_topk, (lut, codes[:, :3], 5), "expected lut (nq, m, ksub)"),
    "pq codes": (kernels.pq_adc_topk, (lut, codes.int(), 5), "codes must be uint8"),
    "pq ksub": (kernels.pq_adc_topk, (_z(2, 4, 300), codes, 5), "at most 256 centroids"),
    "pq k": (kernels.pq_adc_topk, (lut, codes, -1), "k must be >= 0"),
    "moe rank": (kernels.fused_moe, _moe(x=_z(3, 16, 1)), "expected x (T, d)"),
    "moe down": (kernels.fused_moe, _moe(w_down=_z(2, 24, 16)), "w_down must be (E, d, F)"),
    "moe routing": (kernels.fused_moe, _moe(ids=torch.zeros(4, 2, dtype=torch.int64)), "topk_ids and topk_weights"),
    "moe dtype": (kernels.fused_moe, _moe(x=_z(3, 16, dtype=torch.float64)), "share a dtype"),
    "moe id type": (kernels.fused_moe, _moe(ids=_z(3, 2)), "must be integers and floats"),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", ["reference", "triton"])
def test_bad_arguments_are_rejected_before_any_backend(case, mode, monkeypatch):
    if mode == "triton":
        pytest.importorskip("triton")
    monkeypatch.setenv("PQRAG_KERNELS", mode)
    op, args, message = CASES[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        op(*args)


def test_softmax_scale_default():
    assert checks.softmax_scale(None, 64) == 1 / 8
    assert checks.softmax_scale(0.3, 64) == 0.3
    assert math.isclose(checks.softmax_scale(None, 8), 8**-0.5)
