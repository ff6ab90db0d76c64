"""The trained model as an MLflow Model: logged with a signature, loaded by ``mlflow.pyfunc.load_model`` it
gives the same top-k as ``Recommender``, and ``mlflow models serve`` answers a REST request with them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from maf_pipeline.datasets import SafetensorsDataset
from maf_pipeline.inference import Recommender, load_model, raw_user_histories
from maf_pipeline.serving import OUTPUT_COLUMNS, log_recommender
from tests.models.synthetic import make_features, make_sequences
from tests.pipelines.reporting.test_reporting import NUM_ITEMS, tiny_artifact

SERVING = {"artifact_path": "model", "registered_model_name": "maf-test-recommender", "k": 4}


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory, mlflow_dir: Path) -> dict[str, Any]:
    """A tiny MAF logged as a pyfunc model to a run of the session's temporary store, and its Recommender."""
    folder = tmp_path_factory.mktemp("serving")
    seqs = make_sequences(num_users=8, num_items=NUM_ITEMS, length=(4, 12), seed=3)
    users = seqs["train_sequences"]["user_idx"]
    user_index = pd.DataFrame({"user_idx": users, "user_id": [f"U{u:02d}" for u in users]})
    ids = seqs["item_index"]["item_id"]
    items = pd.DataFrame({"item_id": ids, "title": [f"title of {i}" for i in ids]})
    features = make_features(NUM_ITEMS, seed=2)
    artifact = tiny_artifact(features, max_len=8)
    SafetensorsDataset(str(folder / "model.safetensors")).save(artifact)
    feature_files = {}
    for name, table in features.items():
        feature_files[f"{name}_features"] = folder / f"{name}_features.safetensors"
        SafetensorsDataset(str(feature_files[f"{name}_features"])).save(table)
    histories = raw_user_histories(
        user_index, seqs["train_sequences"], seqs["valid_sequences"], seqs["test_sequences"]
    )
    uri = f"sqlite:///{mlflow_dir / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("serving-test", artifact_location=str(folder / "art"))
    with mlflow.start_run(experiment_id=experiment) as run:
        info = log_recommender(
            folder / "model.safetensors", seqs["item_index"], items, histories, feature_files, SERVING
        )
    recommender = Recommender(
        load_model(artifact, {k: v["features"] for k, v in features.items()}),
        seqs["item_index"],
        items,
        histories,
    )
    yield {"uri": uri, "run_id": run.info.run_id, "info": info, "recommender": recommender, "ids": list(ids)}
    mlflow.set_tracking_uri(previous)


def test_logged_model_has_a_signature_and_is_registered(logged: dict[str, Any]) -> None:
    info = logged["info"]
    assert info.signature is not None
    assert {c.name for c in info.signature.inputs.inputs} == {"user_id", "history"}
    assert [c.name for c in info.signature.outputs.inputs] == OUTPUT_COLUMNS
    assert {p.name: p.default for p in info.signature.params.params} == {"k": 4, "exclude_seen": True}
    versions = MlflowClient(logged["uri"]).search_model_versions("name = 'maf-test-recommender'")
    assert [v.run_id for v in versions] == [logged["run_id"]]


def test_pyfunc_gives_the_same_top_k_as_the_recommender(logged: dict[str, Any]) -> None:
    model = mlflow.pyfunc.load_model(f"runs:/{logged['run_id']}/model")
    rec: Recommender = logged["recommender"]
    history = [logged["ids"][i] for i in (2, 7, 11)]
    request = pd.DataFrame({"user_id": ["U03", "ghost", None, "U05"], "history": [None, None, history, []]})
    out = model.predict(request, params={"k": 5})
    assert list(out.columns) == OUTPUT_COLUMNS
    assert sorted(set(out["request"])) == [0, 2, 3]  # the unknown user without a history gets nothing
    for row, expected in (
        (0, rec.recommend_users(["U03"], k=5)),
        (2, rec.recommend(history, k=5)),
        (3, rec.recommend_users(["U05"], k=5)),  # an empty history falls back to the user's own
    ):
        got = out[out["request"] == row]
        assert list(got["item_id"]) == list(expected["item_id"]) and list(got["rank"]) == [1, 2, 3, 4, 5]
        np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-5)
        assert (got["title"] == "title of " + got["item_id"]).all()
    assert len(model.predict(pd.DataFrame({"user_id": ["U03"]}))) == 4  # default k of the serving params


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_rest_request(logged: dict[str, Any], tmp_path: Path) -> None:
    port = _free_port()
    bindir = str(Path(sys.executable).parent)  # `mlflow models serve` execs uvicorn from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": logged["uri"], "PATH": f"{bindir}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{logged['run_id']}/model"]
    cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as ping:
                    if ping.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server not up in 180 s"
            time.sleep(0.5)
        history = [logged["ids"][i] for i in (4, 9)]
        body = {
            "dataframe_records": [{"user_id": "U01", "history": None}, {"user_id": None, "history": history}],
            "params": {"k": 3},
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = pd.DataFrame(json.loads(response.read())["predictions"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    rec: Recommender = logged["recommender"]
    assert list(answer.columns) == OUTPUT_COLUMNS
    assert list(answer.loc[answer["request"] == 0, "item_id"]) == list(
        rec.recommend_users(["U01"], k=3)["item_id"]
    )
    assert list(answer.loc[answer["request"] == 1, "item_id"]) == list(rec.recommend(history, k=3)["item_id"])


@pytest.mark.slow
def test_full_run_logs_a_servable_model(full_run, mlflow_dir: Path) -> None:
    """Acceptance: the sample run's MLflow run holds the model; it recommends as the project's files do."""
    project, _ = full_run
    client = MlflowClient(f"sqlite:///{mlflow_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("maf_pipeline")
    (run,) = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if Path(r.data.tags.get("project_path", "")).resolve() == project.resolve()
    ]
    mlflow.set_tracking_uri(f"sqlite:///{mlflow_dir}/mlflow.db")
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    rec = Recommender.from_project(project, model="maf", env="sample")
    users = sorted(rec.histories)[:3]
    out = model.predict(pd.DataFrame({"user_id": users}), params={"k": 10})
    expected = rec.recommend_users(users, k=10)
    assert list(out["item_id"]) == list(expected["item_id"]) and list(out["user_id"]) == list(
        expected["user_id"]
    )
    recs = pd.read_parquet(project / "data/07_model_output/maf/recommendations.parquet")
    assert list(recs[recs["user_id"] == users[0]]["item_id"]) == list(
        out[out["user_id"] == users[0]]["item_id"]
    )
    assert client.get_registered_model("maf-recommender").latest_versions
