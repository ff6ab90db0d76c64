"""The pipeline registry: ``data`` is the data side of ``full``, and built on its own it needs no torch."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import copy_project, kedro, project_pipelines


def test_data_is_everything_full_runs_up_to_the_sequences():
    pipelines = project_pipelines()
    data = {n.name for n in pipelines["data"].nodes}
    upstream = {n.name for n in pipelines["full"].to_nodes("build_sequences").nodes}
    assert upstream <= data <= {n.name for n in pipelines["full"].nodes}
    assert {"ingest_reviews", "acquire_images", "filter_verified_images", "build_sequences"} <= data
    assert not data & {"encode_images", "encode_texts"}


def test_a_data_run_imports_no_torch(tmp_path):
    """`kedro run --pipelines=data`: only data-side pipelines are built, and every catalog entry (kedro-mlflow
    builds them all when the run starts) can be built without torch (~500 MB of RSS)."""
    code = """
import sys
from pathlib import Path
from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
bootstrap_project(Path.cwd())
pipelines.set_requested(["data"])
nodes = pipelines["data"].nodes
with KedroSession.create(project_path=Path.cwd(), env="sample") as session:
    catalog = session.load_context().catalog
    built = [catalog[name] for name in catalog.keys()]
print(len(nodes), len(built), "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n_nodes, n_datasets, torch_loaded = out.stdout.split()[-3:]
    assert int(n_nodes) >= 10 and int(n_datasets) >= 10
    assert torch_loaded == "False"


def test_the_data_side_runs_without_torch(tmp_path, monkeypatch):
    """The real `kedro run --pipelines=data` on the sample: the sequences are written and at no point of the
    run (hooks at its start and end included) is torch imported."""
    project = copy_project(tmp_path / "project")
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # every import is listed on stderr
    proc = kedro(project, "run", "--pipelines=data", "--env=sample")
    assert (project / "data" / "05_model_input" / "test_sequences.parquet").exists()
    assert "import time:" in proc.stderr
    assert not re.search(r"\|\s+torch$", proc.stderr, flags=re.MULTILINE)


def test_a_selection_builds_only_its_pipelines_but_the_run_check_sees_them_all():
    """Kedro's find_pipelines builds only what the command line names; the missing-input check still finds
    the node that makes an input in any pipeline (every_pipeline, built only when an input is missing)."""
    from kedro.framework.project import pipelines

    from maf_pipeline.pipeline_registry import every_pipeline, register_pipelines

    project_pipelines()  # the configured project
    pipelines.set_requested(["evaluation"])
    try:
        assert set(register_pipelines()) == {"evaluation"}
    finally:
        pipelines.set_requested(None)
    every = every_pipeline()
    assert {"data", "full", "training", "evaluation", "compare", "tune"} <= set(every)
    assert {n.name for n in every["full"].nodes} == {n.name for n in project_pipelines()["full"].nodes}
