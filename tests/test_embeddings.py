"""Precomputed item embeddings as a feature source: each file layout, and every check on load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DatasetError

from maf_pipeline.datasets import EmbeddingFileDataset
from maf_pipeline.pipelines.features.images import acquire_images, list_image_candidates
from maf_pipeline.pipelines.features.nodes import build_features_manifest, encode_images, encode_texts
from maf_pipeline.pipelines.preprocessing.nodes import filter_multimodal_completeness

IDS = ["B1", "B2", "B3", "B4"]
VECTORS = np.arange(16, dtype=np.float32).reshape(4, 4) + 1


@pytest.fixture
def index_file(tmp_path):
    path = tmp_path / "x.item2index"
    path.write_text("".join(f"{i}\t{n}\n" for n, i in enumerate(IDS)))
    return path


def _check(emb) -> None:
    assert emb.ids == IDS and emb.dim == 4
    np.testing.assert_array_equal(emb.vectors, VECTORS)
    assert len(emb.source["sha256"]) == 64 and emb.source["rows"] == 4


def test_raw_float32_with_an_index_file(tmp_path, index_file):
    path = tmp_path / "x.feat1CLS"
    VECTORS.astype("<f4").tofile(path)
    emb = EmbeddingFileDataset(str(path), dim=4, index_filepath=str(index_file)).load()
    _check(emb)
    assert emb.source["format"] == "raw_float32"


def test_npy_with_an_index_file(tmp_path, index_file):
    path = tmp_path / "x.npy"
    np.save(path, VECTORS.astype(np.float64))  # any float dtype, stored as float32
    _check(EmbeddingFileDataset(str(path), index_filepath=str(index_file)).load())


def test_parquet_with_a_vector_column(tmp_path):
    path = tmp_path / "x.parquet"
    pd.DataFrame({"item_id": IDS, "embedding": list(VECTORS)}).to_parquet(path)
    _check(EmbeddingFileDataset(str(path)).load())


def test_parquet_with_float_columns_and_another_id_column(tmp_path):
    path = tmp_path / "x.parquet"
    frame = pd.DataFrame(VECTORS, columns=[f"f{j}" for j in range(4)])
    frame.insert(0, "asin", IDS)
    frame.to_parquet(path)
    _check(EmbeddingFileDataset(str(path), id_column="asin").load())


def test_no_filepath_loads_none():
    assert EmbeddingFileDataset(None).load() is None


def test_wrong_dimension(tmp_path, index_file):
    path = tmp_path / "x.npy"
    np.save(path, VECTORS)
    with pytest.raises(DatasetError, match="4 dimensions, the catalog declares 8"):
        EmbeddingFileDataset(str(path), dim=8, index_filepath=str(index_file)).load()
    raw = tmp_path / "x.raw"
    VECTORS.astype("<f4").tofile(raw)
    with pytest.raises(DatasetError, match="not a whole number of 3-float32 rows"):
        EmbeddingFileDataset(str(raw), format="raw_float32", dim=3, index_filepath=str(index_file)).load()


def test_nan_is_refused_naming_the_rows(tmp_path, index_file):
    bad = VECTORS.copy()
    bad[2, 1] = np.nan
    path = tmp_path / "x.npy"
    np.save(path, bad)
    with pytest.raises(DatasetError, match=r"1 rows hold NaN .*rows \[2\], ids \['B3'\]"):
        EmbeddingFileDataset(str(path), index_filepath=str(index_file)).load()


def test_duplicate_ids_and_row_count(tmp_path, index_file):
    path = tmp_path / "x.parquet"
    pd.DataFrame({"item_id": ["B1", "B2", "B2", "B4"], "v": list(VECTORS)}).to_parquet(path)
    with pytest.raises(DatasetError, match=r"1 ids appear on several rows, e.g. \['B2'\]"):
        EmbeddingFileDataset(str(path)).load()
    short = tmp_path / "y.npy"
    np.save(short, VECTORS[:3])
    with pytest.raises(DatasetError, match="the row count does not match"):
        EmbeddingFileDataset(str(short), index_filepath=str(index_file)).load()
    np.save(tmp_path / "x.npy", VECTORS)
    doubled = tmp_path / "z.item2index"
    doubled.write_text("B1\t0\nB1\t1\nB3\t2\nB4\t3\n")
    with pytest.raises(DatasetError, match="duplicate id 'B1'"):
        EmbeddingFileDataset(str(short).replace("y.npy", "x.npy"), index_filepath=str(doubled)).load()


@pytest.fixture
def embeddings(tmp_path):
    path = tmp_path / "e.parquet"
    pd.DataFrame({"item_id": IDS, "v": list(VECTORS)}).to_parquet(path)
    return EmbeddingFileDataset(str(path)).load()


def test_feature_tables_from_the_file_with_a_missing_item(embeddings, caplog):
    index = pd.DataFrame({"item_idx": [1, 2, 3], "item_id": ["B3", "B9", "B1"]})  # B9 has no vector
    params = {"storage_dtype": "float32", "source": "file"}
    text = encode_texts(index, pd.DataFrame(), None, params, {}, 0, embeddings)
    image = encode_images(index, pd.DataFrame(), None, None, params, {}, 0, embeddings, "file")
    for table in (text, image):
        feats = table["features"]
        assert feats.shape == (4, 4) and not feats[0].any() and not feats[2].any()
        assert torch.equal(feats[1], torch.from_numpy(VECTORS[2])) and torch.equal(
            feats[3], torch.from_numpy(VECTORS[0])
        )
        meta = table["__metadata__"]
        assert meta["missing"] == 1 and meta["missing_examples"] == ["B9"] and meta["source"]["sha256"]
    assert "1 of 3 items have no vector" in caplog.text
    availability = pd.DataFrame({"item_id": ["B1"], "has_image": [True], "status": ["vector"]})
    manifest = build_features_manifest(
        image, text, {"features": torch.zeros(4, 0)}, {"labels": []}, availability, index
    )
    assert manifest["modalities"]["text"]["source"]["file"].endswith("e.parquet")
    assert manifest["modalities"]["image"]["missing"] == 1 and manifest["modalities"]["image"]["shape"] == [
        4,
        4,
    ]


def test_items_without_a_vector_are_missing_for_the_completeness_filter(embeddings):
    interactions = pd.DataFrame(
        {
            "user_id": ["u"] * 3,
            "item_id": ["B1", "B9", "B2"],
            "rating": np.float32(1),
            "timestamp": pd.to_datetime([1, 2, 3], unit="s", utc=True),
        }
    )
    items = pd.DataFrame({"item_id": ["B1", "B9", "B2"], "text": ["a", "b", "c"], "categories": [[], [], []]})
    params = {"source": "file", "download": {}}
    candidates = list_image_candidates(interactions, items, None, None, params, embeddings)
    assert dict(zip(candidates["item_id"], candidates["status"], strict=True)) == {
        "B1": "vector", "B2": "vector", "B9": "no_vector"
    }  # fmt: skip
    availability, report = acquire_images(interactions, items, None, None, params, embeddings)
    assert availability["has_image"].tolist() == [True, True, False] and report["attempted"] == 0
    kept, stats = filter_multimodal_completeness(interactions, items, availability, ["image"])
    assert set(kept["item_id"]) == {"B1", "B2"} and stats["items_lacking"] == {"image": 1}
    kept, stats = filter_multimodal_completeness(
        interactions, items, availability, ["text"], embeddings, "file"
    )
    assert set(kept["item_id"]) == {"B1", "B2"} and stats["items_lacking"] == {"text": 1}
    with pytest.raises(ValueError, match="image_embeddings has no filepath"):
        list_image_candidates(interactions, items, None, None, params, None)
