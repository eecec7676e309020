from google.protobuf import struct_pb2 as _struct_pb2
from pqrag.v1 import collections_pb2 as _collections_pb2
from pqrag.v1 import search_pb2 as _search_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AskRequest(_message.Message):
    __slots__ = ("collection", "question", "num_passages", "filter", "params", "mode", "fusion", "grounding")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    NUM_PASSAGES_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    GROUNDING_FIELD_NUMBER: _ClassVar[int]
    collection: str
    question: str
    num_passages: int
    filter: _struct_pb2.Struct
    params: GenerationParams
    mode: _search_pb2.SearchMode
    fusion: _search_pb2.FusionParams
    grounding: _collections_pb2.Grounding
    def __init__(self, collection: _Optional[str] = ..., question: _Optional[str] = ..., num_passages: _Optional[int] = ..., filter: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., params: _Optional[_Union[GenerationParams, _Mapping]] = ..., mode: _Optional[_Union[_search_pb2.SearchMode, str]] = ..., fusion: _Optional[_Union[_search_pb2.FusionParams, _Mapping]] = ..., grounding: _Optional[_Union[_collections_pb2.Grounding, str]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ChatRequest(_message.Message):
    __slots__ = ("collection", "messages", "num_passages", "filter", "params", "mode", "fusion", "grounding")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NUM_PASSAGES_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    GROUNDING_FIELD_NUMBER: _ClassVar[int]
    collection: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    num_passages: int
    filter: _struct_pb2.Struct
    params: GenerationParams
    mode: _search_pb2.SearchMode
    fusion: _search_pb2.FusionParams
    grounding: _collections_pb2.Grounding
    def __init__(self, collection: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., num_passages: _Optional[int] = ..., filter: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., params: _Optional[_Union[GenerationParams, _Mapping]] = ..., mode: _Optional[_Union[_search_pb2.SearchMode, str]] = ..., fusion: _Optional[_Union[_search_pb2.FusionParams, _Mapping]] = ..., grounding: _Optional[_Union[_collections_pb2.Grounding, str]] = ...) -> None: ...

class GenerationParams(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "seed", "stop", "min_tokens", "ignore_eos")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    min_tokens: int
    ignore_eos: bool
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., min_p: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., presence_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., min_tokens: _Optional[int] = ..., ignore_eos: _Optional[bool] = ...) -> None: ...

class Citation(_message.Message):
    __slots__ = ("number", "document_id", "chunk_id", "score", "source", "start", "end", "snippet")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_FIELD_NUMBER: _ClassVar[int]
    number: int
    document_id: str
    chunk_id: int
    score: float
    source: str
    start: int
    end: int
    snippet: str
    def __init__(self, number: _Optional[int] = ..., document_id: _Optional[str] = ..., chunk_id: _Optional[int] = ..., score: _Optional[float] = ..., source: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., snippet: _Optional[str] = ...) -> None: ...

class Context(_message.Message):
    __slots__ = ("citations",)
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    citations: _containers.RepeatedCompositeFieldContainer[Citation]
    def __init__(self, citations: _Optional[_Iterable[_Union[Citation, _Mapping]]] = ...) -> None: ...

class AnswerDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class AnswerEnd(_message.Message):
    __slots__ = ("finish_reason", "prompt_tokens", "completion_tokens", "retrieval_ms", "time_to_first_token_ms", "total_ms")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_MS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    retrieval_ms: float
    time_to_first_token_ms: float
    total_ms: float
    def __init__(self, finish_reason: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., retrieval_ms: _Optional[float] = ..., time_to_first_token_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class AskResponse(_message.Message):
    __slots__ = ("context", "delta", "final")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    context: Context
    delta: AnswerDelta
    final: AnswerEnd
    def __init__(self, context: _Optional[_Union[Context, _Mapping]] = ..., delta: _Optional[_Union[AnswerDelta, _Mapping]] = ..., final: _Optional[_Union[AnswerEnd, _Mapping]] = ...) -> None: ...
