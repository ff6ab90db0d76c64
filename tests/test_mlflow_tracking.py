"""MLflow tracking: the store location (project root or $MAF_MLFLOW_DIR), what the reporting hook logs, and
the acceptance check that a `kedro run` is one MLflow run with metric histories and artifacts."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog
from mlflow.tracking import MlflowClient

from maf_pipeline.hooks import MlflowReportingHook, final_metrics, history_metrics, metric_key, mlflow_dir
from maf_pipeline.settings import CONFIG_LOADER_ARGS

REPO = Path(__file__).resolve().parents[1]

HISTORY = {
    "epochs": [
        {"epoch": e, "loss": {"id": 5.0 - e, "loss": 6.0 - e}, "valid": {"ndcg@20": 0.1 * e, "num_users": 9},
         "seconds": 2.0}
        for e in (1, 2, 3)
    ],
    "best_epoch": 3,
}  # fmt: skip


def test_metric_names_are_valid_for_mlflow() -> None:
    assert metric_key("maf", "valid", "ndcg@20") == "maf.valid.ndcg_at_20"
    assert metric_key("compare.sasrec", "test", "recall@10 (x)") == "compare.sasrec.test.recall_at_10 _x_"


def test_history_becomes_per_epoch_metrics() -> None:
    rows = history_metrics("maf", HISTORY)
    by_key: dict[str, list[tuple[int, float]]] = {}
    for key, value, step in rows:
        by_key.setdefault(key, []).append((step, value))
    assert by_key["maf.train.loss"] == [(1, 5.0), (2, 4.0), (3, 3.0)]
    assert by_key["maf.train.id"] == [(1, 4.0), (2, 3.0), (3, 2.0)]
    assert [s for s, _ in by_key["maf.valid.ndcg_at_20"]] == [1, 2, 3]
    assert "maf.valid.num_users" not in by_key and by_key["maf.best_epoch"] == [(0, 3.0)]
    metrics = {"valid": {"mrr": 0.5, "num_users": 3}, "test": {"ndcg@10": 0.25, "mrr": float("nan")}}
    assert final_metrics("pop", metrics) == {"pop.final_valid.mrr": 0.5, "pop.test.ndcg_at_10": 0.25}


def test_store_is_the_project_root_unless_maf_mlflow_dir_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "proj"
    (project / "notebooks").mkdir(parents=True)
    (project / "pyproject.toml").write_text('[tool.kedro]\npackage_name = "maf_pipeline"\n')
    monkeypatch.delenv("MAF_MLFLOW_DIR", raising=False)
    monkeypatch.chdir(project / "notebooks")  # e.g. a notebook's kernel: still the project's store
    assert mlflow_dir() == project.resolve().as_posix()
    loader = OmegaConfigLoader(str(REPO / "conf"), env="base", **CONFIG_LOADER_ARGS)
    loader.config_patterns["mlflow"] = ["mlflow*"]
    conf = loader["mlflow"]
    assert conf["server"]["mlflow_tracking_uri"] == f"sqlite:///{project.resolve().as_posix()}/mlflow.db"
    assert conf["tracking"]["experiment"]["create_experiment_kwargs"]["artifact_location"] == (
        f"{project.resolve().as_posix()}/mlartifacts"
    )
    monkeypatch.setenv("MAF_MLFLOW_DIR", str(tmp_path / "elsewhere"))
    assert (
        loader["mlflow"]["server"]["mlflow_tracking_uri"]
        == f"sqlite:///{tmp_path.resolve()}/elsewhere/mlflow.db"
    )


@pytest.fixture
def temporary_store(tmp_path: Path, mlflow_dir: Path):
    """The session's temporary store (conftest) as the global tracking URI, with a new experiment."""
    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{mlflow_dir / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment(
        f"hook-test-{tmp_path.name}", artifact_location=str(tmp_path / "art")
    )
    yield uri, experiment
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)


