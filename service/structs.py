"""google.protobuf.Struct <-> dict and SearchMode <-> its name, shared by client and server (kept free of heavy
imports)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from pqrag.v1 import search_pb2

MODE_PREFIX = "SEARCH_MODE_"


def struct_to_dict(s: struct_pb2.Struct | None) -> dict[str, Any]:
    return json_format.MessageToDict(s) if s is not None else {}


def dict_to_struct(d: dict[str, Any] | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if d:
        s.update(d)
    return s


def mode_to_proto(mode: str | None) -> int:
    """ "dense" | "lexical" | "hybrid" -> SearchMode; None -> SEARCH_MODE_UNSPECIFIED (the collection's default)."""
    if mode is None:
        return search_pb2.SEARCH_MODE_UNSPECIFIED
    return search_pb2.SearchMode.Value(MODE_PREFIX + mode.upper())


def mode_from_proto(mode: int) -> str | None:
    """SearchMode -> its name ("dense", ...); None for SEARCH_MODE_UNSPECIFIED; ValueError for an unknown number."""
    if mode == search_pb2.SEARCH_MODE_UNSPECIFIED:
        return None
    return search_pb2.SearchMode.Name(mode)[len(MODE_PREFIX) :].lower()
