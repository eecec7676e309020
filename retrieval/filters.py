"""Metadata filters -> a SQL condition on the documents table, so a search filters inside SQLite and the index search.

    where, params = compile_filter({"lang": "en", "tag": {"$in": ["a", "b"]}})
    ids = store.allowed_ids(cid, where, params)     # chunk ids the index search may return

{"field": value} and {"field": {"$eq": value}} test equality, {"field": {"$in": [...]}} membership; several fields
are ANDed. JSON types stay apart (1 != "1" != true). Field names and values are bound as parameters, never spliced
into the SQL. The condition reads documents as `d` (store.allowed_ids's join).
"""

from __future__ import annotations

import re
from typing import Any

from common.errors import InvalidArgumentError

FIELD_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
MAX_IN_VALUES = 1024
FILTER_HELP = (
    'supported filters: {"field": value} (equality), {"field": {"$eq": value}}, '
    '{"field": {"$in": [v1, v2, ...]}} (membership); several fields are ANDed; values are strings, '
    "numbers or booleans; field names match [A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"
)


def _scalar_condition(path: str, value: Any, field: str) -> tuple[str, list[Any]]:
    """SQL that is true when metadata[field] equals value, keeping JSON types apart (1 != "1" != true).

    path: the JSON path of the field, bound as a parameter (never spliced into the SQL).
    """
    if isinstance(value, bool):
        return "json_type(d.metadata, ?) = ?", [path, "true" if value else "false"]
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidArgumentError(f"filter on {field!r}: {value!r} is not a finite number; {FILTER_HELP}")
        return (
            "(json_type(d.metadata, ?) IN ('integer', 'real') AND json_extract(d.metadata, ?) = ?)",
            [path, path, value],
        )
    if isinstance(value, str):
        return "(json_type(d.metadata, ?) = 'text' AND json_extract(d.metadata, ?) = ?)", [path, path, value]
    raise InvalidArgumentError(
        f"filter on {field!r}: value {value!r} of type {type(value).__name__} is not supported; {FILTER_HELP}"
    )


def compile_filter(filter: dict[str, Any] | None) -> tuple[str, list[Any]]:
    """A metadata filter -> (SQL condition on documents `d`, parameters). ("1", []) for no filter.

    {"lang": "en"}, {"lang": {"$eq": "en"}}, {"tag": {"$in": ["a", "b"]}}; several keys = AND.
    """
    if filter is None:
        return "1", []
    if not isinstance(filter, dict):
        raise InvalidArgumentError(f"filter must be an object, got {type(filter).__name__}; {FILTER_HELP}")
    conds: list[str] = []
    params: list[Any] = []
    for key, spec in filter.items():
        if not isinstance(key, str) or not FIELD_RE.match(key):
            raise InvalidArgumentError(f"bad filter field name {key!r}; {FILTER_HELP}")
        path = '$."' + key + '"'  # quoted member name: dots and dashes are part of the key
        if isinstance(spec, dict):
            if len(spec) != 1:
                raise InvalidArgumentError(
                    f"filter on {key!r} must have exactly one operator, got {sorted(spec)}; {FILTER_HELP}"
                )
            ((op, value),) = spec.items()
            if op == "$eq":
                c, p = _scalar_condition(path, value, key)
            elif op == "$in":
                if not isinstance(value, (list, tuple)) or not value:
                    raise InvalidArgumentError(f"filter on {key!r}: $in needs a non-empty list; {FILTER_HELP}")
                if len(value) > MAX_IN_VALUES:
                    raise InvalidArgumentError(
                        f"filter on {key!r}: $in takes at most {MAX_IN_VALUES} values, got {len(value)}; {FILTER_HELP}"
                    )
                parts = [_scalar_condition(path, v, key) for v in value]
                c = "(" + " OR ".join(pc for pc, _ in parts) + ")"
                p = [x for _, pp in parts for x in pp]
            else:
                raise InvalidArgumentError(f"unknown filter operator {op!r} on {key!r}; {FILTER_HELP}")
        else:
            c, p = _scalar_condition(path, spec, key)
        conds.append(c)
        params.extend(p)
    return (" AND ".join(conds) if conds else "1"), params
