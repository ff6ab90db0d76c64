"""The ingestion pipeline's wiring, its catalog entries, and a run through the real dataset types."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from maf_pipeline.pipelines.ingestion import create_pipeline
from maf_pipeline.pipelines.ingestion.nodes import build_ingestion_report

from .raw_files import review_2018
from .test_metadata import THUMB, meta_2018

REPO = Path(__file__).resolve().parents[3]
T2017 = 1_483_228_800  # 2017-01-01T00:00:00Z


def _conf(name: str) -> dict:
    return yaml.safe_load((REPO / "conf" / "base" / name).read_text())


def test_wiring():
    pipeline = create_pipeline()
    assert {n.name for n in pipeline.nodes} == {"ingest_reviews", "ingest_metadata", "build_ingestion_report"}
    assert pipeline.inputs() == {"raw_reviews", "raw_metadata", "params:ingestion", "params:date_window"}
    assert pipeline.all_outputs() == {
        "interactions",
        "items",
        "reviews_ingestion_report",
        "metadata_ingestion_report",
        "ingestion_report",
    }


def test_every_dataset_is_in_the_catalog_with_a_layer():
    catalog = _conf("catalog.yml")
    pipeline = create_pipeline()
    for name in (pipeline.all_inputs() | pipeline.all_outputs()) - {"params:ingestion", "params:date_window"}:
        assert name in catalog, name
        assert catalog[name]["metadata"]["kedro-viz"]["layer"], name
    assert catalog["interactions"]["type"] == "maf_pipeline.datasets.atomic.ParquetDataset"
    assert catalog["items"]["type"] == "maf_pipeline.datasets.atomic.ParquetDataset"
    params = _conf("parameters_ingestion.yml")["ingestion"]
    assert params["format"] == "auto"
    assert params["max_bad_fraction"] == 0.01


def test_run_through_the_catalog_datasets(tmp_path, write_raw):
    reviews = write_raw(
        "reviews.json.gz",
        [review_2018("U1", "0000031887", 5.0, T2017), review_2018("U2", "B2", 4.0, T2017 + 60), "{oops"]
        + [review_2018(f"U{i}", "B2", 3.0, T2017) for i in range(3, 200)],
    )
    meta = write_raw(
        "meta.json.gz",
        [
            meta_2018("0000031887", title="Dress", category=["A", "B"], image=[THUMB]),
            meta_2018("B2", title="x"),
        ],
    )
    config = {}
    for name, entry in _conf("catalog.yml").items():
        if name in create_pipeline().all_inputs() | create_pipeline().all_outputs():
            entry = {k: v for k, v in entry.items() if k != "metadata"}
            entry["filepath"] = str(tmp_path / "data" / Path(entry["filepath"]).name)
            config[name] = entry
    config["raw_reviews"]["filepath"] = reviews.path
    config["raw_metadata"]["filepath"] = meta.path
    catalog = DataCatalog.from_config(config)
    catalog["params:ingestion"] = MemoryDataset(_conf("parameters_ingestion.yml")["ingestion"])
    catalog["params:date_window"] = MemoryDataset(_conf("parameters.yml")["date_window"])
    SequentialRunner().run(create_pipeline(), catalog)

    interactions = pd.read_parquet(tmp_path / "data" / "interactions.parquet")
    assert interactions["item_id"].iloc[0] == "0000031887"
    assert str(interactions["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert interactions["rating"].dtype == "float32"
    assert len(interactions) == 199
    items = pd.read_parquet(tmp_path / "data" / "items.parquet")
    assert list(items["categories"].iloc[0]) == ["A", "B"]
    report = catalog.load("ingestion_report")
    assert report["files"]["reviews"]["skipped"]["malformed"] == 1
    assert report["files"]["metadata"]["kept"] == 2
    assert report["summary"]["reviewed_items_with_metadata"] == 2


def test_build_ingestion_report_counts_coverage():
    interactions = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["i1", "i2", "i3"]})
    items = pd.DataFrame({"item_id": ["i1", "i3", "i9"]})
    report = build_ingestion_report({"file": "r"}, {"file": "m"}, interactions, items)
    assert report["files"] == {"reviews": {"file": "r"}, "metadata": {"file": "m"}}
    assert report["summary"] == {
        "interactions": 3,
        "users": 2,
        "reviewed_items": 3,
        "metadata_items": 3,
        "reviewed_items_with_metadata": 2,
        "reviewed_items_with_metadata_share": 0.6667,
    }


def test_the_readers_do_not_import_torch():
    """The streaming readers must stay light (the bench target is < 512 MB RSS; torch alone is ~600 MB)."""
    code = "import sys, maf_pipeline.pipelines.ingestion.nodes; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
