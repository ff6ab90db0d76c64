"""The tune pipeline: an Optuna study with pruning, kept in SQLite (resumable), one MLflow run per trial."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from maf_pipeline.datasets import StudyStorageDataset
from maf_pipeline.parameters import resolve_parameters
from maf_pipeline.pipelines.tune import create_pipeline
from maf_pipeline.pipelines.tune.nodes import load_study, run_study, study_reports
from tests.conftest import REPO, kedro
from tests.models.synthetic import make_features, make_sequences, one_torch_thread, tiny_maf_params  # noqa: F401

GOOD, BAD = 1e-2, 1e-7  # learning rates: the second cannot learn anything in a few epochs


def _parameters(n_trials: int, **tune: object) -> dict:
    """The run's parameters as the nodes receive them (validated, the schema's defaults filled in)."""
    return resolve_parameters(
        {
            "seed": 3,
            "sequences": {"max_len": 6},
            "maf": {"model": tiny_maf_params()},
            "training": {
                "epochs": 4,
                "batch_size": 8,
                "learning_rate": 1e-3,
                "objective": "all_positions",
                "early_stopping": {"metric": "ndcg@20", "patience": None},
                "ks": [10, 20],
                "device": "cpu",
                "checkpoint_dir": "never-used",
            },
            "tune": {
                "model": "maf",
                "study_name": "t",
                "metric": None,
                "n_trials": n_trials,
                "timeout_s": None,
                "seeds": [3, 4],
                "n_startup_trials": 5,
                "mlflow": True,
                "training": {},
                "pruner": {"type": "median", "n_startup_trials": 1, "n_warmup_steps": 2, "interval_steps": 1},
                "enqueue": [{"training.learning_rate": GOOD}, {"training.learning_rate": BAD}],
                "space": {
                    "training.learning_rate": {"low": 1e-4, "high": 3e-2, "log": True},
                    "model.fusion": {"choices": ["sum", "gate"]},
                },
                **tune,
            },
        }
    )


@pytest.fixture
def tracking(tmp_path: Path):
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("tune-test", str(tmp_path / "artifacts")))
    yield MlflowClient()
    mlflow.set_tracking_uri(previous)


def _study(tmp_path: Path, n_trials: int, **tune: object):
    data, features = make_sequences(num_users=16, num_items=20, seed=1), make_features(20)
    storage = StudyStorageDataset(str(tmp_path / "tune" / "studies.db")).load()
    best, trials = run_study(
        data["train_sequences"], data["valid_sequences"], data["item_index"], features["image"],
        features["text"], features["category"], storage, _parameters(n_trials, **tune),
    )  # fmt: skip
    return storage, best, trials


def test_study_prunes_keeps_trials_and_nests_mlflow_runs(tmp_path: Path, tracking: MlflowClient) -> None:
    storage, best, trials = _study(tmp_path, 3)
    study = optuna.load_study(study_name="t", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states[:2] == ["COMPLETE", "PRUNED"] and len(states) == 3  # the hopeless rate is pruned
    assert study.trials[1].params["training.learning_rate"] == BAD and study.trials[1].last_step < 4
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert best["value"] == max(t.value for t in complete) and best["metric"] == "valid ndcg@20"
    assert best["params"] == study.best_trial.params and set(best["per_seed"]) >= {
        "valid_seed3",
        "valid_seed4",
    }
    assert best["training_block"]["learning_rate"] == best["params"]["training.learning_rate"]
    assert best["model_block"]["fusion"] == best["params"]["model.fusion"]
    assert list(trials["state"]) == states and "params_training.learning_rate" in trials
    # MLflow: one parent run, one child per trial, the pruned one tagged and with its curve
    runs = tracking.search_runs([mlflow.get_experiment_by_name("tune-test").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 3 and parents[0].data.tags["tune.study"] == "t"
    pruned = next(r for r in children if r.data.tags.get("state") == "PRUNED")
    assert len(tracking.get_metric_history(pruned.info.run_id, "valid.ndcg_at_20.seed3")) >= 2
    # resumed: the finished trials are kept, only the missing ones run
    _, again, trials = _study(tmp_path, 4)
    study = optuna.load_study(study_name="t", storage=storage)
    assert [t.state.name for t in study.trials][:3] == states and len(study.trials) == 4
    assert again["value"] >= best["value"] and len(trials) == 4
    history, importances = study_reports(storage, again, {})
    assert history.axes and importances.axes


def test_workers_opening_a_new_storage_at_once_all_get_the_study(tmp_path: Path) -> None:
    """Opening a new storage creates its schema; a second worker doing it at the same moment used to fail on
    the schema version row (Optuna opened without the retry fails here in every round)."""
    cfg = _parameters(1)["tune"]
    for round_ in range(5):
        url = StudyStorageDataset(str(tmp_path / str(round_) / "studies.db")).load()
        with ThreadPoolExecutor(3) as pool:
            studies = [f.result() for f in [pool.submit(load_study, url, cfg) for _ in range(3)]]
        assert len(studies) == 3 and [s.study_name for s in optuna.get_all_study_summaries(url)] == [
            cfg["study_name"]
        ]


def test_a_point_already_trained_is_not_trained_again(tmp_path: Path, tracking: MlflowClient) -> None:
    """A one-point space: the second trial draws the first one's values and takes its result (the runs are
    seeded: training again would give the same numbers), with no second MLflow run."""
    one_point = {"training.learning_rate": {"choices": [GOOD]}, "model.fusion": {"choices": ["sum"]}}
    storage, _, _ = _study(tmp_path, 2, space=one_point, enqueue=[], seeds=[3])
    first, second = optuna.load_study(study_name="t", storage=storage).trials
    assert first.state.name == second.state.name == "COMPLETE" and second.value == first.value
    assert second.user_attrs["repeat_of"] == 0 and "repeat_of" not in first.user_attrs
    assert second.user_attrs["best_epoch_seed3"] == first.user_attrs["best_epoch_seed3"]
    assert second.duration < first.duration / 5
    runs = tracking.search_runs([mlflow.get_experiment_by_name("tune-test").experiment_id])
    assert len(runs) == 2  # the parent and the first trial's run


def test_space_keys_are_checked(tmp_path: Path, tracking: MlflowClient) -> None:
    with pytest.raises(ValueError, match=r"'learning_rat' is not a key of the training block"):
        _study(tmp_path, 1, space={"training.learning_rat": {"low": 1e-4, "high": 1e-2}}, enqueue=[])
    with pytest.raises(ValueError, match=r"must be model\.<key> or training\.<key>"):
        _study(tmp_path, 1, space={"lr": {"low": 1e-4, "high": 1e-2}}, enqueue=[])


def test_pipeline_wiring_is_in_the_catalog() -> None:
    pipe = create_pipeline()
    study = pipe.only_nodes_with_tags("tune")
    assert {n.name for n in study.nodes} == {"tune.run_study", "tune.plot_study"}
    assert "train_sequences" in pipe.all_outputs()  # from raw data: works on a fresh clone
    catalog = (REPO / "conf" / "base" / "catalog.yml").read_text()
    for name in ("tune_study_storage", "tune.best_params", "tune.trials", "tune.optimization_history"):
        assert f"{name}:" in catalog


def _finished(storage: str) -> list[optuna.trial.FrozenTrial]:
    """The study's finished trials, read once no run writes the storage any more."""
    study = optuna.load_study(study_name="maf", storage=storage)
    return [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]


