"""The generator: one decoder definition for the families of families.py (Mixtral, Qwen2/3-MoE, OLMoE, Llama,
Mistral, Qwen2/3: config, model, moe, mlp, attention), Hugging Face checkpoints (checkpoint), each checkpoint's
tokenizer, chat template and generation config, and the inference engine: engine_config (EngineConfig), scheduler,
kv_cache (paged KV-cache memory), model_runner, sampler, output_processor, engine (the loop), offline (`LLM`) and
async_engine (`AsyncLLM`).

Import the submodules directly (`from llm.model import CausalLM`); this package file stays empty of imports so
`llm.tokenizer` does not pull in torch.
"""

# `from llm import LLM, SamplingParams` (and the other engine names) resolve lazily, on first access, so that
# importing llm.tokenizer alone still does not pull in torch.
_LAZY = {
    "LLM": "llm.offline",
    "LLMEngine": "llm.engine",
    "EngineConfig": "llm.engine_config",
    "AsyncLLM": "llm.async_engine",
    "SamplingParams": "llm.sampler",
    "RequestOutput": "llm.outputs",
    "CompletionOutput": "llm.outputs",
    "StreamDelta": "llm.outputs",
    "QueueFullError": "llm.scheduler",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'llm' has no attribute {name!r}")
