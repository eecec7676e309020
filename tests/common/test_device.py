import pytest
import torch

from common.device import default_dtype, describe_dtype_choice, parse_dtype
from common.errors import InvalidArgumentError

AMX = frozenset({"fpu", "avx2", "avx512f", "amx_tile", "amx_bf16", "amx_int8"})  # Sapphire Rapids and later
AVX512_BF16 = frozenset({"avx2", "avx512f", "avx512_bf16"})  # Cooper Lake, Zen 4
AVX2 = frozenset({"fpu", "sse4_2", "avx", "avx2", "fma"})
NONE = frozenset()  # no /proc/cpuinfo (macOS, Windows)


@pytest.mark.parametrize(
    ("flags", "want"),
    [(AMX, torch.bfloat16), (AVX512_BF16, torch.bfloat16), (AVX2, torch.float32), (NONE, torch.float32)],
)
def test_cpu_default_dtype_follows_the_cpus_bf16_units(flags, want):
    assert default_dtype("cpu", flags=flags) == want
    assert default_dtype("cpu", torch.float32, flags) == want  # a float32 checkpoint is narrowed where it pays
    assert default_dtype("cpu", torch.float16, flags) == want  # no fast fp16 GEMM on CPUs
    assert default_dtype("cpu", torch.bfloat16, flags) == torch.bfloat16  # kept as stored: no doubled memory
    why = describe_dtype_choice("cpu", torch.float32, flags)
    assert why.startswith(str(want).removeprefix("torch."))
    assert ("has none" in why) == (want == torch.float32)


def test_cuda_default_is_bf16_and_keeps_half_precision_checkpoints():
    assert default_dtype("cuda", flags=AVX2) == torch.bfloat16
    assert default_dtype("cuda", torch.float32, AVX2) == torch.bfloat16
    assert default_dtype("cuda", torch.float16, AVX2) == torch.float16


def test_parse_dtype_takes_names_auto_and_dtypes_and_refuses_the_rest():
    assert parse_dtype("bfloat16", "cpu") == torch.bfloat16
    assert parse_dtype("float32", "cpu") == torch.float32
    assert parse_dtype(torch.float16, "cpu") == torch.float16
    assert parse_dtype("auto", "cpu", torch.bfloat16) == torch.bfloat16
    assert parse_dtype(None, "cpu") == default_dtype("cpu")
    with pytest.raises(InvalidArgumentError, match="bf16.*auto, float32, bfloat16, float16"):
        parse_dtype("bf16", "cpu")
