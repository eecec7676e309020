"""common.errors: quote() cuts echoed input; the classes' bases (what a caller may catch)."""

from common.errors import (
    InvalidArgumentError,
    PermissionDeniedError,
    PqragError,
    ResourceExhaustedError,
    TooManyRequestsError,
    UnauthenticatedError,
    UnavailableError,
    quote,
)


def test_quote_keeps_short_input_and_cuts_long_input():
    assert quote("kb") == "'kb'" and quote(5) == "5" and quote(None) == "None"
    long = quote("x" * 100_000)
    assert long.startswith("'xxx") and long.endswith("(100000 characters)") and len(long) < 260
    assert len(quote(["y" * 1000])) < 260 and len(quote("z" * 50, limit=10)) < 40


def test_error_classes():
    assert issubclass(InvalidArgumentError, ValueError)
    assert issubclass(TooManyRequestsError, ResourceExhaustedError)
    for cls in (PermissionDeniedError, UnauthenticatedError, UnavailableError, TooManyRequestsError):
        assert issubclass(cls, PqragError)
