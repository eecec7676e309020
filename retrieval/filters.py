"""Metadata filters -> a SQL condition on the documents table, so a search filters inside SQLite and the index search.

    where, params = compile_filter({"lang": "en", "tag": {"$in": ["a", "b"]}})
    ids = store.allowed_ids(cid, where, params)     # chunk ids the index search may return

{"field": value} and {"field": {"$eq": value}} test equality, {"field": {"$in": [...]}} membership; several fields
are ANDed. JSON types stay apart (1 != "1" != true). Field names and values are bound as parameters, never spliced
into the SQL. The condition reads documents as `d` (store.allowed_ids's join).

The cost of a filter is bounded, and so is the depth of its SQL expression (SQLite refuses trees deeper than 1000):
an `$in` becomes one `IN (...)` list per JSON type (not a chain of ORs), and the fields' conditions are ANDed as a
balanced tree, so any filter within the limits below compiles to a condition a few levels deep.
"""

from __future__ import annotations

import re
from typing import Any

from common.errors import InvalidArgumentError, quote

FIELD_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
MAX_FILTER_FIELDS = 64  # fields one filter may test
MAX_IN_VALUES = 1024  # values of one $in
MAX_FILTER_VALUES = 4096  # values of the whole filter (SQLite binds at most 32766 parameters per statement)
FILTER_HELP = (
    'supported filters: {"field": value} (equality), {"field": {"$eq": value}}, '
    '{"field": {"$in": [v1, v2, ...]}} (membership); several fields are ANDed (at most 64); values are strings, '
    "numbers or booleans; field names match [A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"
)


def _check_value(value: Any, field: str) -> Any:
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidArgumentError(f"filter on {quote(field)}: {value!r} is not a finite number; {FILTER_HELP}")
        return value
    raise InvalidArgumentError(
        f"filter on {quote(field)}: value {quote(value)} of type {type(value).__name__} is not supported; {FILTER_HELP}"
    )


def _membership(path: str, values: list[Any], field: str) -> tuple[str, list[Any]]:
    """SQL that is true when metadata[field] is one of values, keeping JSON types apart (1 != "1" != true): one
    IN list per type present, ORed (at most three terms, whatever the number of values).

    path: the JSON path of the field, bound as a parameter (never spliced into the SQL).
    """
    values = [_check_value(v, field) for v in values]
    bools = sorted({"true" if v else "false" for v in values if isinstance(v, bool)})
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    texts = [v for v in values if isinstance(v, str)]
    terms: list[str] = []
    params: list[Any] = []

    def marks(n: int) -> str:
        return ", ".join("?" * n)

    if bools:
        terms.append(f"json_type(d.metadata, ?) IN ({marks(len(bools))})")
        params += [path, *bools]
    if numbers:
        terms.append(
            "(json_type(d.metadata, ?) IN ('integer', 'real') AND "
            f"json_extract(d.metadata, ?) IN ({marks(len(numbers))}))"
        )
        params += [path, path, *numbers]
    if texts:
        terms.append(f"(json_type(d.metadata, ?) = 'text' AND json_extract(d.metadata, ?) IN ({marks(len(texts))}))")
        params += [path, path, *texts]
    return "(" + " OR ".join(terms) + ")", params


def _all_of(conds: list[str]) -> str:
    """conds ANDed as a balanced tree: depth log2(n), where "a AND b AND c ..." would nest n deep."""
    if len(conds) == 1:
        return conds[0]
    mid = len(conds) // 2
    return f"({_all_of(conds[:mid])} AND {_all_of(conds[mid:])})"


def compile_filter(filter: dict[str, Any] | None) -> tuple[str, list[Any]]:
    """A metadata filter -> (SQL condition on documents `d`, parameters). ("1", []) for no filter.

    {"lang": "en"}, {"lang": {"$eq": "en"}}, {"tag": {"$in": ["a", "b"]}}; several keys = AND.
    """
    if filter is None:
        return "1", []
    if not isinstance(filter, dict):
        raise InvalidArgumentError(f"filter must be an object, got {type(filter).__name__}; {FILTER_HELP}")
    if len(filter) > MAX_FILTER_FIELDS:
        raise InvalidArgumentError(
            f"the filter tests {len(filter)} fields, more than {MAX_FILTER_FIELDS}; {FILTER_HELP}"
        )
    conds: list[str] = []
    params: list[Any] = []
    n_values = 0
    for key, spec in filter.items():
        if not isinstance(key, str) or not FIELD_RE.match(key):
            raise InvalidArgumentError(f"bad filter field name {quote(key)}; {FILTER_HELP}")
        path = '$."' + key + '"'  # quoted member name: dots and dashes are part of the key
        if isinstance(spec, dict):
            if len(spec) != 1:
                ops = quote(sorted(map(str, spec)))
                raise InvalidArgumentError(
                    f"filter on {key!r} must have exactly one operator, got {ops}; {FILTER_HELP}"
                )
            ((op, value),) = spec.items()
            if op == "$eq":
                values = [value]
            elif op == "$in":
                if not isinstance(value, (list, tuple)) or not value:
                    raise InvalidArgumentError(f"filter on {key!r}: $in needs a non-empty list; {FILTER_HELP}")
                if len(value) > MAX_IN_VALUES:
                    raise InvalidArgumentError(
                        f"filter on {key!r}: $in takes at most {MAX_IN_VALUES} values, got {len(value)}; {FILTER_HELP}"
                    )
                values = list(value)
            else:
                raise InvalidArgumentError(f"unknown filter operator {quote(op)} on {key!r}; {FILTER_HELP}")
        else:
            values = [spec]
        n_values += len(values)
        if n_values > MAX_FILTER_VALUES:
            raise InvalidArgumentError(f"the filter holds more than {MAX_FILTER_VALUES} values in all; {FILTER_HELP}")
        c, p = _membership(path, values, key)
        conds.append(c)
        params.extend(p)
    return (_all_of(conds) if conds else "1"), params
