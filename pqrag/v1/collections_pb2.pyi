import datetime

from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from pqrag.v1 import search_pb2 as _search_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Grounding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GROUNDING_UNSPECIFIED: _ClassVar[Grounding]
    GROUNDING_FREE: _ClassVar[Grounding]
    GROUNDING_QUOTE: _ClassVar[Grounding]
    GROUNDING_EXTRACT: _ClassVar[Grounding]
GROUNDING_UNSPECIFIED: Grounding
GROUNDING_FREE: Grounding
GROUNDING_QUOTE: Grounding
GROUNDING_EXTRACT: Grounding

class IndexSpec(_message.Message):
    __slots__ = ("kind", "m", "nbits", "nlist", "nprobe", "metric", "backend", "rerank", "recall_target", "rerank_factor", "min_train_size")
    KIND_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    NBITS_FIELD_NUMBER: _ClassVar[int]
    NLIST_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    RERANK_FIELD_NUMBER: _ClassVar[int]
    RECALL_TARGET_FIELD_NUMBER: _ClassVar[int]
    RERANK_FACTOR_FIELD_NUMBER: _ClassVar[int]
    MIN_TRAIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    m: int
    nbits: int
    nlist: int
    nprobe: int
    metric: str
    backend: str
    rerank: bool
    recall_target: float
    rerank_factor: int
    min_train_size: int
    def __init__(self, kind: _Optional[str] = ..., m: _Optional[int] = ..., nbits: _Optional[int] = ..., nlist: _Optional[int] = ..., nprobe: _Optional[int] = ..., metric: _Optional[str] = ..., backend: _Optional[str] = ..., rerank: _Optional[bool] = ..., recall_target: _Optional[float] = ..., rerank_factor: _Optional[int] = ..., min_train_size: _Optional[int] = ...) -> None: ...

class IndexTuning(_message.Message):
    __slots__ = ("params", "recall", "recall_stderr", "recall_target", "met_target", "bytes_per_vector", "trained_vectors", "queries", "settings_trained", "train_seconds", "reason")
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    RECALL_STDERR_FIELD_NUMBER: _ClassVar[int]
    RECALL_TARGET_FIELD_NUMBER: _ClassVar[int]
    MET_TARGET_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_VECTOR_FIELD_NUMBER: _ClassVar[int]
    TRAINED_VECTORS_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_TRAINED_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    params: IndexSpec
    recall: float
    recall_stderr: float
    recall_target: float
    met_target: bool
    bytes_per_vector: float
    trained_vectors: int
    queries: int
    settings_trained: int
    train_seconds: float
    reason: str
    def __init__(self, params: _Optional[_Union[IndexSpec, _Mapping]] = ..., recall: _Optional[float] = ..., recall_stderr: _Optional[float] = ..., recall_target: _Optional[float] = ..., met_target: _Optional[bool] = ..., bytes_per_vector: _Optional[float] = ..., trained_vectors: _Optional[int] = ..., queries: _Optional[int] = ..., settings_trained: _Optional[int] = ..., train_seconds: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class ChunkingSpec(_message.Message):
    __slots__ = ("chunk_tokens", "overlap_tokens")
    CHUNK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_TOKENS_FIELD_NUMBER: _ClassVar[int]
    chunk_tokens: int
    overlap_tokens: int
    def __init__(self, chunk_tokens: _Optional[int] = ..., overlap_tokens: _Optional[int] = ...) -> None: ...

class Collection(_message.Message):
    __slots__ = ("name", "embedder", "dimension", "index", "chunking", "document_count", "chunk_count", "index_state", "create_time", "default_search_mode", "tuning", "index_training", "default_grounding", "reader_threshold", "min_similarity")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CHUNKING_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    INDEX_STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SEARCH_MODE_FIELD_NUMBER: _ClassVar[int]
    TUNING_FIELD_NUMBER: _ClassVar[int]
    INDEX_TRAINING_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_GROUNDING_FIELD_NUMBER: _ClassVar[int]
    READER_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    embedder: str
    dimension: int
    index: IndexSpec
    chunking: ChunkingSpec
    document_count: int
    chunk_count: int
    index_state: str
    create_time: _timestamp_pb2.Timestamp
    default_search_mode: _search_pb2.SearchMode
    tuning: IndexTuning
    index_training: bool
    default_grounding: Grounding
    reader_threshold: float
    min_similarity: float
    def __init__(self, name: _Optional[str] = ..., embedder: _Optional[str] = ..., dimension: _Optional[int] = ..., index: _Optional[_Union[IndexSpec, _Mapping]] = ..., chunking: _Optional[_Union[ChunkingSpec, _Mapping]] = ..., document_count: _Optional[int] = ..., chunk_count: _Optional[int] = ..., index_state: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., default_search_mode: _Optional[_Union[_search_pb2.SearchMode, str]] = ..., tuning: _Optional[_Union[IndexTuning, _Mapping]] = ..., index_training: _Optional[bool] = ..., default_grounding: _Optional[_Union[Grounding, str]] = ..., reader_threshold: _Optional[float] = ..., min_similarity: _Optional[float] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class UpdateCollectionRequest(_message.Message):
    __slots__ = ("collection", "update_mask")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class GetCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections", "next_page_token")
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[Collection]
    next_page_token: str
    def __init__(self, collections: _Optional[_Iterable[_Union[Collection, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
