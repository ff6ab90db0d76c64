"""A run whose intermediate input is missing fails before its first node, naming the dataset and its maker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from kedro.io import DataCatalog
from kedro.pipeline import Node, Pipeline
from kedro_datasets.pandas import ParquetDataset

from maf_pipeline.run_checks import MissingInputError, check_inputs, missing_inputs
from tests.conftest import REPO


def _identity(x):
    return x


def test_missing_intermediate_names_the_dataset_and_the_node_that_makes_it(tmp_path: Path) -> None:
    make = Node(_identity, "interactions", "complete", name="filter_completeness")
    use = Node(_identity, "complete", "kcore", name="kcore_filter")
    train = Node(_identity, "kcore", "model", name="train")
    registry = {"preprocessing": Pipeline([make, use]), "full": Pipeline([make, use, train])}
    catalog = DataCatalog(
        {
            name: ParquetDataset(
                filepath=str(tmp_path / f"{name}.parquet"), metadata={"kedro-viz": {"layer": "primary"}}
            )
            for name in ("interactions", "complete", "kcore")
        }
    )
    run = registry["full"].from_nodes("kcore_filter")
    messages = missing_inputs(run, catalog, registry)
    assert len(messages) == 1
    assert (
        messages[0].startswith("dataset 'complete' (") and "complete.parquet) does not exist" in messages[0]
    )
    assert "made by node 'filter_completeness' (pipeline 'preprocessing')" in messages[0]
    assert (
        "`kedro run --to-outputs=complete`" in messages[0]
        and "--from-nodes=filter_completeness" in messages[0]
    )
    with pytest.raises(MissingInputError, match="Missing inputs"):
        check_inputs(run, catalog, registry)
    catalog.save("complete", pd.DataFrame({"a": [1]}))
    assert missing_inputs(run, catalog, registry) == []  # there now
    catalog.release("complete")
    (tmp_path / "complete.parquet").unlink()
    built: list[int] = []
    lazy = missing_inputs(run, catalog, lambda: built.append(1) or registry)  # the hook passes a builder
    assert lazy == messages and built == [1]
    assert "it is made by no registered pipeline" in missing_inputs(registry["full"], catalog, registry)[0]


@pytest.mark.slow
def test_from_nodes_after_deleting_an_intermediate_fails_before_any_node(full_run, tmp_path, monkeypatch):

    project = shutil.copytree(full_run[0], tmp_path / "project")
    monkeypatch.setenv("MAF_MLFLOW_DIR", str(tmp_path / "mlflow"))
    (project / "data" / "03_primary" / "complete_interactions.parquet").unlink()
    env = {**os.environ, "KEDRO_LOGGING_CONFIG": str(REPO / "conf" / "logging.yml")}
    proc = subprocess.run(
        [sys.executable, "-m", "kedro", "run", "--env=sample", "--from-nodes=kcore_filter"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "dataset 'complete_interactions'" in out and "node 'filter_multimodal_completeness'" in out
    assert "(pipeline 'preprocessing')" in out and "Running node" not in out
