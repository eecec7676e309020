"""OpenAI's response objects, built from the completion events (service.http.generation): pure functions.

chat.completion / chat.completion.chunk, text_completion (whole and streamed), usage, logprobs in both of
OpenAI's layouts, citations (the RAG extension: a top-level field of the completion, and of the first chunk), and
the server-sent-event framing (`data: {...}` per chunk, then `data: [DONE]`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rag.passages import Passage
from service.http.generation import End, Piece

DONE = b"data: [DONE]\n\n"


def sse(obj: dict[str, Any]) -> bytes:
    """One server-sent event carrying a JSON object."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def citation(p: Passage) -> dict[str, Any]:
    return {
        "number": p.number,
        "document_id": p.doc_id,
        "chunk_id": int(p.chunk_id),
        "score": float(p.score),
        "source": p.source,
        "start": int(p.start),
        "end": int(p.end),
        "snippet": p.text,
    }


def usage(end: End) -> dict[str, int]:
    return {
        "prompt_tokens": end.prompt_tokens,
        "completion_tokens": end.completion_tokens,
        "total_tokens": end.prompt_tokens + end.completion_tokens,
    }


@dataclass
class Completion:
    """The identity of one completion (shared by all its chunks) and what it accumulated."""

    kind: str  # "chat" or "text"
    model: str
    citations: list[Passage] | None  # None: not a RAG request (no citations field at all)
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    text: list[str] = field(default_factory=list)
    pieces: list[Piece] = field(default_factory=list)  # those with logprobs, when asked for

    def __post_init__(self) -> None:
        self.id = self.id or ("chatcmpl-" if self.kind == "chat" else "cmpl-") + uuid.uuid4().hex

    def head(self, object_name: str) -> dict[str, Any]:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model}


# --- logprobs ----------------------------------------------------------------------------------------------------


def _top(entry: dict[int, float], n: int) -> list[tuple[int, float]]:
    """The n most likely of a step's {token id: logprob} (it holds the sampled token and the top N)."""
    return sorted(entry.items(), key=lambda kv: -kv[1])[:n]


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (what byte-level BPE vocabularies spell tokens in) -> the byte it stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


BYTE_DECODER = _byte_decoder()


def token_bytes(tokenizer, token_id: int, text: str) -> list[int]:
    """The token's own bytes: a byte-level BPE token may be part of a UTF-8 character (its text alone is then
    U+FFFD); other vocabularies give their text's bytes."""
    piece = tokenizer.id_to_token(token_id)
    if piece and all(ch in BYTE_DECODER for ch in piece):
        return [BYTE_DECODER[ch] for ch in piece]
    return list(text.encode())


def chat_logprobs(tokenizer, pieces: Sequence[Piece], top_n: int) -> dict[str, Any]:
    """OpenAI's chat layout: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}."""

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text = tokenizer.decode([token_id], skip_special_tokens=False)
        return {"token": text, "logprob": logprob, "bytes": token_bytes(tokenizer, token_id, text)}

    content = []
    for piece in pieces:
        for token_id, step in zip(piece.token_ids, piece.logprobs or []):
            item = entry(token_id, step[token_id])
            item["top_logprobs"] = [entry(t, lp) for t, lp in _top(step, top_n)]
            content.append(item)
    return {"content": content}


def text_logprobs(tokenizer, pieces: Sequence[Piece], top_n: int, offset: int = 0) -> dict[str, Any]:
    """The completions layout: {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for piece in pieces:
        for token_id, step in zip(piece.token_ids, piece.logprobs or []):
            text = tokenizer.decode([token_id], skip_special_tokens=False)
            out["tokens"].append(text)
            out["token_logprobs"].append(step[token_id])
            out["top_logprobs"].append(
                {tokenizer.decode([t], skip_special_tokens=False): lp for t, lp in _top(step, top_n)}
            )
            out["text_offset"].append(offset)
            offset += len(text)
    return out


# --- whole responses ---------------------------------------------------------------------------------------------


def response(c: Completion, end: End, logprobs: dict[str, Any] | None) -> dict[str, Any]:
    """A chat.completion or text_completion object."""
    text = "".join(c.text)
    if c.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs}
        body = c.head("chat.completion")
    else:
        choice = {"index": 0, "text": text, "logprobs": logprobs}
        body = c.head("text_completion")
    choice["finish_reason"] = end.finish_reason
    body["choices"] = [choice]
    body["usage"] = usage(end)
    if c.citations is not None:
        body["citations"] = [citation(p) for p in c.citations]
    return body


# --- streamed chunks ---------------------------------------------------------------------------------------------


def chunk(
    c: Completion,
    text: str | None,
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
    first: bool = False,
) -> dict[str, Any]:
    """One chat.completion.chunk (delta) or text_completion chunk. The first chat chunk carries the role, and with
    RAG the first chunk of either kind carries the citations."""
    if c.kind == "chat":
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        body = c.head("chat.completion.chunk")
    else:
        choice = {"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}
        body = c.head("text_completion")
    body["choices"] = [choice]
    if first and c.citations is not None:
        body["citations"] = [citation(p) for p in c.citations]
    return body


def usage_chunk(c: Completion, end: End) -> dict[str, Any]:
    """stream_options.include_usage: the last chunk before [DONE], no choices, the usage of the whole completion."""
    body = c.head("chat.completion.chunk" if c.kind == "chat" else "text_completion")
    body["choices"] = []
    body["usage"] = usage(end)
    return body
