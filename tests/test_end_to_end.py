"""The README's pipeline on the bundled sample, end to end: every stage's artifacts and a learned model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from safetensors import safe_open


def read_json(project: Path, relative: str) -> dict:
    return json.loads((project / "data" / relative).read_text())


def test_full_pipeline_writes_every_stage(full_run) -> None:
    project, _ = full_run
    data = project / "data"
    for relative in [
        "02_intermediate/interactions.parquet",
        "02_intermediate/items.parquet",
        "03_primary/kcore_interactions.parquet",
        "05_model_input/train_sequences.parquet",
        "05_model_input/test_sequences.parquet",
        "04_feature/image_features.safetensors",
        "04_feature/text_features.safetensors",
        "04_feature/category_features.safetensors",
        "06_models/maf/model.safetensors",
        "08_reporting/dataset_statistics.md",
        "08_reporting/features_manifest.json",
    ]:
        assert (data / relative).is_file(), relative

    # Ingestion met the sample's dirt and skipped it without failing.
    report = read_json(project, "08_reporting/ingestion_report.json")
    assert "malformed" in json.dumps(report) or "skipped" in json.dumps(report)

    # Feature tables are aligned with the item index: one row per item plus the padding row 0 (zeros).
    num_items = len(pd.read_parquet(data / "05_model_input/item_index.parquet"))
    for name in ("image", "text", "category"):
        with safe_open(str(data / f"04_feature/{name}_features.safetensors"), framework="pt") as handle:
            table = handle.get_tensor("features")
        assert table.shape[0] == num_items + 1, name
        assert float(table[0].abs().sum()) == 0.0, name

    stats = read_json(project, "08_reporting/dataset_statistics.json")
    assert 200 <= num_items <= 400
    assert json.dumps(stats).count(str(num_items)) >= 1


def test_trained_maf_beats_popularity_by_a_clear_margin(full_run) -> None:
    project, _ = full_run
    maf = read_json(project, "08_reporting/maf/metrics.json")["test"]
    pop = read_json(project, "08_reporting/pop/metrics.json")["test"]
    assert maf["num_users"] == pop["num_users"] > 200
    for metric in ("recall@10", "ndcg@10", "recall@20", "ndcg@20"):
        assert maf[metric] >= 3 * pop[metric] and maf[metric] - pop[metric] >= 0.1, (metric, maf, pop)