def _finished_count(storage: str) -> int:
    """How many trials a running study has finished, read without Optuna: opening the storage with Optuna
    while the run creates its schema races it (both insert the schema version), so this opens the file
    read-only and treats a missing file or table as no trial yet."""
    path = Path(storage.removeprefix("sqlite:///"))
    if not path.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            query = "SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')"
            (count,) = db.execute(query).fetchone()
    except sqlite3.OperationalError:  # no table yet, or the writer holds the lock
        return 0
    return count


@pytest.mark.slow
def test_kedro_tune_on_the_sample_resumes_after_a_kill(full_run, tmp_path: Path, monkeypatch) -> None:
    project = shutil.copytree(full_run[0], tmp_path / "project")
    monkeypatch.setenv("MAF_MLFLOW_DIR", str(tmp_path / "mlflow"))
    args = ["run", "--pipelines=tune", "--env=sample", "--tags=tune"]
    params = {"tune.n_trials": 3, "tune.training.epochs": 6, "training.num_threads": 1}
    cmd = [sys.executable, "-m", "kedro", *args, "--params", ",".join(f"{k}={v}" for k, v in params.items())]
    storage = f"sqlite:///{project / 'data' / '07_model_output' / 'tune' / 'studies.db'}"
    proc = subprocess.Popen(cmd, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not _finished_count(storage) and time.time() < deadline and proc.poll() is None:
        time.sleep(1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = _finished(storage)
    assert kept and len(kept) < 3, "the kill came after the first finished trial, before the last"
    kedro(project, *args, params=params, timeout=600)
    study = optuna.load_study(study_name="maf", storage=storage)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3 and finished[0].number == kept[0].number and finished[0].value == kept[0].value
    best = json.loads((project / "data" / "08_reporting" / "tune" / "best_params.json").read_text())
    assert best["value"] == study.best_value and set(best["params"]) == set(study.best_trial.params)
    assert (project / "data" / "08_reporting" / "tune" / "param_importances.png").stat().st_size > 0
    assert len(pd.read_csv(project / "data" / "08_reporting" / "tune" / "trials.csv")) == len(study.trials)
