import threading

import numpy as np
import pytest

from common.errors import InvalidArgumentError
from retrieval.embedder import Embedder, default_model_path, get_embedder, resolve_model_path


@pytest.fixture(scope="module")
def embedder():
    return get_embedder(device="cpu")


def test_normalised_float32_output(embedder):
    texts = ["A cat sleeps on the warm mat.", "Stock markets fell sharply today.", "x"]
    x = embedder.embed(texts)
    assert x.dtype == np.float32 and x.shape == (3, embedder.dimension) == (3, 384)
    assert x.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    # Batched or one at a time, the vectors are the same.
    one = np.concatenate([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(one, x, atol=1e-5)


def test_embeddings_carry_meaning(embedder):
    q, near, far = embedder.embed(
        [
            "How do I bake bread at home?",
            "A simple recipe for homemade bread in the oven.",
            "The central bank raised interest rates by half a point.",
        ]
    )
    assert q @ near > q @ far + 0.2


def test_empty_input_and_counters():
    e = get_embedder(device="cpu")
    out = e.embed([])
    assert out.shape == (0, 384) and out.dtype == np.float32
    e.embed(["one", "two"])
    assert (e.calls, e.texts_embedded) == (2, 2)


def test_models_are_cached_per_path_and_device(embedder):
    other = get_embedder(None, device="cpu")
    assert other is not embedder  # own counters ...
    assert other._m is embedder._m  # ... on the same loaded model
    same_path = Embedder(default_model_path(), device="cpu")
    assert same_path._m is embedder._m
    assert resolve_model_path(None) == resolve_model_path("") == default_model_path()


def test_model_limits(embedder):
    assert embedder.max_seq_length == 256
    assert embedder.max_text_tokens == 254  # [CLS] and [SEP] take two


def test_bad_model_path(tmp_path):
    with pytest.raises(InvalidArgumentError, match="not a directory"):
        get_embedder(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgumentError, match="could not load"):
        get_embedder(str(tmp_path / "empty"), device="cpu")


def test_token_offsets_of_long_texts_match_one_pass(embedder):
    words = ["alpha", "béta", "😀", "tokenization!", "\n\n", "naïve", "a-b", "東京"]
    text = " ".join(words[i % len(words)] for i in range(12000))  # > 2 segments
    offs = embedder.token_offsets(text)
    tok = embedder._m.offsets_tokenizer
    ref = np.asarray(tok.encode(text, add_special_tokens=False).offsets).reshape(-1, 2)
    np.testing.assert_array_equal(offs, ref)
    assert offs.dtype == np.int64 and (np.diff(offs[:, 0]) >= 0).all()


def test_concurrent_embedding_is_safe(embedder):
    texts = [f"document number {i} about topic {i % 7}" for i in range(40)]
    ref = embedder.embed(texts)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = embedder.embed(texts)
            embedder.token_offsets(" ".join(texts))  # tokenizing alongside encode() must not clash
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for x in results.values():
        np.testing.assert_allclose(x, ref, atol=1e-5)
