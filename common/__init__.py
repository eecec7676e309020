"""The base layer: what every other package needs and nothing of pqrag's own.

    common.errors   the domain errors the service maps to status codes (InvalidArgumentError, NotFoundError, ...)
                    and quote(), which cuts the caller input a message echoes to ~200 characters
    common.checks   argument checks written once ("a positive integer, not a bool")
    common.fs       crash-safe file writes (atomic_write, replace_durably, fsync_path)
    common.device   the default torch device

It imports no other pqrag package (checked by `make lint`), so retrieval, llm, rag and service can all use it.
"""
