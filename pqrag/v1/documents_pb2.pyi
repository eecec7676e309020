from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Document(_message.Message):
    __slots__ = ("id", "text", "metadata", "source", "chunk_count", "chunks")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    metadata: _struct_pb2.Struct
    source: str
    chunk_count: int
    chunks: _containers.RepeatedCompositeFieldContainer[Chunk]
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., source: _Optional[str] = ..., chunk_count: _Optional[int] = ..., chunks: _Optional[_Iterable[_Union[Chunk, _Mapping]]] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("id", "text", "start", "end")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    id: int
    text: str
    start: int
    end: int
    def __init__(self, id: _Optional[int] = ..., text: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("collection", "document")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    document: Document
    def __init__(self, collection: _Optional[str] = ..., document: _Optional[_Union[Document, _Mapping]] = ...) -> None: ...

class IngestAck(_message.Message):
    __slots__ = ("document_id", "chunk_count", "replaced", "index")
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    chunk_count: int
    replaced: bool
    index: int
    def __init__(self, document_id: _Optional[str] = ..., chunk_count: _Optional[int] = ..., replaced: _Optional[bool] = ..., index: _Optional[int] = ...) -> None: ...

class IngestSummary(_message.Message):
    __slots__ = ("collection", "document_count", "chunk_count", "replaced_count", "document_ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    REPLACED_COUNT_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    document_count: int
    chunk_count: int
    replaced_count: int
    document_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., document_count: _Optional[int] = ..., chunk_count: _Optional[int] = ..., replaced_count: _Optional[int] = ..., document_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetDocumentRequest(_message.Message):
    __slots__ = ("collection", "document_id", "include_chunks")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    document_id: str
    include_chunks: bool
    def __init__(self, collection: _Optional[str] = ..., document_id: _Optional[str] = ..., include_chunks: _Optional[bool] = ...) -> None: ...

class DeleteDocumentRequest(_message.Message):
    __slots__ = ("collection", "document_id")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    collection: str
    document_id: str
    def __init__(self, collection: _Optional[str] = ..., document_id: _Optional[str] = ...) -> None: ...
