"""Expert parallelism: the sliced experts with their all-to-alls compute what the whole MoEExperts computes (forward
and every gradient), and 2 expert-parallel processes train the model of one process and export the same files."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llm.moe import MoEExperts
from llm.train.expert_parallel import ExpertParallelExperts
from tests.llm.train.conftest import assert_follows, memory_per_rank, param_mib

E, K, H, I, T = 4, 2, 8, 16, 6  # experts, top-k, hidden, intermediate, tokens per rank


def _inputs(rank: int, skew: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank `rank`'s tokens, routing and output weights (the upstream gradient); skew sends every token to experts
    0 and 1, so rank 1's experts receive nothing."""
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(T, H, generator=g)
    ids = torch.stack([torch.randperm(2 if skew else E, generator=g)[:K] for _ in range(T)])
    w = torch.rand(T, K, generator=g)
    return x, ids, w, torch.randn(T, H, generator=g)


def _full_experts() -> MoEExperts:
    torch.manual_seed(0)
    experts = MoEExperts(E, H, I)
    with torch.no_grad():
        for p in experts.parameters():
            p.normal_(std=0.5)
    return experts


def _rank(rank: int, tmp: str) -> None:
    """One rank of the group: both routings, forward and backward; results saved to tmp/rank{rank}.pt."""
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=2)
    try:
        results = {}
        for skew in (False, True):
            ep = ExpertParallelExperts(_full_experts(), dist.group.WORLD, rank, 2)
            x, ids, w, gy = _inputs(rank, skew)
            x.requires_grad_(True)
            w.requires_grad_(True)
            y = ep(x, ids, w)
            (y * gy).sum().backward()
            grads = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in ep.named_parameters()}
            results[skew] = {"y": y.detach(), "x_grad": x.grad, "w_grad": w.grad, **grads}
        torch.save(results, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sliced_experts_equal_the_whole_experts_forward_and_backward(tmp_path):
    """2 gloo processes; with the tokens spread over all experts, and with none for rank 1's experts."""
    mp.spawn(_rank, args=(str(tmp_path),), nprocs=2)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for skew in (False, True):
        # The reference: one MoEExperts on both ranks' tokens; its loss is the sum of the two ranks' losses.
        full = _full_experts()
        xs, ids, ws, gys = (torch.cat(t) for t in zip(*(_inputs(r, skew) for r in range(2))))
        xs.requires_grad_(True)
        ws.requires_grad_(True)
        y = full(xs, ids, ws)
        (y * gys).sum().backward()
        for r in range(2):
            got, rows = results[r][skew], slice(r * T, (r + 1) * T)
            torch.testing.assert_close(got["y"], y[rows].detach())
            torch.testing.assert_close(got["x_grad"], xs.grad[rows])
            torch.testing.assert_close(got["w_grad"], ws.grad[rows])
            for name in ("w1", "w2", "w3"):  # rank r owns experts 2r, 2r+1: their gradient over both ranks' tokens
                torch.testing.assert_close(got[name], getattr(full, name).grad[2 * r : 2 * r + 2])


def test_two_expert_parallel_processes_follow_one_process(full_run, ep_run):
    out, stderr = ep_run
    assert_follows(full_run, out)
    total, experts = param_mib(full_run)
    layout, mib = memory_per_rank(stderr)  # each rank: the dense part and 2 of the 4 experts of each layer
    assert layout == "2 processes, dp 1 x ep 2" and abs(mib - (total - experts / 2)) < 0.006, (mib, total, experts)


def _load(path):
    from llm.checkpoint import load_model

    return load_model(path, dtype=torch.float32)


def test_the_export_of_an_expert_parallel_run_equals_the_single_process_export(full_run, ep_run):
    from safetensors.torch import load_file

    out, _ = ep_run
    assert (out / "config.json").read_text() == (full_run / "config.json").read_text()
    assert (out / "tokenizer.json").read_text() == (full_run / "tokenizer.json").read_text()
    want, got = load_file(full_run / "model.safetensors"), load_file(out / "model.safetensors")
    assert sorted(got) == sorted(want)  # Hugging Face's per-expert names, every expert gathered
    for name, t in want.items():
        torch.testing.assert_close(got[name], t, atol=1e-5, rtol=0, msg=name)
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids = torch.tensor([[5, 17, 42, 7, 99]])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, _load(out)(ids), atol=1e-4, rtol=1e-4)
