"""Multi-hot category features, item-index checks and the features manifest."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from maf_pipeline.pipelines.features.nodes import (
    build_features_manifest,
    encode_categories,
    item_texts,
    ordered_item_ids,
)

CATS = {"min_frequency": 1, "drop_universal": True, "max_labels": None, "storage_dtype": "float32"}
TOP = "Clothing, Shoes & Jewelry"


def _index(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"item_idx": range(1, len(ids) + 1), "item_id": ids})


def _items(categories: dict[str, object]) -> pd.DataFrame:
    return pd.DataFrame({"item_id": list(categories), "categories": list(categories.values())})


def test_multi_hot_drops_the_universal_label_and_orders_by_frequency():
    items = _items(
        {
            "a": [TOP, "Women", "Shoes", "Boots"],
            "b": [TOP, "Men", "Shoes"],
            "c": [TOP, "Women", "Dresses"],
            "d": [TOP, "Women", "Shoes", "Shoes"],  # a repeated label counts once
        }
    )
    table, vocab = encode_categories(_index(["d", "c", "b", "a"]), items, CATS)
    assert vocab["labels"] == ["Shoes", "Women", "Boots", "Dresses", "Men"]
    assert vocab["dropped_universal"] == [TOP]
    assert vocab["frequency"] == {"Shoes": 3, "Women": 3, "Boots": 1, "Dresses": 1, "Men": 1}
    f = table["features"]
    assert f.shape == (5, 5) and f.dtype == torch.float32
    assert f.tolist() == [
        [0, 0, 0, 0, 0],  # padding
        [1, 1, 0, 0, 0],  # d
        [0, 1, 0, 1, 0],  # c
        [1, 0, 0, 0, 1],  # b
        [1, 1, 1, 0, 0],  # a
    ]
    assert table["__metadata__"]["dim"] == 5 and table["__metadata__"]["missing"] == 0


def test_min_frequency_max_labels_and_missing_categories():
    items = _items({"a": ["X", "Y"], "b": ["X", "Z"], "c": [], "d": None, "e": ["Y", "X"]})
    index = _index(["a", "b", "c", "d", "e", "f"])  # f has no items row at all
    table, vocab = encode_categories(index, items, {**CATS, "min_frequency": 2})
    assert vocab["labels"] == ["X", "Y"] and vocab["dropped_rare"] == 1 and vocab["dropped_universal"] == []
    meta = table["__metadata__"]
    assert meta["missing"] == 3 and meta["missing_examples"] == ["c", "d", "f"]
    table, vocab = encode_categories(index, items, {**CATS, "max_labels": 1, "storage_dtype": "float16"})
    assert vocab["labels"] == ["X"] and table["features"].shape == (7, 1)
    assert table["features"].dtype == torch.float16


def test_universal_label_kept_when_asked():
    items = _items({"a": [TOP, "Women"], "b": [TOP, "Men"]})
    _, vocab = encode_categories(_index(["a", "b"]), items, {**CATS, "drop_universal": False})
    assert TOP in vocab["labels"]


def test_item_index_must_be_contiguous_from_one():
    assert ordered_item_ids(pd.DataFrame({"item_idx": [2, 1], "item_id": ["b", "a"]})) == ["a", "b"]
    for bad in ([0, 1], [1, 3], [1, 1]):
        with pytest.raises(ValueError):
            ordered_item_ids(pd.DataFrame({"item_idx": bad, "item_id": ["a", "b"]}))
    with pytest.raises(ValueError, match="duplicate"):
        ordered_item_ids(pd.DataFrame({"item_idx": [1, 2], "item_id": ["a", "a"]}))


def test_item_texts_fall_back_to_title_and_skip_blanks():
    items = pd.DataFrame(
        {"item_id": ["a", "b", "c"], "title": ["T-a", "T-b", " "], "text": ["full a", None, ""]}
    )
    assert item_texts(items) == {"a": "full a", "b": "T-b"}


def _table(rows: int, dim: int, meta: dict | None = None) -> dict:
    features = torch.zeros(rows, dim)
    features[1:] = 1.0
    return {"features": features, "__metadata__": meta or {}}


def test_manifest_gathers_metadata_and_flags_fallbacks():
    index = _index(["a", "b"])
    availability = pd.DataFrame(
        {"item_id": ["a", "b", "z"], "has_image": [True, True, False], "status": ["ok", "stored", "corrupt"]}
    )
    image = _table(
        3, 4, {"weights": {"source": "random", "fallback": True, "identity": "random"}, "missing": 0}
    )
    text = _table(3, 2, {"weights": {"source": "file", "fallback": False, "identity": "x"}, "cache_hits": 2})
    cats = _table(3, 2, {"dim": 2})
    manifest = build_features_manifest(image, text, cats, {"labels": ["p", "q"]}, availability, index)
    assert manifest["num_items"] == 2
    assert (
        manifest["modalities"]["image"]["shape"] == [3, 4]
        and manifest["modalities"]["text"]["cache_hits"] == 2
    )
    assert manifest["modalities"]["category"]["dtype"] == "float32"
    assert len(manifest["warnings"]) == 1 and manifest["warnings"][0].startswith(
        "image: no pretrained weights"
    )
    assert manifest["image_availability"] == {
        "items": 3,
        "with_image": 2,
        "status": {"corrupt": 1, "ok": 1, "stored": 1},
    }


def test_manifest_rejects_misaligned_tables():
    index = _index(["a", "b"])
    availability = pd.DataFrame({"item_id": ["a"], "has_image": [True], "status": ["ok"]})
    good = _table(3, 2)
    with pytest.raises(ValueError, match="rows"):
        build_features_manifest(_table(4, 2), good, good, {"labels": ["p", "q"]}, availability, index)
    dirty = _table(3, 2)
    dirty["features"][0, 1] = 0.5
    with pytest.raises(ValueError, match="padding"):
        build_features_manifest(good, dirty, good, {"labels": ["p", "q"]}, availability, index)
    with pytest.raises(ValueError, match="labels"):
        build_features_manifest(good, good, good, {"labels": ["p"]}, availability, index)


def test_unicode_forms_of_a_label_are_one_vocabulary_entry():
    import unicodedata

    nfc, nfd = "Café Wear", unicodedata.normalize("NFD", "Café Wear")
    table, vocab = encode_categories(
        _index(["a", "b", "c"]), _items({"a": [nfc], "b": [nfd], "c": ["Men"]}), CATS
    )
    assert vocab["labels"] == [nfc, "Men"] and vocab["frequency"][nfc] == 2
    assert table["features"][1:, 0].tolist() == [1.0, 1.0, 0.0]


def test_texts_are_cut_before_tokenising():
    from maf_pipeline.pipelines.features.nodes import CHARS_PER_TOKEN, cap_texts

    texts, capped = cap_texts({"a": "x" * 10_000_000, "b": "short"}, max_tokens=256)
    assert capped == 1 and len(texts["a"]) == 256 * CHARS_PER_TOKEN and texts["b"] == "short"
