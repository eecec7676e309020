"""RAG prompt building: retrieved hits -> numbered context passages -> the generator's chat prompt.

Pure functions, no I/O, so the rules are tested directly:
- hits of one document whose character spans overlap or touch are merged into one passage (chunkers overlap
  neighbouring chunks; showing the overlap twice wastes the window and confuses citation numbers);
- passages with the same text (a document ingested twice under two ids) are shown once;
- passages are numbered [1], [2], ... by score, best first, so the answer can cite them;
- the context is trimmed by score to fit the model's window minus max_tokens: lower-scored passages are
  dropped whole (a cut-off passage reads as a different statement), and the citations sent to the client are
  exactly the passages the prompt holds.

The query for a conversation is its latest user turn, preceded by the previous user turn when there is one
(follow-ups such as "and in Python 2?" need their antecedent to retrieve anything useful).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

SYSTEM_PROMPT = (
    "You answer questions about the documents below. Use only the numbered context passages, cite them like "
    "[1], and say so when the context does not contain the answer."
)


class HitLike(Protocol):
    doc_id: str
    chunk_id: int
    score: float
    text: str
    source: str
    start: int
    end: int


class TokenizerLike(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True, tokenize: bool = False
    ) -> Any: ...


@dataclass
class Passage:
    doc_id: str
    chunk_id: int  # the best-scoring chunk of a merged passage
    score: float  # the best score of its chunks
    text: str
    source: str
    start: int
    end: int
    number: int = 0  # [number] in the prompt; set by number_passages


@dataclass
class Prompt:
    token_ids: list[int]
    passages: list[Passage]  # exactly those in the prompt, numbered 1..n
    dropped: int  # passages that did not fit the window


def merge_hits(hits: Sequence[HitLike]) -> list[Passage]:
    """Merge overlapping/adjacent spans of the same document, drop duplicate texts; best score first."""
    by_doc: dict[str, list[HitLike]] = {}
    for h in hits:
        by_doc.setdefault(h.doc_id, []).append(h)
    passages: list[Passage] = []
    for doc_id, doc_hits in by_doc.items():
        doc_hits = sorted(doc_hits, key=lambda h: (h.start, h.end))
        cur: Passage | None = None
        for h in doc_hits:
            if cur is not None and h.start <= cur.end:  # overlapping or touching: extend the passage
                if h.end > cur.end:
                    cur.text += h.text[cur.end - h.start :]
                    cur.end = h.end
                if h.score > cur.score:
                    cur.score, cur.chunk_id = h.score, h.chunk_id
                continue
            if cur is not None:
                passages.append(cur)
            cur = Passage(doc_id, h.chunk_id, h.score, h.text, h.source, h.start, h.end)
        if cur is not None:
            passages.append(cur)
    passages.sort(key=lambda p: -p.score)
    seen: set[str] = set()
    unique = []
    for p in passages:
        key = " ".join(p.text.split())
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def render_passage(p: Passage, number: int) -> str:
    label = f" ({p.source})" if p.source else ""
    return f"[{number}]{label} {p.text.strip()}"


def render_user_turn(question: str, passages: Sequence[Passage]) -> str:
    context = "\n\n".join(render_passage(p, i + 1) for i, p in enumerate(passages))
    if not context:
        context = "(no passages found)"
    return f"Context:\n{context}\n\nQuestion: {question.strip()}"


def conversation_query(messages: Sequence[dict[str, str]]) -> str:
    """The retrieval query of a conversation: the previous user turn (if any) + the latest one."""
    users = [m["content"].strip() for m in messages if m.get("role") == "user" and m.get("content", "").strip()]
    if not users:
        raise ValueError("the conversation needs a user message with text (the last message must be the user's)")
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

    messages: the conversation, its last message the user's question (Ask sends one message). Raises ValueError
    when even the question without any context leaves no room for max_tokens.
    """
    if not messages or messages[-1].get("role") != "user":
        raise ValueError("the last message must be the user's question")
    history, question = list(messages[:-1]), messages[-1]["content"]
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []

    def ids_for(passages: Sequence[Passage]) -> list[int]:
        turn = {"role": "user", "content": render_user_turn(question, passages)}
        return tokenizer.apply_chat_template([*system, *history, turn], add_generation_prompt=True, tokenize=True)

    budget = max_model_len - max_tokens
    bare = ids_for([])
    if len(bare) > budget:
        raise ValueError(
            f"the question and conversation take {len(bare)} tokens; with max_tokens={max_tokens} that exceeds the "
            f"model's window of {max_model_len} tokens: shorten the conversation or lower max_tokens"
        )
    candidates = merge_hits(hits)
    # Greedy by score: each passage costs about its own tokens plus its label; check the real rendering as we go
    # (exact, and cheap at top_k <= 50).
    kept: list[Passage] = []
    ids = bare
    for p in candidates:
        trial = ids_for([*kept, p])
        if len(trial) <= budget:
            kept.append(p)
            ids = trial
    for i, p in enumerate(kept):
        p.number = i + 1
    return Prompt(token_ids=list(ids), passages=kept, dropped=len(candidates) - len(kept))