def test_hook_logs_histories_metrics_and_reporting_artifacts(tmp_path: Path, temporary_store) -> None:
    uri, experiment = temporary_store
    data = tmp_path / "data"
    reporting, primary = {"kedro-viz": {"layer": "reporting"}}, {"kedro-viz": {"layer": "primary"}}
    catalog = DataCatalog.from_config(
        {
            "maf.training_history": {"type": "json.JSONDataset", "metadata": reporting,
                                     "filepath": str(data / "08_reporting/maf/training_history.json")},
            "maf.metrics": {"type": "json.JSONDataset", "metadata": reporting,
                            "filepath": str(data / "08_reporting/maf/metrics.json")},
            "kcore_interactions": {"type": "json.JSONDataset", "metadata": primary,
                                   "filepath": str(data / "kcore.json")},
        }
    )  # fmt: skip
    hook = MlflowReportingHook()
    hook.after_context_created(SimpleNamespace(project_path=tmp_path))
    hook.after_catalog_created(catalog)
    metrics = {"valid": {"ndcg@20": 0.3}, "test": {"ndcg@20": 0.2, "num_users": 9}}

    def save_all() -> None:
        for name, value in (
            ("maf.training_history", HISTORY),
            ("maf.metrics", metrics),
            ("kcore_interactions", [1]),
        ):
            catalog.save(name, value)
            hook.after_dataset_saved(name, value)

    save_all()  # no active run (tracking off, plain runner): nothing is logged and nothing fails
    assert MlflowClient(uri).search_runs([experiment]) == []
    with mlflow.start_run(experiment_id=experiment) as run:
        save_all()
    client = MlflowClient(uri)
    history = client.get_metric_history(run.info.run_id, "maf.valid.ndcg_at_20")
    assert [(m.step, m.value) for m in history] == [(1, 0.1), (2, 0.2), (3, pytest.approx(0.3))]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "maf.train.loss")] == [5.0, 4.0, 3.0]
    logged = client.get_run(run.info.run_id).data.metrics
    assert logged["maf.test.ndcg_at_20"] == 0.2 and logged["maf.final_valid.ndcg_at_20"] == 0.3
    files = {f.path for f in client.list_artifacts(run.info.run_id, "08_reporting/maf")}
    assert files == {"08_reporting/maf/training_history.json", "08_reporting/maf/metrics.json"}
    assert {f.path for f in client.list_artifacts(run.info.run_id)} == {"08_reporting"}  # not the primary one


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


@pytest.mark.slow
def test_full_run_is_one_mlflow_run_with_histories_and_artifacts(full_run, mlflow_dir: Path) -> None:
    """Acceptance: the run is in the (temporary) store with parameters, metric histories and artifacts."""
    project, _ = full_run
    client = MlflowClient(f"sqlite:///{mlflow_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("maf_pipeline")
    runs = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if Path(r.data.tags.get("project_path", "")).resolve() == project.resolve()
    ]
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "full"
    assert run.info.artifact_uri.startswith((mlflow_dir / "mlartifacts").as_uri())
    assert not (project / "mlflow.db").exists()  # $MAF_MLFLOW_DIR wins over the project root
    params = run.data.params
    assert params["seed"] == "42" and "maf.model.d_mm" in params and "training.learning_rate" in params
    assert "reporting.attention.positions" in params and "recommend.k" in params

    history = json.loads((project / "data/08_reporting/maf/training_history.json").read_text())
    epochs = [e["epoch"] for e in history["epochs"]]
    curves = {
        "maf.train.loss": [e["loss"]["loss"] for e in history["epochs"]],
        "maf.valid.ndcg_at_20": [e["valid"]["ndcg@20"] for e in history["epochs"]],
    }
    for key, values in curves.items():
        logged = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in logged] == epochs
        assert [m.value for m in logged] == pytest.approx(values)
    final = json.loads((project / "data/08_reporting/maf/metrics.json").read_text())
    assert run.data.metrics["maf.test.ndcg_at_20"] == pytest.approx(final["test"]["ndcg@20"])
    assert "pop.test.recall_at_10" in run.data.metrics

    files = _artifacts(client, run.info.run_id)
    assert {
        "08_reporting/features_manifest.json",
        "08_reporting/dataset_statistics.md",
        "08_reporting/dataset_statistics.png",
        "08_reporting/sequence_lengths.png",
        "08_reporting/maf/training_curves.png",
        "08_reporting/maf/attention_maps.png",
        "08_reporting/maf/metrics.json",
        "06_models/maf/model.safetensors",
    } <= files

    # the developer's own store (if any) never saw this run
    own = REPO / "mlflow.db"
    if own.exists():
        with sqlite3.connect(f"file:{own}?mode=ro", uri=True) as db:
            paths = db.execute("select value from tags where key = 'project_path'").fetchall()
        assert str(project) not in {p for (p,) in paths}
