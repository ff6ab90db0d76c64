"""The trained model as an MLflow Model: a ``pyfunc`` flavor wrapping ``maf_pipeline.inference.Recommender``.

Every training run logs it (``hooks.MlflowReportingHook``, parameters in ``serving``), so the MLflow way of
using a model works without Kedro:

    mlflow.pyfunc.load_model("runs:/<run_id>/model").predict(pd.DataFrame({"user_id": ["A3CV..."]}))
    mlflow models serve -m runs:/<run_id>/model --env-manager local --host 127.0.0.1 --port 5001

Input: a table with a ``user_id`` column (a user the model was trained on: the recommendations follow their
whole history, as in the ``recommend`` pipeline) and/or a ``history`` column (a list of raw item ids, oldest
first); a row with a non-empty history uses it. In a JSON request give every row both keys, null for the
one not used (``{"user_id": "A3...", "history": null}``), or send rows of one kind only. Output: one row
per recommendation, ``request`` (the input row), ``user_id``, ``rank``, ``item_id``, ``title``, ``score``.
``k`` and ``exclude_seen`` are inference params.

The model folder holds everything it needs (no network, no project checkout): the weights as safetensors
(with the model config in their metadata), the id maps, titles, the users' histories, the feature tables the
model uses, and this package as code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array

logger = logging.getLogger(__name__)

#: Files of the model folder (``artifacts`` of the pyfunc model) and the catalog datasets they come from.
ARTIFACTS = {
    "item_index": "item_index.parquet",
    "items": "items.parquet",
    "histories": "histories.parquet",
}
OUTPUT_COLUMNS = ["request", "user_id", "rank", "item_id", "title", "score"]
# MLflow "models from code": the model is this script (run at load time), not a pickled object.
MODEL_SCRIPT = """import mlflow
from maf_pipeline.serving import RecommenderModel

mlflow.models.set_model(RecommenderModel())
"""


def signature(k: int = 10) -> ModelSignature:
    """Input: ``user_id`` and/or ``history`` per row; output: the long recommendation table; params: k."""
    return ModelSignature(
        inputs=Schema(
            [
                ColSpec(DataType.string, "user_id", required=False),
                ColSpec(Array(DataType.string), "history", required=False),
            ]
        ),
        outputs=Schema(
            [
                ColSpec(DataType.long, "request"),
                ColSpec(DataType.string, "user_id"),
                ColSpec(DataType.long, "rank"),
                ColSpec(DataType.string, "item_id"),
                ColSpec(DataType.string, "title"),
                ColSpec(DataType.float, "score"),
            ]
        ),
        params=ParamSchema(
            [ParamSpec("k", DataType.long, int(k)), ParamSpec("exclude_seen", DataType.boolean, True)]
        ),
    )


class RecommenderModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of ``Recommender``: rows of user ids or item histories in, top-k items out."""

    def load_context(self, context: Any) -> None:
        """Rebuild the ``Recommender`` from the files in the model folder (CPU)."""
        from maf_pipeline.datasets import SafetensorsDataset
        from maf_pipeline.inference import FEATURE_DATASETS, Recommender, load_model

        paths = context.artifacts
        artifact = SafetensorsDataset(paths["model"]).load()
        used = artifact["__metadata__"].get("feature_dims", {})
        features = {m: SafetensorsDataset(paths[FEATURE_DATASETS[m]]).load()["features"] for m in used}
        histories = pd.read_parquet(paths["histories"])
        self.recommender = Recommender(
            load_model(artifact, features),
            pd.read_parquet(paths["item_index"]),
            pd.read_parquet(paths["items"]),
            {
                u: np.array(h, dtype=np.int64)
                for u, h in zip(histories["user_id"], histories["items"], strict=True)
            },
        )
        self.default_k = int(context.model_config["k"])  # log_recommender writes serving.k there

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Top-k per input row (see the module docstring); rows naming nothing known get no output rows."""
        from maf_pipeline.inference import check_k

        params = params or {}
        k = check_k(int(params.get("k", self.default_k)))
        exclude_seen = bool(params.get("exclude_seen", True))
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if not {"user_id", "history"} & set(frame.columns):
            raise ValueError(f"input needs a user_id or a history column, got {list(frame.columns)}")
        rec = self.recommender
        requests, users, histories = [], [], []
        for row, record in enumerate(frame.to_dict("records")):
            history, user = record.get("history"), record.get("user_id")
            if isinstance(history, list | tuple | np.ndarray) and len(history):
                ids = [str(i) for i in history]
                known = [rec.index_of[i] for i in ids if i in rec.index_of]
                if len(known) < len(ids):
                    logger.warning("request %d: %d unknown item ids skipped", row, len(ids) - len(known))
                seq = np.asarray(known, dtype=np.int64)
            elif isinstance(user, str) and user in rec.histories:
                seq = rec.histories[user]
            else:
                logger.warning("request %d: unknown user %r and no history: no recommendations", row, user)
                continue
            if len(seq):
                requests.append(row)
                users.append(user if isinstance(user, str) else "")
                histories.append(seq)
        out = rec.recommend_histories(histories, k, exclude_seen)
        position = out.pop("query").to_numpy()
        out.insert(0, "request", np.asarray(requests, dtype=np.int64)[position])
        out.insert(1, "user_id", pd.array([users[i] for i in position], dtype=str))
        return out[OUTPUT_COLUMNS].reset_index(drop=True)


def _requirements() -> list[str]:
    """Pinned requirements of the model's environment (the installed versions; no inference subprocess)."""
    from importlib.metadata import version

    packages = ("mlflow", "torch", "numpy", "pandas", "pyarrow", "safetensors", "kedro", "kedro-datasets")
    return [f"{p}=={version(p)}" for p in packages]


