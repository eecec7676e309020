"""load_generator serves checkpoints with their own tokenizer and chat template: Ask and Chat through a real gRPC
server with a ChatML model (byte-level BPE, Qwen2 family) and a Mixtral-Instruct model ([INST] template without a
system role, Metaspace BPE with byte fallback); a checkpoint that cannot build the prompt is refused at startup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.errors import InvalidArgumentError
from llm.checkpoint import save_model
from llm.config import get_config
from llm.model import CausalLM
from llm.tokenizer import Tokenizer
from rag.generator import load_generator
from tests.llm import tiny_tokenizers
from tests.service.conftest import RAG_DOCS, ServerThread


def make_model(directory: Path, kind: str) -> Path:
    """A tiny random-weight checkpoint with the tokenizer and template of `kind` (the answers are noise; the prompt,
    the stop ids and the streaming are the real ones)."""
    if kind == "chatml":
        tiny_tokenizers.chatml(directory)
    else:
        tiny_tokenizers.mixtral_instruct(directory)
    tok = Tokenizer.from_file(directory)
    torch.manual_seed(0)
    if kind == "chatml":  # a dense Qwen2 with the QKV bias, stopping on <|im_end|> or <|endoftext|>
        dense = dict(model_type="qwen2", num_experts=0, num_experts_per_tok=0, qkv_bias=True, intermediate_size=96)
        cfg = get_config("tiny", vocab_size=tok.vocab_size, max_position_embeddings=1024, **dense)
        eos = [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]
        (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    else:
        cfg = get_config("tiny", vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    save_model(CausalLM(cfg), directory)
    return directory


@pytest.mark.parametrize("kind", ["chatml", "mixtral"])
def test_ask_and_chat_through_a_real_server_with_the_models_template(tmp_path, kind):
    model_dir = make_model(tmp_path / "model", kind)
    srv = ServerThread(tmp_path / "data", model=str(model_dir)).start()
    try:
        gen = srv.server.generator
        assert gen.tokenizer.accepts_system_role == (kind == "chatml")
        with srv.client(timeout=120) as c:
            c.create_collection("kb")
            list(c.ingest("kb", RAG_DOCS))
            events = list(
                c.ask_stream("kb", "What makes sourdough bread rise?", num_passages=2, max_tokens=12, ignore_eos=True)
            )
            turns = ["Who plays the Sicilian Defence?", "Chess players.", "What does it answer 1.e4 with?"]
            roles = ["user", "assistant", "user"]
            chat = c.chat("kb", [dict(role=r, content=t) for r, t in zip(roles, turns)], num_passages=1, max_tokens=5)
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds[0] == "context" and kinds[-1] == "final" and set(kinds[1:-1]) == {"delta"}
        cites = events[0].context.citations
        assert cites[0].document_id == "bread" and [x.number for x in cites] == [1, 2]
        final = events[-1].final
        assert final.finish_reason == "length" and final.completion_tokens == 12 and final.prompt_tokens > 0
        assert "".join(e.delta.text for e in events[1:-1])
        assert [x["doc_id"] for x in chat["citations"]] == ["chess"] and chat["final"]["completion_tokens"] <= 5
        if kind == "chatml":  # generation_config.json's eos list joined the stop ids
            stops = gen.engine.output_processor.eos_ids
            assert {gen.tokenizer.token_to_id("<|im_end|>"), gen.tokenizer.token_to_id("<|endoftext|>")} <= set(stops)
    finally:
        srv.stop()


def test_a_checkpoint_without_a_chat_template_is_refused(tmp_path):
    model_dir = make_model(tmp_path / "model", "mixtral")
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (model_dir / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidArgumentError, match="no chat template"):
        load_generator(model_dir, device="cpu")
