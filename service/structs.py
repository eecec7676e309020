"""google.protobuf.Struct <-> dict, shared by client and server (kept free of heavy imports)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2


def struct_to_dict(s: struct_pb2.Struct | None) -> dict[str, Any]:
    return json_format.MessageToDict(s) if s is not None else {}


def dict_to_struct(d: dict[str, Any] | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if d:
        s.update(d)
    return s
