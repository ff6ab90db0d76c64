"""A busy or abandoned MLflow store: waited for with a bound, failed naming it, metrics never lost silently,
runs of killed processes marked FAILED (issue 24, item 9)."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from maf_pipeline.hooks import (
    MlflowStoreLockedError,
    fail_orphaned_runs,
    prepare_sqlite_store,
    wait_for_sqlite_store,
)
from maf_pipeline.profiling import _log_metrics


def _hold_write_lock(db: Path, seconds: float) -> threading.Thread:
    """Another connection holding a write transaction (as a second process writing would)."""
    started = threading.Event()

    def hold() -> None:
        connection = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        connection.execute("BEGIN IMMEDIATE")
        started.set()
        time.sleep(seconds)
        connection.execute("ROLLBACK")
        connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    started.wait(10)
    return thread


@pytest.fixture
def store(tmp_path: Path) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    prepare_sqlite_store(uri, "exp", str(tmp_path / "artifacts"))
    return uri


def test_a_locked_store_fails_the_run_naming_it(store: str, tmp_path: Path) -> None:
    holder = _hold_write_lock(tmp_path / "mlflow.db", 4)
    with pytest.raises(MlflowStoreLockedError, match=r"MLflow tracking store .*mlflow.db is locked.*1 s"):
        wait_for_sqlite_store(store, 1)
    holder.join()


def test_a_lock_released_in_time_is_waited_for_on_every_write(store: str, tmp_path: Path) -> None:
    holder = _hold_write_lock(tmp_path / "mlflow.db", 2)
    started = time.monotonic()
    wait_for_sqlite_store(store, 30)  # waits for the other writer, then returns
    assert time.monotonic() - started >= 1.5
    holder.join()
    # every later MLflow write waits too (SQLite's own default gives up after 5 s)
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("exp").experiment_id
    holder = _hold_write_lock(tmp_path / "mlflow.db", 7)
    run = client.create_run(experiment)  # before: "database is locked" after 5 s
    holder.join()
    assert run.info.status == "RUNNING"


def test_metrics_that_cannot_be_logged_are_reported(monkeypatch, caplog) -> None:
    monkeypatch.setattr(mlflow, "active_run", lambda: object())

    def locked(metrics):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(mlflow, "log_metrics", locked)
    assert _log_metrics({"profile.x.wall_s": 1.0}) is False
    assert "kept in the run profile under mlflow_unlogged_metrics" in caplog.text


def test_runs_of_killed_processes_are_marked_failed(store: str) -> None:
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("exp").experiment_id
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    orphan = client.create_run(experiment, tags={"maf.pid": str(gone.pid), "maf.host": socket.gethostname()})
    alive = client.create_run(experiment, tags={"maf.pid": "1", "maf.host": socket.gethostname()})
    untagged = client.create_run(experiment)
    current = client.create_run(experiment)
    assert fail_orphaned_runs(store, experiment, current.info.run_id) == [orphan.info.run_id]
    assert client.get_run(orphan.info.run_id).info.status == "FAILED"
    assert "killed" in client.get_run(orphan.info.run_id).data.tags["maf.note"]
    for run in (alive, untagged, current):
        assert client.get_run(run.info.run_id).info.status == "RUNNING"
