"""The dispatch in kernels/ops.py: backend choice, the PQRAG_KERNELS switch, both paths agreeing, no triton needed."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels
from kernels import ops
from kernels import reference as R
from tests.kernels.conftest import CUDA
from tests.kernels.helpers import TOL, cu_seqlens, gen, paged_cache, randn, rel_err

ROOT = Path(__file__).resolve().parents[2]


def test_auto_picks_reference_on_cpu_and_triton_on_cuda(monkeypatch):
    monkeypatch.delenv("PQRAG_KERNELS", raising=False)
    assert ops.backend(torch.zeros(1)) == "reference"
    if CUDA and ops.triton_available():
        assert ops.backend(torch.zeros(1, device="cuda")) == "triton"


def test_switch_forces_either_path(monkeypatch):
    monkeypatch.setenv("PQRAG_KERNELS", "reference")
    assert ops.backend(torch.zeros(1)) == "reference"
    if CUDA:
        assert ops.backend(torch.zeros(1, device="cuda")) == "reference"
    if ops.triton_available() and (CUDA or os.environ.get("TRITON_INTERPRET") == "1"):
        monkeypatch.setenv("PQRAG_KERNELS", "triton")
        assert ops.backend(torch.zeros(1, device="cuda" if CUDA else "cpu")) == "triton"
    monkeypatch.setenv("PQRAG_KERNELS", "fastest")
    with pytest.raises(ValueError):
        ops.backend(torch.zeros(1))


def test_package_functions_survive_submodule_imports():
    # The Triton modules share names with the ops (kernels/triton/flash_attention.py); importing them, or any module
    # of the package, must not shadow the functions kernels re-exports.
    names = ["kernels.reference", "kernels.checks"]
    names += [f"kernels.triton.{m}" for m in ("flash_attention", "paged_attention", "write_kv", "pq_adc", "fused_moe")]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:  # triton missing: nothing to shadow
            pass
    assert kernels.flash_attention is ops.flash_attention
    assert kernels.paged_attention is ops.paged_attention
    assert kernels.fused_moe is ops.fused_moe
    assert callable(kernels.pq_adc_topk) and callable(kernels.write_kv)


@pytest.mark.parametrize("mode", ["reference", "triton"])
def test_every_op_through_the_dispatch(mode, monkeypatch, device):
    if mode == "triton":
        pytest.importorskip("triton")
    monkeypatch.setenv("PQRAG_KERNELS", mode)
    g = gen()
    f32 = dict(g=g, dtype=torch.float32, device=device)

    q, k, v = randn(1, 9, 4, 32, **f32), randn(1, 12, 2, 32, **f32), randn(1, 12, 2, 32, **f32)
    assert (
        rel_err(kernels.flash_attention(q, k, v), R.flash_attention(q.double(), k.double(), v.double()))
        < TOL[torch.float32]
    )

    cq, ck = cu_seqlens([4, 5], device), cu_seqlens([6, 6], device)
    o = kernels.flash_attention_varlen(q[0], k[0], v[0], cq, ck, 5, 6)
    assert (
        rel_err(o, R.flash_attention_varlen(q[0].double(), k[0].double(), v[0].double(), cq, ck)) < TOL[torch.float32]
    )

    kc, vc, tables, sl = paged_cache([20, 7], 8, 2, 32, **f32)
    qd = randn(2, 4, 32, **f32)
    ref = R.paged_attention(qd.double(), kc.double(), vc.double(), tables, sl)
    assert rel_err(kernels.paged_attention(qd, kc, vc, tables, sl), ref) < TOL[torch.float32]
    cq = cu_seqlens([3, 2], device)
    qp = randn(5, 4, 32, **f32)
    ref = R.paged_prefill_attention(qp.double(), kc.double(), vc.double(), tables, sl, cq)
    assert rel_err(kernels.paged_prefill_attention(qp, kc, vc, tables, sl, cq, 3), ref) < TOL[torch.float32]

    slots = torch.tensor([3, 17], device=device)
    kr, vr = kc.clone(), vc.clone()
    kernels.write_kv(qd[:, :2], qd[:, 2:], kc, vc, slots)
    R.write_kv(qd[:, :2], qd[:, 2:], kr, vr, slots)
    assert torch.equal(kc, kr) and torch.equal(vc, vr)

    lut = randn(2, 4, 16, **f32)
    codes = torch.randint(0, 16, (50, 4), generator=g, dtype=torch.uint8).to(device)
    values, _ = kernels.pq_adc_topk(lut, codes, 5)
    assert torch.allclose(values.cpu().double(), R.pq_adc_topk(lut.double(), codes, 5)[0].cpu(), atol=1e-5)

    x, wg, wu, wd = (
        randn(7, 32, **f32),
        randn(3, 48, 32, **f32) / 6,
        randn(3, 48, 32, **f32) / 6,
        randn(3, 32, 48, **f32) / 7,
    )
    ids = torch.stack([torch.randperm(3, generator=g)[:2] for _ in range(7)]).to(device)
    w = torch.rand(7, 2, generator=g).to(device)
    ref = R.fused_moe(x.double(), wg.double(), wu.double(), wd.double(), w.double(), ids)
    assert rel_err(kernels.fused_moe(x, wg, wu, wd, w, ids), ref) < TOL[torch.float32]


def test_uncovered_calls_fail_when_triton_is_forced(device, force_triton):
    # Head dim 8, float64 and k past the scan's limit are the references' alone: PQRAG_KERNELS=triton promises the
    # kernels, so the dispatch says why instead of quietly running the reference.
    q = torch.zeros(1, 3, 2, 8, device=device)
    with pytest.raises(ValueError, match="head dim"):
        kernels.flash_attention(q, q, q)
    x = torch.zeros(3, 16, dtype=torch.float64, device=device)
    w = torch.zeros(2, 16, 16, dtype=torch.float64, device=device)
    ids = torch.zeros(3, 1, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match="float64"):
        kernels.fused_moe(x, w, w, w, torch.ones(3, 1, device=device), ids)
    codes = torch.zeros(10, 4, dtype=torch.uint8, device=device)
    with pytest.raises(ValueError, match="k="):
        kernels.pq_adc_topk(torch.zeros(1, 4, 16, device=device), codes, 2000)


def test_auto_runs_the_reference_for_uncovered_calls(monkeypatch, device):
    # With Triton chosen (as on CUDA), a call the kernel does not cover runs the reference; a covered one the kernel.
    pytest.importorskip("triton")
    monkeypatch.setenv("PQRAG_KERNELS", "auto")
    monkeypatch.setattr(ops, "backend", lambda *tensors: "triton")
    calls = []
    monkeypatch.setattr(R, "flash_attention", lambda *args: calls.append(args) or args[0])
    g = gen()
    q8 = randn(1, 5, 2, 8, g=g, dtype=torch.float32, device=device)
    assert kernels.flash_attention(q8, q8, q8) is q8 and len(calls) == 1
    q32 = randn(1, 5, 2, 32, g=g, dtype=torch.float32, device=device)
    o = kernels.flash_attention(q32, q32, q32)
    assert len(calls) == 1 and o.shape == q32.shape and torch.isfinite(o).all()


def test_reference_path_is_differentiable(monkeypatch):
    monkeypatch.setenv("PQRAG_KERNELS", "reference")
    g = gen()
    q = randn(1, 5, 2, 32, g=g, dtype=torch.float32, device="cpu").requires_grad_()
    kernels.flash_attention(q, q, q).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_import_works_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, kernels\n"
        "assert not kernels.triton_available()\n"
        "q = torch.randn(1, 3, 2, 32)\n"
        "assert kernels.flash_attention(q, q, q).shape == q.shape\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PQRAG_KERNELS": "auto"}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env, timeout=120)
