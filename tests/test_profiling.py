"""The run profile: a row per node with wall, CPU, peak RSS, rows and bytes; saved as ``run_profile``."""

from __future__ import annotations

import json
import time

import pandas as pd
from kedro.framework.hooks.manager import _create_hook_manager
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline
from kedro.runner import SequentialRunner
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import ParquetDataset

from maf_pipeline.profiling import RunProfileHook, table_rows
from tests.conftest import project_pipelines


def grow(frame: pd.DataFrame) -> pd.DataFrame:
    """Ten times the rows, and some memory held for a moment."""
    ballast = b"\x01" * (64 << 20)  # 64 MB written, so resident (a calloc'd buffer is not)
    time.sleep(0.3)  # held for many of the sampler's periods
    del ballast
    return pd.concat([frame] * 10, ignore_index=True)


def summary(frame: pd.DataFrame) -> dict:
    return {"rows": len(frame)}


def test_hook_writes_a_row_per_node(tmp_path):
    hook = RunProfileHook(sample_every_s=0.01)
    manager = _create_hook_manager()
    manager.register(hook)
    catalog = DataCatalog(
        {
            "raw": MemoryDataset(pd.DataFrame({"x": range(5)})),
            "big": ParquetDataset(filepath=str(tmp_path / "big.parquet")),
            "summary": JSONDataset(filepath=str(tmp_path / "summary.json")),
            "run_profile": JSONDataset(filepath=str(tmp_path / "run_profile.json")),
        }
    )
    pipeline = Pipeline(
        [Node(grow, "raw", "big", name="grow"), Node(summary, "big", "summary", name="summarise")]
    )
    hook.after_catalog_created(catalog)
    hook.before_pipeline_run(run_params={"pipeline_name": "toy"})
    SequentialRunner().run(pipeline, catalog, manager)
    hook.after_pipeline_run()

    profile = json.loads((tmp_path / "run_profile.json").read_text())
    rows = {r["node"]: r for r in profile["nodes"]}
    assert list(rows) == ["grow", "summarise"]
    assert (rows["grow"]["rows_in"], rows["grow"]["rows_out"]) == (5, 50)
    assert rows["summarise"]["rows_in"] == 50 and rows["summarise"]["rows_out"] is None  # a dict is no table
    assert rows["grow"]["outputs"]["big"]["bytes"] == (tmp_path / "big.parquet").stat().st_size
    assert rows["grow"]["peak_rss_mb"] >= rows["grow"]["rss_start_mb"] + 50  # the 64 MB were seen
    for row in rows.values():
        assert row["cpu_s"] >= 0
        # each figure is rounded to the millisecond on its own: allow that rounding
        assert row["wall_s"] >= row["run_s"] - 1e-3 and row["wall_s"] >= row["load_s"] + row["save_s"] - 2e-3
    assert rows["grow"]["output_bytes"] == rows["grow"]["outputs"]["big"]["bytes"]
    assert profile["status"] == "completed" and profile["run"]["pipeline_name"] == "toy"
    assert profile["process_peak_rss_mb"] >= rows["grow"]["peak_rss_mb"] - 1


def test_only_rank_zero_writes_the_profile(tmp_path, monkeypatch):
    """Under torchrun every rank profiles, but a rank > 0 writes no file, like every other output."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    hook = RunProfileHook(sample_every_s=0.01)
    target = tmp_path / "run_profile.json"
    hook.after_catalog_created(DataCatalog({"run_profile": JSONDataset(filepath=str(target))}))
    hook.before_pipeline_run(run_params={"pipeline_name": "toy"})
    hook.after_pipeline_run()
    assert not target.exists()
    monkeypatch.setenv("RANK", "0")
    hook.before_pipeline_run(run_params={"pipeline_name": "toy"})
    hook.after_pipeline_run()
    assert json.loads(target.read_text())["status"] == "completed"


def test_table_rows():
    assert table_rows(pd.DataFrame({"a": [1, 2]})) == 2
    assert table_rows({"features": pd.DataFrame({"a": [1, 2, 3]}).to_numpy()}) == 3
    assert table_rows({"a": 1}) is None and table_rows("text") is None and table_rows(3) is None


def test_the_sample_run_has_a_profile_row_per_node(full_run):
    project, _ = full_run
    profile = json.loads((project / "data" / "08_reporting" / "run_profile.json").read_text())
    assert profile["status"] == "completed"
    assert sorted(r["node"] for r in profile["nodes"]) == sorted(
        n.name for n in project_pipelines()["full"].nodes
    )
    ingest = next(r for r in profile["nodes"] if r["node"] == "ingest_reviews")
    assert ingest["rows_out"] > 0 and ingest["outputs"]["interactions"]["bytes"] > 0
    assert profile["images"]["items"] > 0  # the image transfers, reported apart
