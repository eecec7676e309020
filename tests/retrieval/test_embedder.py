import os
import threading

import numpy as np
import pytest

from common.errors import FailedPreconditionError, InvalidArgumentError, PermissionDeniedError
from retrieval.embedder import (
    DEFAULT_MODEL_NAME,
    DTYPE_ENV,
    Embedder,
    available_models,
    check_model_name,
    default_model_path,
    get_embedder,
    resolve_model,
    stored_model_name,
)


@pytest.fixture(scope="module")
def embedder():
    return get_embedder(device="cpu", dtype="float32")  # the exact comparisons below are float32's


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
    other = get_embedder(None, device="cpu", dtype="float32")
    assert other is not embedder  # own counters ...
    assert other._m is embedder._m  # ... on the same loaded model
    same = Embedder(DEFAULT_MODEL_NAME, device="cpu", dtype="float32")
    assert same._m is embedder._m
    assert resolve_model(None) == resolve_model("") == resolve_model(DEFAULT_MODEL_NAME) == default_model_path()


def test_model_limits(embedder):
    assert embedder.max_seq_length == 256
    assert embedder.max_text_tokens == 254  # [CLS] and [SEP] take two


def models_dir(tmp_path):
    """A models dir with a copy of the default under another name, a directory that is not a sentence-transformers
    model (a generator checkpoint has config.json and weights, but no modules.json) and a broken one."""
    import shutil

    root = tmp_path / "models"
    shutil.copytree(default_model_path(), root / "minilm-copy")
    (root / "generator").mkdir()
    (root / "generator" / "config.json").write_text("{}")
    (root / "broken").mkdir()
    (root / "broken" / "modules.json").write_text("not json")
    return root


def test_embedders_are_names_inside_allowed_model_dirs(tmp_path, embedder):
    root = models_dir(tmp_path)
    assert available_models([root]) == [DEFAULT_MODEL_NAME, "broken", "minilm-copy"]
    e = get_embedder("minilm-copy", device="cpu", dtype="float32", model_dirs=[root])  # as the fixture
    assert e.name == "minilm-copy" and e._m is not embedder._m
    np.testing.assert_allclose(e.embed(["same weights"]), embedder.embed(["same weights"]), atol=1e-6)
    assert check_model_name("minilm-copy", [root]) == "minilm-copy"
    assert check_model_name(DEFAULT_MODEL_NAME, [root]) is None and check_model_name("", [root]) is None
    secret = str(tmp_path)
    for name in (
        str(root / "minilm-copy"),  # a path, even to an allowed model
        "~/models",
        "../models/minilm-copy",
        "minilm-copy/../minilm-copy",
        "..",
        "generator",  # not a sentence-transformers model
        "missing",
        "x" * 10_000,
    ):
        with pytest.raises(PermissionDeniedError) as info:
            get_embedder(name, device="cpu", model_dirs=[root])
        message = str(info.value).replace(name[:200], "")  # the caller's own input may be quoted back, no more
        assert secret not in message and os.path.expanduser("~") not in message, message
        assert "minilm-copy" in message and len(message) < 800, message
    with pytest.raises(PermissionDeniedError):
        get_embedder("minilm-copy", device="cpu")  # not without its models dir
    with pytest.raises(FailedPreconditionError, match="could not be loaded") as info:
        get_embedder("broken", device="cpu", model_dirs=[root])
    assert secret not in str(info.value)


def test_stored_paths_of_older_collections_map_to_names(tmp_path):
    root = models_dir(tmp_path)
    assert stored_model_name(None) is None and stored_model_name("minilm-copy") == "minilm-copy"
    assert stored_model_name(default_model_path()) is None
    assert stored_model_name(str(root / "minilm-copy"), [root]) == "minilm-copy"
    with pytest.raises(FailedPreconditionError, match="--models-dir") as info:
        stored_model_name(str(root / "minilm-copy"))
    assert str(tmp_path) not in str(info.value)


def test_matches_sentence_transformers_encode(embedder):
    texts = ["A cat sleeps.", "word " * 400, "Stock markets fell sharply today. " * 5, "x", "é 東京 😀"]
    texts += [f"{i}: {t}" for i, t in enumerate(texts * 3)]  # 20 lengths mixed: bulk sorts them across its batches
    ref = embedder._m.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    np.testing.assert_allclose(embedder.embed(texts), ref, atol=1e-5)
    np.testing.assert_allclose(embedder.embed(texts, bulk=True), ref, atol=1e-5)  # rows back in the input order


def test_queries_never_wait_for_bulk_embedding(embedder):
    """A bulk embedding in progress holds no lock a query needs: while one runs (slowed down on purpose, batch by
    batch), queries finish, and the bulk batches wait for queries in flight."""
    import time

    from retrieval import embedder as module

    m = embedder._m
    started, release = threading.Event(), threading.Event()
    real = Embedder._encode
    calls: list[str] = []

    def slow_encode(self, texts):
        calls.append("bulk" if len(texts) == module.BULK_BATCH_SIZE else "query")
        if len(texts) == module.BULK_BATCH_SIZE:
            started.set()
            release.wait(10)
        return real(self, texts)

    bulk_texts = [f"chunk {i} of a long document" for i in range(3 * module.BULK_BATCH_SIZE)]
    Embedder._encode = slow_encode
    try:
        out: dict = {}
        t = threading.Thread(target=lambda: out.setdefault("x", embedder.embed(bulk_texts, bulk=True)))
        t.start()
        assert started.wait(10)
        t0 = time.perf_counter()
        q = embedder.embed(["a query while the bulk batch is stuck"])
        assert time.perf_counter() - t0 < 5 and q.shape == (1, embedder.dimension)
        with m.priority.query():  # a query in flight: the next bulk batch waits for it
            release.set()
            time.sleep(0.3)
            assert calls.count("bulk") == 1
        t.join(30)
    finally:
        Embedder._encode = real
    assert calls.count("bulk") == 3
    np.testing.assert_allclose(out["x"], embedder.embed(bulk_texts), atol=1e-5)


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


def test_dtype_follows_the_cpu_unless_asked_and_embeddings_stay_float32(embedder, monkeypatch):
    import torch

    from common.device import default_dtype

    monkeypatch.delenv(DTYPE_ENV, raising=False)
    assert get_embedder(device="cpu").dtype == str(default_dtype("cpu")).removeprefix("torch.")
    bf16 = get_embedder(device="cpu", dtype="bfloat16")
    assert bf16._m is not embedder._m and {p.dtype for p in bf16._m.model.parameters()} == {torch.bfloat16}
    texts = ["A cat sleeps on the warm mat.", "Stock markets fell sharply today. " * 20, "é 東京 😀"]
    x, y = embedder.embed(texts), bf16.embed(texts, bulk=True)
    assert y.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    assert ((x * y).sum(axis=1) > 0.99).all()  # bf16 keeps the direction (SciFact: bench/embed_dtype.py)
    monkeypatch.setenv(DTYPE_ENV, "float32")
    assert get_embedder(device="cpu")._m is embedder._m
    monkeypatch.setenv(DTYPE_ENV, "bf16")
    with pytest.raises(InvalidArgumentError, match="unknown dtype 'bf16'"):
        get_embedder(device="cpu")
