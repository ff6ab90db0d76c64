"""Two and three `kedro run --pipelines=data` started together in one project folder: never a corrupted file;
the later runs fail at once naming the first (pid, command, start time), or wait for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pandas as pd
import pytest

from maf_pipeline.datasets.atomic import ParquetDataset, temporary_name
from tests.conftest import REPO, copy_project


def _start(project: Path, *params: str) -> subprocess.Popen:
    env = {**os.environ, "KEDRO_LOGGING_CONFIG": str(REPO / "conf" / "logging.yml"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "kedro", "run", "--env=sample", "--pipelines=data", *params]
    return subprocess.Popen(
        cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _all_parquet_readable(project: Path) -> int:
    files = list((project / "data").rglob("*.parquet"))
    for path in files:
        pd.read_parquet(path)  # a torn file raises "magic bytes not found" / "file size is 0 bytes"
    assert not list((project / "data").rglob(".*.tmp*")), "a temporary file was left behind"
    return len(files)


@pytest.mark.slow
@pytest.mark.parametrize("runs", [2, 3])
def test_concurrent_data_runs_never_corrupt_a_file(tmp_path: Path, runs: int, mlflow_dir: Path) -> None:
    project = copy_project(tmp_path / "project")
    procs = [_start(project) for _ in range(runs)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert 0 in codes, outputs
    for code, out in zip(codes, outputs, strict=True):
        if code:
            assert "the project data folder" in out and "is in use by another run: pid" in out, out[-3000:]
            assert "--pipelines=data" in out and "Running node" not in out  # failed at once, before any node
    assert _all_parquet_readable(project) > 5
    # with run.lock_wait_s the later runs wait for the first and all succeed
    procs = [_start(project, "--params=run.lock_wait_s=600") for _ in range(runs)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * runs, [o[-2000:] for o in outputs]
    assert sum("is in use by" in o and "waiting" in o for o in outputs) >= 1
    assert _all_parquet_readable(project) > 5


def test_atomic_save_never_exposes_half_a_file(tmp_path: Path) -> None:
    target = tmp_path / "t.parquet"
    dataset = ParquetDataset(filepath=str(target))
    dataset.save(pd.DataFrame({"a": range(10)}))

    class BoomError(RuntimeError):
        pass

    class Exploding(pd.DataFrame):
        def to_parquet(self, path, *args, **kwargs):
            path.write(b"PAR1 half")  # a writer that dies mid-file (path: the open temporary file)
            raise BoomError

    with pytest.raises(Exception, match=r"BoomError|Failed while saving"):
        dataset.save(Exploding({"a": [1]}))
    assert pd.read_parquet(target)["a"].tolist() == list(range(10))  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # no temporary file left
    assert temporary_name(PurePosixPath("x/fig.png")).suffix == ".png"  # matplotlib infers the format
