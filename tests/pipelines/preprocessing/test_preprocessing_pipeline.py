"""The preprocessing and sequences pipelines run end to end through the project's own catalog entries
(redirected to tmp_path), and a re-run from a filter node recomputes only what depends on it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.runner import SequentialRunner

from maf_pipeline.pipelines import preprocessing, sequences

ROOT = Path(__file__).resolve().parents[3]
# image candidates and verified images come from the features pipeline (list_image_candidates, acquire_images)
PIPELINE_INPUTS = {
    "interactions",
    "items",
    "image_candidates",
    "image_availability",
    "text_embeddings",
    "ingestion_report",  # its category-label counts go into dataset_statistics.md
}


@pytest.fixture(scope="module")
def conf() -> tuple[dict[str, Any], dict[str, Any]]:
    """The project's catalog and parameters from conf/base."""
    loader = OmegaConfigLoader(str(ROOT / "conf"), base_env="base", default_run_env="base")
    return dict(loader["catalog"]), dict(loader["parameters"])


def pipelines() -> Pipeline:
    """Preprocessing followed by sequences, as in the full chain."""
    return preprocessing.create_pipeline() + sequences.create_pipeline()


def synthetic_inputs(seed: int = 0) -> dict[str, pd.DataFrame]:
    """A small random data set with every kind of dirt the filters handle."""
    rng = np.random.default_rng(seed)
    n_users, n_items, n = 80, 40, 1200
    users = rng.integers(0, n_users, n)
    items = (users % 4) * 10 + rng.integers(0, 10, n)  # four item communities
    seconds = rng.integers(
        pd.Timestamp("2015-06-01").value // 10**9, pd.Timestamp("2018-06-01").value // 10**9, n
    )
    interactions = pd.DataFrame(
        {
            "user_id": pd.array([f"U{u:03d}" for u in users], dtype=str),
            "item_id": pd.array([f"{i:010d}" for i in items], dtype=str),  # all-digit ids stay strings
            "rating": rng.integers(1, 6, n).astype(np.float32),
            "timestamp": pd.to_datetime(seconds, unit="s", utc=True),
        }
    )
    labels = ["Women", "Men", "Girls", "Boys"]
    ids = [f"{i:010d}" for i in range(n_items + 2)]  # two items nobody rated
    meta = pd.DataFrame(
        {
            "item_id": ids,
            "title": [f"item {i}" for i in range(len(ids))],
            "text": ["" if i == 3 else f"item {i} text" for i in range(len(ids))],
            "categories": [
                [] if i == 5 else ["Clothing, Shoes & Jewelry", labels[(i // 10) % 4], "Clothing"]
                for i in range(len(ids))
            ],
            "image_urls": [[f"http://x/{i}.jpg"] for i in range(len(ids))],
            "brand": "b",
        }
    ).drop(index=7)  # one rated item without metadata
    candidates = pd.DataFrame({"item_id": ids, "has_image": [i != 11 for i in range(len(ids))]})
    # item 12 is a candidate whose image then fails to download or verify
    availability = pd.DataFrame({"item_id": ids, "has_image": [i not in (11, 12) for i in range(len(ids))]})
    return {
        "interactions": interactions,
        "items": meta,
        "image_candidates": candidates,
        "image_availability": availability,
        "ingestion_report": {"files": {"metadata": {"labels": {"kept_distinct": 6, "dropped": {}}}}},
    }


def make_catalog(
    conf: tuple[dict, dict], tmp_path: Path, overrides: dict[str, Any]
) -> tuple[DataCatalog, dict]:
    """The catalog entries of the pipelines' datasets with data/ paths moved under tmp_path, plus params."""
    catalog_conf, params = copy.deepcopy(conf[0]), copy.deepcopy(conf[1])
    for dotted, value in overrides.items():
        *path, last = dotted.split(".")
        target = params
        for key in path:
            target = target[key]
        target[last] = value
    pipe = pipelines()
    names = pipe.datasets() - {d for d in pipe.datasets() if d.startswith("params:")}
    entries = {}
    for name in names:
        if name not in catalog_conf:
            assert name == "image_availability", f"{name} is not declared in conf/base/catalog.yml"
            # declared by the features pipeline; stand in for it until it is
            entries[name] = {
                "type": "pandas.ParquetDataset",
                "filepath": str(tmp_path / "image_availability.pq"),
            }
            continue
        entry = dict(catalog_conf[name])
        if entry["filepath"] is None:  # an optional input without a file (text_embeddings): loads None
            entries[name] = entry
            continue
        assert entry["filepath"].startswith("data/"), entry
        entry["filepath"] = str(tmp_path / entry["filepath"])
        entries[name] = entry
    catalog = DataCatalog.from_config(entries)
    for name in pipe.datasets():
        if name.startswith("params:"):
            value = params
            for key in name.removeprefix("params:").split("."):
                value = value[key]
            catalog[name] = MemoryDataset(value, copy_mode="deepcopy")
    return catalog, entries


def test_every_pipeline_dataset_is_declared_on_disk_with_a_layer(conf):
    catalog_conf = conf[0]
    pipe = pipelines()
    produced = pipe.all_outputs()
    for name in produced:
        assert name in catalog_conf, f"{name} must be a catalog dataset, not a MemoryDataset"
        entry = catalog_conf[name]
        assert "MemoryDataset" not in entry["type"]
        assert entry["metadata"]["kedro-viz"]["layer"] in {"primary", "reporting", "model_input"}
    layers = {name: catalog_conf[name]["metadata"]["kedro-viz"]["layer"] for name in produced}
    assert layers["kcore_interactions"] == "primary" and layers["train_sequences"] == "model_input"
    assert layers["dataset_statistics_table"] == "reporting"
    assert pipe.inputs() == PIPELINE_INPUTS | {d for d in pipe.inputs() if d.startswith("params:")}


def test_pipelines_run_and_rerun_from_a_filter_node(conf, tmp_path):
    overrides = {"preprocessing.k": 3, "preprocessing.category_labels": None}
    catalog, entries = make_catalog(conf, tmp_path, overrides)
    for name, data in synthetic_inputs().items():
        catalog.save(name, data)
    SequentialRunner().run(pipelines(), catalog)

    stats = catalog.load("dataset_statistics")
    kcore = catalog.load("kcore_interactions")
    assert stats["table1"]["interactions"] == len(kcore) > 0
    assert stats["funnel"][-1]["users"] == kcore["user_id"].nunique()
    assert stats["funnel"][0]["interactions"] < len(catalog.load("interactions"))  # the window cut something
    assert kcore["timestamp"].min() >= pd.Timestamp("2016-01-01", tz="UTC")
    assert not {"0000000003", "0000000005", "0000000007", "0000000011", "0000000012"} & set(kcore["item_id"])
    assert "0000000012" in set(catalog.load("candidate_kcore_interactions")["item_id"])
    assert [f["stage"] for f in stats["funnel"]][-2:] == ["kcore", "images"]
    assert kcore["item_id"].str.len().eq(10).all()
    assert "| #Users |" in catalog.load("dataset_statistics_table")
    item_index, test = catalog.load("item_index"), catalog.load("test_sequences")
    assert item_index["item_idx"].tolist() == list(range(1, len(item_index) + 1))
    assert len(test) == kcore["user_id"].nunique()
    assert test["history"].map(len).max() <= 50
    assert set(catalog.load("filtered_items")["item_id"]) == set(kcore["item_id"])

    # Change the category filter and re-run from its node: the window output is not rewritten.
    window_file = Path(entries["windowed_interactions"]["filepath"])
    before = window_file.stat().st_mtime_ns
    catalog2, _ = make_catalog(conf, tmp_path, {**overrides, "preprocessing.category_labels": ["women"]})
    rerun = pipelines().from_nodes("filter_categories")
    assert "filter_date_window" not in {n.name for n in rerun.nodes}
    assert {"build_sequences", "build_dataset_statistics"} <= {n.name for n in rerun.nodes}
    SequentialRunner().run(rerun, catalog2)
    assert window_file.stat().st_mtime_ns == before
    women = catalog2.load("kcore_interactions")
    assert 0 < len(women) < len(kcore)
    assert set(women["item_id"].astype(int) // 10) == {0}  # only the "Women" community is left
    assert (
        catalog2.load("dataset_statistics")["funnel"][1]["interactions"] < stats["funnel"][1]["interactions"]
    )
    assert len(catalog2.load("test_sequences")) == women["user_id"].nunique()