def log_recommender(
    model_file: str | Path,
    item_index: pd.DataFrame,
    items: pd.DataFrame,
    histories: dict[str, np.ndarray],
    feature_files: dict[str, str | Path],
    serving_params: dict[str, Any],
) -> Any:
    """Log a trained model (``<model>.trained_model`` file + the tables it needs) to the active MLflow run as
    a pyfunc ``RecommenderModel``; registered under ``serving.registered_model_name`` when that is set."""
    k = int(serving_params["k"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        item_index[["item_idx", "item_id"]].to_parquet(folder / ARTIFACTS["item_index"], index=False)
        items[["item_id", "title"]].to_parquet(folder / ARTIFACTS["items"], index=False)
        pd.DataFrame(
            {"user_id": list(histories), "items": [np.asarray(h, dtype=np.int64) for h in histories.values()]}
        ).to_parquet(folder / ARTIFACTS["histories"], index=False)
        artifacts = {name: str(folder / file) for name, file in ARTIFACTS.items()}
        artifacts["model"] = str(folder / "model.safetensors")
        shutil.copyfile(model_file, artifacts["model"])
        for dataset, path in feature_files.items():
            artifacts[dataset] = str(folder / f"{dataset}.safetensors")
            shutil.copyfile(path, artifacts[dataset])
        (folder / "recommender_model.py").write_text(MODEL_SCRIPT)
        example = pd.DataFrame({"user_id": [next(iter(histories), "")], "history": [None]})
        with _quiet_progress():
            return mlflow.pyfunc.log_model(
                name=str(serving_params["artifact_path"]),
                python_model=str(folder / "recommender_model.py"),
                artifacts=artifacts,
                code_paths=[str(Path(__file__).parent)],
                signature=signature(k),
                input_example=example,
                model_config={"k": k},
                pip_requirements=_requirements(),
                registered_model_name=serving_params["registered_model_name"] or None,
            )


@contextlib.contextmanager
def _quiet_progress():
    """MLflow's artifact progress bars only on a terminal (as ``maf_pipeline.progress`` does for tqdm)."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(name)
    if not sys.stderr.isatty():
        os.environ[name] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous
