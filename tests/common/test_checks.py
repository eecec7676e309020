import numpy as np
import pytest

from common.checks import is_int, non_negative_int, optional_positive_int, positive_int
from common.errors import InvalidArgumentError


@pytest.mark.parametrize("v", [1, 7, np.int64(3), np.uint8(200)])
def test_positive_int_accepts_integers(v):
    assert positive_int(v, "k") == int(v)
    assert type(positive_int(v, "k")) is int


@pytest.mark.parametrize("v", [0, -1, True, False, 1.0, "3", None, np.float32(2)])
def test_positive_int_refuses_the_rest_and_names_the_argument(v):
    with pytest.raises(InvalidArgumentError, match="top_k must be a positive integer"):
        positive_int(v, "top_k")


def test_maximum_is_inclusive_and_in_the_message():
    assert positive_int(50, "k", maximum=50) == 50
    with pytest.raises(InvalidArgumentError, match=r"k must be in 1\.\.50, got 51"):
        positive_int(51, "k", maximum=50)


def test_optional_and_non_negative():
    assert optional_positive_int(None, "nprobe") is None
    assert optional_positive_int(4, "nprobe") == 4
    with pytest.raises(InvalidArgumentError):
        optional_positive_int(0, "nprobe")
    assert non_negative_int(0, "n") == 0
    with pytest.raises(InvalidArgumentError):
        non_negative_int(-1, "n")
    assert not is_int(True) and is_int(np.int32(1))


def test_invalid_argument_is_a_value_error():
    assert issubclass(InvalidArgumentError, ValueError)
