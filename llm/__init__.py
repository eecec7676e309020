"""The generator: a Mixtral-style MoE decoder (config, model, moe, attention), Hugging Face-compatible checkpoints,
the tokenizer with its chat template, and the paged KV-cache memory manager (kv_cache).

Import the submodules directly (`from llm.model import CausalLM`); this package file stays empty of imports so
`llm.tokenizer` does not pull in torch.
"""
