"""The generator's chat prompt: the system prompt, the conversation, and a last user turn holding the numbered
context passages and the question, as messages rendered by the model's own chat template. A template that rejects
a system role (Mixtral-Instruct's raises on one) gets the instructions folded into the first user turn instead.

Pure functions, no I/O. The context is trimmed by score to fit the model's window minus max_tokens: lower-scored
passages are dropped whole (a cut-off passage reads as a different statement), and the citations sent to the
client are exactly the passages the prompt holds. This is where an answer request is checked against the window
(with a message that says what to shorten), so a prompt built here always passes the engine's own check.

The query for a conversation is its latest user turn, preceded by the previous user turn when there is one
(follow-ups such as "and in Python 2?" need their antecedent to retrieve anything useful).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from common.errors import InvalidArgumentError
from rag.passages import HitLike, Passage, merge_hits, numbered, render_passage

SYSTEM_PROMPT = (
    "You answer questions about the documents below. Use only the numbered context passages, cite them like "
    "[1], and say so when the context does not contain the answer."
)


# What the bundled generator was fine-tuned to answer when the passages do not hold the answer (rag.sft_data);
# quote decoding offers it as the one uncited answer.
NO_ANSWER = "The passages do not say."


class TokenizerLike(Protocol):
    accepts_system_role: bool  # whether the chat template renders a system message

    def encode(self, text: str) -> list[int]: ...
    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True, tokenize: bool = False
    ) -> Any: ...


@dataclass
class Prompt:
    token_ids: list[int]
    passages: list[Passage]  # exactly those in the prompt, numbered 1..n
    dropped: int  # passages that did not fit the window


def render_user_turn(question: str, passages: Sequence[Passage]) -> str:
    """The last user turn: the numbered passages (see rag.passages.numbered), then the question."""
    context = "\n\n".join(render_passage(p) for p in passages)
    if not context:
        context = "(no passages found)"
    return f"Context:\n{context}\n\nQuestion: {question}"


def chat_messages(
    system_prompt: str, conversation: Sequence[dict[str, str]], accepts_system_role: bool
) -> list[dict[str, str]]:
    """[system, *conversation], or, for a template without a system role, the conversation with every system
    content (the instructions, and any the client sent) folded into the first user turn, in order."""
    system = [system_prompt] if system_prompt else []
    if accepts_system_role:
        return [{"role": "system", "content": s} for s in system] + list(conversation)
    system += [m["content"] for m in conversation if m["role"] == "system"]
    out = [dict(m) for m in conversation if m["role"] != "system"]
    first = next(i for i, m in enumerate(out) if m["role"] == "user")
    if system:
        out[first]["content"] = "\n\n".join([*system, out[first]["content"]])
    return out


def conversation_query(messages: Sequence[dict[str, str]]) -> str:
    """The retrieval query of a conversation: the previous user turn (if any) + the latest one.

    messages: as rag.request.AnswerRequest holds them (contents stripped; the last one the user's, with text).
    """
    users = [m["content"] for m in messages if m["role"] == "user" and m["content"]]
    assert users and messages[-1]["role"] == "user", "an AnswerRequest's last message is the user's question"
    return "\n".join(users[-2:])


def build_prompt(
    tokenizer: TokenizerLike,
    messages: Sequence[dict[str, str]],
    hits: Sequence[HitLike],
    max_model_len: int,
    max_tokens: int,
    system_prompt: str = SYSTEM_PROMPT,
) -> Prompt:
    """Prompt ids for [system, *earlier turns, last user turn with the context], fitting max_model_len - max_tokens.

    messages: the conversation, its last message the user's question (Ask sends one message). Raises
    InvalidArgumentError when even the question without any context leaves no room for max_tokens.
    """
    assert messages and messages[-1]["role"] == "user", "the last message is the user's question"
    history, question = list(messages[:-1]), messages[-1]["content"]
    accepts_system = tokenizer.accepts_system_role

    def ids_for(passages: Sequence[Passage]) -> list[int]:
        turn = {"role": "user", "content": render_user_turn(question, numbered(passages))}
        chat = chat_messages(system_prompt, [*history, turn], accepts_system)
        return tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)

    budget = max_model_len - max_tokens
    bare = ids_for([])
    if len(bare) > budget:
        raise InvalidArgumentError(
            f"the question and conversation take {len(bare)} tokens; with max_tokens={max_tokens} that exceeds the "
            f"model's window of {max_model_len} tokens: shorten the conversation or lower max_tokens"
        )
    candidates = merge_hits(hits)
    # Greedy by score: each passage costs about its own tokens plus its label; check the real rendering as we go
    # (exact, and cheap at <= 50 passages).
    kept: list[Passage] = []
    ids = bare
    for p in candidates:
        trial = ids_for([*kept, p])
        if len(trial) <= budget:
            kept.append(p)
            ids = trial
    return Prompt(token_ids=list(ids), passages=numbered(kept), dropped=len(candidates) - len(kept))
