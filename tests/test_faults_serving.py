"""Regression tests of reliability issue 11, items of the serving/tracking side:

* 11.2 wrong parameter types or ranges fail before the first node, naming the parameter, value and range;
* 11.8 ``recommend.users=[]`` is refused instead of silently writing an empty recommendations file;
* 11.9 ``Recommender`` refuses a string as a sequence of ids and a bad ``k`` with clear errors;
* 11.11 an interrupted or failing ``kedro run`` ends its MLflow run as KILLED / FAILED, never RUNNING.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kedro.config import OmegaConfigLoader
from kedro.validation import ParameterValidationError
from mlflow.tracking import MlflowClient

from maf_pipeline.inference import Recommender, load_model
from maf_pipeline.parameters import parameter_errors, validate_parameters
from maf_pipeline.pipelines.recommend.nodes import recommend_top_k
from maf_pipeline.settings import CONFIG_LOADER_ARGS
from tests.conftest import REPO, copy_project
from tests.models.synthetic import make_features, make_sequences
from tests.pipelines.reporting.test_reporting import NUM_ITEMS, tiny_artifact


def base_parameters(env: str = "base") -> dict[str, Any]:
    args = {k: v for k, v in CONFIG_LOADER_ARGS.items() if k != "default_run_env"}
    return OmegaConfigLoader(str(REPO / "conf"), env=env, **args)["parameters"]


def kedro_run(project: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "KEDRO_LOGGING_CONFIG": str(REPO / "conf" / "logging.yml"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "kedro", "run", *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def project_runs(mlflow_dir: Path, project: Path) -> list[Any]:
    client = MlflowClient(f"sqlite:///{mlflow_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("maf_pipeline")
    if experiment is None:
        return []
    return [
        r
        for r in client.search_runs([experiment.experiment_id])
        if Path(r.data.tags.get("project_path", "")).resolve() == project.resolve()
    ]


# ---------------------------------------------------------------------------------------------------- 11.2
@pytest.mark.parametrize("env", ["base", "sample", "scientific", "scientific_mm"])
def test_the_shipped_parameters_are_valid(env: str) -> None:
    assert parameter_errors(base_parameters(env)) == []


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            ("preprocessing", "k"),
            "five",
            "preprocessing.k = 'five': Input should be a valid integer (allowed: int >= 1)",
        ),
        (("preprocessing", "k"), -3, "preprocessing.k = -3: Input should be greater than or equal to 1"),
        (("training", "learning_rate"), 0, "training.learning_rate = 0: Input should be greater than 0"),
        (("maf", "model", "dropout"), 1.5, "maf.model.dropout = 1.5: Input should be less than 1"),
        (("features", "image_encoder", "device"), "gpu", "features.image_encoder.device = 'gpu'"),
        (
            ("preprocessing", "dedup_keep"),
            "newest",
            "preprocessing.dedup_keep = 'newest': Input should be 'first'",
        ),
        (("preprocessing", "kk"), 5, "preprocessing.kk: unknown parameter (known here: ['category_labels'"),
        (("preprocesing",), {}, "preprocesing: unknown parameter block"),
        (("sasrec", "model", "n_heads"), 3, "sasrec.model: d (256) must be divisible by n_heads (3)"),
        # names that select something are checked against what exists (issue 24, item 3)
        (
            ("compare", "models"),
            ["maf", "sasrec", "transformer4rec"],
            "compare.models = ['transformer4rec']: unknown model(s) (valid: ['bert4rec', 'caser', 'fdsa', "
            "'gru4rec', 'maf', 'pop', 'sasrec', 'sasrecf'])",
        ),
        (("compare", "metrics"), ["recall@10", "ndcg@100"], "compare.metrics = ['ndcg@100']: no such metric"),
        (
            ("compare", "modalities"),
            {"Bad": {"modalities": ["imgae"]}},
            "compare.modalities.Bad.modalities.0 = 'imgae': Input should be 'image', 'text' or 'category'",
        ),
        (
            ("compare", "fusion"),
            {"X": {"fuzion": "sum"}},
            "compare.fusion.X: ['fuzion'] are not MAF parameters",
        ),
        (("tune", "model"), "transformer4rec", "tune.model = ['transformer4rec']: no such model block"),
        (("serving", "models"), ["mafs"], "serving.models = ['mafs']: no such model block"),
        (
            ("training", "early_stopping", "metric"),
            "ndcg@5",
            "training.early_stopping.metric = ['ndcg@5']: no such metric, training.ks is [10, 20]",
        ),
    ],
)
def test_bad_parameters_are_named_with_value_and_range(
    path: tuple[str, ...], value: Any, expected: str
) -> None:
    params = copy.deepcopy(base_parameters())
    target = params
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    errors = parameter_errors(params)
    assert len(errors) == 1 and errors[0].startswith(expected), errors
    with pytest.raises(ParameterValidationError, match="Invalid parameters"):
        validate_parameters(params)


def test_model_blocks_mirror_the_model_constructors() -> None:
    """The schema of each architecture's block has exactly its constructor's keyword arguments."""
    import inspect

    from maf_pipeline.models import MODELS
    from maf_pipeline.parameters import MODEL_BLOCKS

    assert set(MODEL_BLOCKS) == set(MODELS)
    for name, cls in MODELS.items():
        args = set(inspect.signature(cls).parameters) - {"num_items", "max_len", "features"}
        assert set(MODEL_BLOCKS[name].model_fields) - {"architecture"} == args, name


@pytest.mark.slow
def test_a_wrong_parameter_type_fails_before_the_first_node(tmp_path: Path, mlflow_dir: Path) -> None:
    project = copy_project(tmp_path / "project")
    start = time.monotonic()
    proc = kedro_run(project, "--pipelines=full", "--env=sample", "--params=preprocessing.k=five")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "preprocessing.k = 'five': Input should be a valid integer (allowed: int >= 1)" in out
    assert "Running node" not in out and "UFuncNoLoopError" not in out
    assert not any((project / "data" / "02_intermediate").iterdir())  # nothing was computed
    assert project_runs(mlflow_dir, project) == []  # and no MLflow run was opened
    assert time.monotonic() - start < 120


# ---------------------------------------------------------------------------------------------------- 11.8
@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    seqs = make_sequences(num_users=6, num_items=NUM_ITEMS, length=(4, 10), seed=7)
    users = seqs["train_sequences"]["user_idx"]
    seqs["user_index"] = pd.DataFrame({"user_idx": users, "user_id": [f"U{u:02d}" for u in users]})
    ids = seqs["item_index"]["item_id"]
    seqs["filtered_items"] = pd.DataFrame({"item_id": ids, "title": ids})
    seqs["features"] = make_features(NUM_ITEMS, seed=2)
    seqs["artifact"] = tiny_artifact(seqs["features"], max_len=8)
    return seqs


def recommend(data: dict[str, Any], **params: Any):
    f = data["features"]
    p = {"k": 3, "users": None, "exclude_seen": True, "batch_size": 4, "device": "cpu", **params}
    return recommend_top_k(
        data["artifact"], data["train_sequences"], data["valid_sequences"], data["test_sequences"],
        data["user_index"], data["item_index"], data["filtered_items"], f["image"], f["text"], f["category"],
        p,
    )  # fmt: skip


@pytest.mark.parametrize("users", [[], "", "   "])
def test_an_empty_user_list_is_an_error_not_an_empty_output(data: dict[str, Any], users: Any) -> None:
    with pytest.raises(ValueError, match=r"names no user.*Use null for every user"):
        recommend(data, users=users)
    params = base_parameters()
    params["recommend"]["users"] = users
    assert parameter_errors(params) == [
        f"recommend.users = {users!r}: an empty list of users would write an empty output; use null for "
        "every user (allowed: list[str] | str | None)"
    ]
    frame, report = recommend(data, users=None)  # null still means every user
    assert frame["user_id"].nunique() == len(data["user_index"]) and report["requested_users"] == "all"


# ---------------------------------------------------------------------------------------------------- 11.9
@pytest.fixture(scope="module")
def recommender(data: dict[str, Any]) -> Recommender:
    from maf_pipeline.inference import raw_user_histories

    tables = {k: v["features"] for k, v in data["features"].items()}
    histories = raw_user_histories(
        data["user_index"], data["train_sequences"], data["valid_sequences"], data["test_sequences"]
    )
    return Recommender(
        load_model(data["artifact"], tables), data["item_index"], data["filtered_items"], histories
    )


def test_recommender_refuses_a_string_as_a_sequence(recommender: Recommender) -> None:
    item = str(recommender.item_ids[3])
    with pytest.raises(
        TypeError, match=rf"item_ids must be a sequence of raw ids, not a string: use \['{item}'\]"
    ):
        recommender.recommend(item)
    with pytest.raises(TypeError, match="user_ids must be a sequence of raw ids, not a string"):
        recommender.recommend_users("U01")
    with pytest.raises(TypeError, match="got int"):
        recommender.recommend(3)
    assert len(recommender.recommend([item], k=2)) == 2  # the documented way to pass one id


@pytest.mark.parametrize("k", [-1, 0, True, 2.5, "5", None])
def test_recommender_refuses_a_bad_k(recommender: Recommender, k: Any) -> None:
    item = str(recommender.item_ids[3])
    with pytest.raises(ValueError, match=rf"k must be an integer >= 1, got {k!r}"):
        recommender.recommend([item], k=k)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        recommender.recommend_users(["U01"], k=k)


# --------------------------------------------------------------------------------------------------- 11.11
@pytest.mark.slow
def test_a_failing_run_ends_its_mlflow_run_as_failed(tmp_path: Path, mlflow_dir: Path) -> None:
    project = copy_project(tmp_path / "project")
    # no trained model: the run fails before its first node and any MLflow run, naming what is missing
    proc = kedro_run(project, "--pipelines=recommend", "--env=sample")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "dataset 'maf.trained_model'" in out and "node 'maf.train_model'" in out
    assert project_runs(mlflow_dir, project) == []
    # a node that fails: the MLflow run ends as FAILED
    raw = project / "data" / "01_raw" / "sample" / "Clothing_Shoes_and_Jewelry_sample.json.gz"
    raw.write_bytes(b"\x1f\x8b not really gzip")
    proc = kedro_run(project, "--pipelines=data", "--env=sample")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, out
    (run,) = project_runs(mlflow_dir, project)
    assert run.info.status == "FAILED"


def _default_sigint() -> None:
    """A child of a background job inherits SIGINT ignored; give the run the default (KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_run_ends_its_mlflow_run_as_killed(
    full_run, tmp_path: Path, mlflow_dir: Path, signum: int
) -> None:
    """SIGTERM or Ctrl-C while a node runs (training, in a copy of the sample run): the MLflow run ends as
    KILLED (it stayed RUNNING after SIGTERM, and MLflow's exit handler marked it FINISHED after Ctrl-C)."""
    project = tmp_path / "project"
    shutil.copytree(full_run[0], project, ignore=shutil.ignore_patterns(".viz", "checkpoints"))
    MlflowClient(f"sqlite:///{mlflow_dir}/mlflow.db").search_experiments()  # the store exists before polling
    log = tmp_path / "run.log"
    params = "training.epochs=500,training.early_stopping.patience=500,training.keep_checkpoint=false"
    with log.open("w") as out:
        env = {
            **os.environ,
            "KEDRO_LOGGING_CONFIG": str(REPO / "conf" / "logging.yml"),
            "PYTHONUNBUFFERED": "1",
        }
        cmd = [
            sys.executable,
            "-m",
            "kedro",
            "run",
            "--pipelines=training",
            "--env=sample",
            f"--params={params}",
        ]
        proc = subprocess.Popen(
            cmd, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_default_sigint
        )
        try:
            deadline = time.monotonic() + 240
            while "epoch 2/500" not in log.read_text():  # inside the training node
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "training did not start"
                time.sleep(0.5)
            (running,) = project_runs(mlflow_dir, project)
            assert running.info.status == "RUNNING"
            proc.send_signal(signum)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert proc.returncode != 0, text[-3000:]
    (run,) = project_runs(mlflow_dir, project)
    assert run.info.status == "KILLED", text[-3000:]
    assert f"MLflow run {run.info.run_id} ended as KILLED" in text
    assert "Pipeline execution completed" not in text
