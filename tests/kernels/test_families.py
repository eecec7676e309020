"""The model's paged forward through the Triton kernels (interpreted on CPU) against the references, with each served
family's real head_dim, GQA group and expert count / top-k: a fresh prefill (varlen flash attention), a chunked
prefill over a cached prefix (paged prefill), decodes (paged attention), the KV write and the fused MoE.

Everything else is kept small (one layer, hidden 64, Hkv = 1 so the heads are exactly one GQA group) so that the
interpreter finishes in seconds; parity of the model itself with transformers is tests/llm/test_families.py's.
"""

from __future__ import annotations

import pytest
import torch

from kernels.ops import backend
from llm.attention import build_attention_metadata
from llm.config import get_config
from llm.kv_cache import allocate_kv_caches
from llm.model import CausalLM
from tests.kernels.helpers import TOL, rel_err

# model_type -> (head_dim, GQA group = heads / kv heads, experts, top-k, other ModelConfig fields), as in
# Mixtral-8x7B, Qwen1.5-MoE-A2.7B, Qwen3-30B-A3B, OLMoE-1B-7B, Llama-3-8B, Mistral-7B, Qwen2-7B, Qwen3-8B.
FAMILIES = {
    "mixtral": (128, 4, 8, 2, {}),
    "qwen2_moe": (128, 1, 60, 4, dict(shared_expert_intermediate_size=48, norm_topk_prob=False, qkv_bias=True)),
    "qwen3_moe": (128, 8, 128, 8, dict(qk_norm="head")),
    "olmoe": (128, 1, 64, 8, dict(qk_norm="proj", clip_qkv=2.0, norm_topk_prob=False, qkv_bias=True, o_bias=True)),
    "llama": (
        128,
        4,
        0,
        0,
        dict(
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=16,
            )
        ),
    ),
    "mistral": (128, 4, 0, 0, {}),
    "qwen2": (128, 7, 0, 0, dict(qkv_bias=True)),
    "qwen3": (128, 4, 0, 0, dict(qk_norm="head")),
}


def family_model(model_type: str) -> CausalLM:
    head_dim, group, experts, top_k, extra = FAMILIES[model_type]
    shape = dict(num_heads=group, num_kv_heads=1, head_dim=head_dim, num_experts=experts, num_experts_per_tok=top_k)
    cfg = get_config("tiny", model_type=model_type, vocab_size=64, num_layers=1, intermediate_size=32, **shape, **extra)
    torch.manual_seed(0)
    model = CausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, p.shape[-1] ** -0.5) if p.dim() >= 2 else p.normal_(1.0, 0.1)
    return model


def run_steps(model: CausalLM, device: str) -> list[torch.Tensor]:
    """Logits of three engine steps over two sequences in a block-size-4 paged cache with scattered blocks."""
    cfg, bs = model.config, 4
    seqs = [
        torch.randint(0, 64, (11,), generator=torch.Generator().manual_seed(1)).tolist(),
        torch.randint(0, 64, (6,), generator=torch.Generator().manual_seed(2)).tolist(),
    ]
    tables = [[5, 1, 7], [2, 6]]
    caches = allocate_kv_caches(cfg.num_layers, 8, bs, cfg.num_kv_heads, cfg.head_dim, device=device)
    done, outs = [0, 0], []
    for query_lens in ([6, 5], [4, 1], [1, 0]):  # fresh prefills; a chunk over a cached prefix + a decode; a decode
        order = [i for i in range(2) if query_lens[i]]
        meta = build_attention_metadata(
            [done[i] for i in order], [query_lens[i] for i in order], [tables[i] for i in order], bs, device=device
        )
        ids = torch.tensor([t for i in order for t in seqs[i][done[i] : done[i] + query_lens[i]]], device=device)
        with torch.no_grad():
            outs.append(model.forward_paged(ids, meta, caches))
        for i in order:
            done[i] += query_lens[i]
    return outs


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_family_paged_forward_through_the_triton_kernels(model_type, device, monkeypatch):
    pytest.importorskip("triton")
    model = family_model(model_type).to(device)
    monkeypatch.setenv("PQRAG_KERNELS", "reference")
    want = run_steps(model, device)
    monkeypatch.setenv("PQRAG_KERNELS", "triton")  # every op through Triton, or an error: no silent fallback
    assert backend(torch.zeros(1, device=device)) == "triton"
    got = run_steps(model, device)
    for g, w in zip(got, want):
        assert rel_err(g, w) < TOL[torch.float32]
