"""MLflow tracking on top of kedro-mlflow: where the store lives, and what a run logs beyond parameters.

kedro-mlflow opens one MLflow run per ``kedro run`` and logs the parameters every node reads. This hook adds,
to that active run:

* the per-epoch history of every ``<model>.training_history`` (training loss parts and validation metrics,
  ``step = epoch``), so the UI draws training curves;
* the final validation and test metrics of every ``<model>.metrics``;
* every saved output whose catalog layer is ``reporting`` or ``models`` (JSON/Markdown/PNG reports, the
  features manifest, the best model's weights) as an artifact under its folder relative to ``data/``;
* at the end of a run that trained a model listed in ``serving.models``, that model as an MLflow Model
  (``maf_pipeline.serving``: pyfunc, ``runs:/<run_id>/model``), registered when
  ``serving.registered_model_name`` is set.

It also ends the run as KILLED when the process is interrupted (Ctrl-C, SIGTERM) before the pipeline ends:
otherwise MLflow's exit handler would mark it FINISHED, or, killed by SIGTERM, it would stay RUNNING forever
(a failing node ends it as FAILED through kedro-mlflow's ``on_pipeline_error``).

Nothing is logged when no MLflow run is active (tracking disabled, or a plain runner in a test).
``ParameterSchemaHook`` checks the run's parameters against ``maf_pipeline.parameters`` before anything runs.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.framework.project import PACKAGE_NAME
from kedro.utils import find_kedro_project

logger = logging.getLogger(__name__)

#: Environment variable naming the folder of the MLflow store (``mlflow.db`` + ``mlartifacts/``).
MLFLOW_DIR_ENV = "MAF_MLFLOW_DIR"
_MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_BAD_CHARS = re.compile(r"[^/\w.\- ]")


def mlflow_dir() -> str:
    """Folder of the MLflow store: ``$MAF_MLFLOW_DIR`` when set, else the Kedro project root found from the
    working directory (as the ``kedro`` CLI finds it), so a notebook in ``notebooks/`` uses the same store.

    Registered as the ``mlflow_dir`` config resolver (``${mlflow_dir:}`` in ``conf/base/mlflow.yml``).
    """
    folder = os.environ.get(MLFLOW_DIR_ENV)
    if folder:
        return Path(folder).expanduser().resolve().as_posix()
    root = find_kedro_project(Path.cwd())
    return Path(root or Path.cwd()).resolve().as_posix()


def metric_key(*parts: str) -> str:
    """An MLflow-valid metric name from dotted parts: ``ndcg@20`` becomes ``ndcg_at_20``."""
    key = ".".join(str(p) for p in parts if p)
    return _BAD_CHARS.sub("_", key.replace("@", "_at_"))


def history_metrics(model: str, history: dict[str, Any]) -> list[tuple[str, float, int]]:
    """``(key, value, step)`` triples of a ``<model>.training_history``: per epoch the training loss parts
    (``<model>.train.<part>``), validation metrics (``<model>.valid.<metric>``) and epoch seconds."""
    rows: list[tuple[str, float, int]] = []
    for entry in history.get("epochs", []):
        step = int(entry["epoch"])
        for part, value in (entry.get("loss") or {}).items():
            rows.append((metric_key(model, "train", part), float(value), step))
        for name, value in (entry.get("valid") or {}).items():
            if name != "num_users":
                rows.append((metric_key(model, "valid", name), float(value), step))
        if "seconds" in entry:
            rows.append((metric_key(model, "epoch_seconds"), float(entry["seconds"]), step))
    if history.get("best_epoch"):
        rows.append((metric_key(model, "best_epoch"), float(history["best_epoch"]), 0))
    return [r for r in rows if math.isfinite(r[1])]


def final_metrics(model: str, metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a ``<model>.metrics`` report: ``<model>.test.<metric>`` and
    ``<model>.final_valid.<metric>`` (not ``<model>.valid.*``, the per-epoch validation curves)."""
    out = {}
    for split, prefix in (("valid", "final_valid"), ("test", "test")):
        for name, value in (metrics.get(split) or {}).items():
            if name != "num_users" and isinstance(value, int | float) and math.isfinite(value):
                out[metric_key(model, prefix, name)] = float(value)
    return out


def _layer(dataset: Any) -> str | None:
    meta = getattr(dataset, "metadata", None) or {}
    return (meta.get("kedro-viz") or {}).get("layer")


def _local_path(dataset: Any) -> Path | None:
    """The local file (or folder) a saved dataset wrote, or None for remote or path-less datasets."""
    if getattr(dataset, "_protocol", "file") not in ("file", "local", None):
        return None
    get_path = getattr(dataset, "_get_save_path", None)
    path = get_path() if callable(get_path) else getattr(dataset, "_filepath", None)
    return Path(str(path)) if path is not None else None


class ParameterSchemaHook:
    """Validates the run's parameters (types, ranges, unknown keys, names that select nothing) and checks that
    every intermediate input the run does not make is on disk, before the first node and before the MLflow
    run starts: a bad ``--params`` or a deleted intermediate fails at once, named, instead of in a node.
    Valid parameters reach the nodes complete: every omitted key at the schema's default."""

    @hook_impl
    def after_catalog_created(self, catalog: Any, parameters: dict[str, Any]) -> None:
        """Replace ``parameters`` and every ``params:<dotted.name>`` entry by the default-filled values
        (invalid parameters are left as they are: ``before_pipeline_run`` reports them)."""
        from kedro.validation import ParameterValidationError

        from maf_pipeline.parameters import resolve_parameters

        try:
            resolved = resolve_parameters(parameters.get("parameters") or {})
        except ParameterValidationError:
            return
        quiet = logging.getLogger("kedro.io.data_catalog")  # it warns "Replacing dataset" once per key
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            for name, value in _param_entries(resolved):
                catalog[name] = value
        finally:
            quiet.setLevel(level)

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        """Raise ``ParameterValidationError`` listing every bad parameter, or ``MissingInputError`` naming
        every missing input with the node that makes it."""
        from maf_pipeline.parameters import validate_parameters
        from maf_pipeline.pipeline_registry import every_pipeline
        from maf_pipeline.run_checks import check_inputs

        validate_parameters(catalog.load("parameters"))
        check_inputs(pipeline, catalog, every_pipeline)  # every pipeline, built only if an input is missing


def _block(params: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """Block ``name`` of a run's parameters with the schema's defaults; its defaults alone when the block is
    invalid (the parameter check, which runs before the first node, reports it)."""
    from maf_pipeline.parameters import filled

    try:
        return filled(name, (params or {}).get(name))
    except ValueError:
        return filled(name)


def _param_entries(params: dict[str, Any]) -> list[tuple[str, Any]]:
    """``("parameters", all)`` and ``("params:a.b", value)`` for every nested key, as Kedro feeds them."""
    out: list[tuple[str, Any]] = [("parameters", params)]

    def walk(prefix: str, value: Any) -> None:
        out.append((f"params:{prefix}", value))
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)

    for key, value in params.items():
        walk(str(key), value)
    return out


class MlflowStoreHook:
    """Creates the SQLite tracking store and the run's experiment under a file lock, before kedro-mlflow
    touches them: two runs started together on a fresh store otherwise both create its tables (one fails
    with "table experiments already exists") or both create the experiment ("UNIQUE constraint failed")."""

    @hook_impl(tryfirst=True)  # before kedro-mlflow's after_context_created sets the store up
    def after_context_created(self, context: Any) -> None:
        """Initialise a local SQLite store and its experiment once, under ``<mlflow.db>.lock``."""
        try:
            loader = context.config_loader
            loader.config_patterns.setdefault("mlflow", ["mlflow*", "mlflow*/**", "**/mlflow*"])
            conf = loader["mlflow"]
        except Exception:
            return
        uri = str(((conf.get("server") or {}).get("mlflow_tracking_uri")) or "")
        if not uri.startswith("sqlite:///"):
            return
        experiment = (conf.get("tracking") or {}).get("experiment") or {}
        name = experiment.get("name") or PACKAGE_NAME  # kedro-mlflow's default: the package's name
        location = (experiment.get("create_experiment_kwargs") or {}).get("artifact_location")
        busy_s = _block(context.params, "run")["mlflow_busy_timeout_s"]
        wait_for_sqlite_store(uri, busy_s)
        prepare_sqlite_store(uri, name, location)


_SQLITE_BUSY_MS = {"value": 60_000}  # PRAGMA busy_timeout of this process's SQLite connections


def _sqlite_busy_timeout(dbapi_connection: Any, record: Any) -> None:
    import sqlite3

    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_MS['value']}")


class MlflowStoreLockedError(RuntimeError):
    """The SQLite tracking store stayed locked by another process's write transaction past the timeout."""


def wait_for_sqlite_store(uri: str, timeout_s: float | None) -> None:
    """Make every SQLite connection of this process wait ``timeout_s`` seconds for a lock held by another
    process (``PRAGMA busy_timeout``; SQLite's default is 5 s, after which MLflow failed with a raw
    "database is locked"), then wait that long for the store to be writable now, or fail naming it."""
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    ms = int(1000 * (timeout_s if timeout_s is not None else 24 * 3600))
    _SQLITE_BUSY_MS["value"] = ms
    if not event.contains(Engine, "connect", _sqlite_busy_timeout):
        event.listen(Engine, "connect", _sqlite_busy_timeout)
    db = Path(uri.removeprefix("sqlite:///").split("?")[0])
    if not db.exists():
        return
    connection = sqlite3.connect(db, timeout=ms / 1000, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")  # waits for another writer's transaction to end
        connection.execute("ROLLBACK")
    except sqlite3.OperationalError as error:
        raise MlflowStoreLockedError(
            f"MLflow tracking store {db} is locked by another process ({error}) and stayed locked for "
            f"{ms / 1000:g} s (run.mlflow_busy_timeout_s). Wait for that process (an `mlflow ui` or another "
            "run writing) or raise run.mlflow_busy_timeout_s."
        ) from None
    finally:
        connection.close()


def prepare_sqlite_store(uri: str, experiment: str | None, artifact_location: str | None) -> None:
    """The store's tables and ``experiment`` created by one process at a time (waits up to 120 s)."""
    from mlflow.tracking import MlflowClient

    from maf_pipeline.locks import FolderLock

    db = Path(uri.removeprefix("sqlite:///").split("?")[0])
    with FolderLock(db, 120, "MLflow tracking store", None):
        client = MlflowClient(tracking_uri=uri)  # creates the tables of a new store
        if experiment and client.get_experiment_by_name(experiment) is None:
            if artifact_location and "://" not in artifact_location:  # as kedro-mlflow gives it: a URI
                artifact_location = Path(artifact_location).resolve().as_uri()
            client.create_experiment(experiment, artifact_location=artifact_location)


class RunLockHook:
    """One ``kedro run`` at a time per data folder: two runs writing the same catalog files would corrupt
    them. The lock (``<data_dir>.lock``, see :mod:`maf_pipeline.locks`) is taken before the first node and
    before the MLflow run starts, and released when the run ends or fails; a second run fails at once naming
    the first (pid, command, start time) or waits ``run.lock_wait_s`` seconds. A killed run's lock is taken
    over. Environments with their own ``data_dir`` (``conf/<env>/globals.yml``) lock their own folder."""

    def __init__(self) -> None:
        self._folder: Path | None = None
        self._lock: Any = None

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        """Remember the run's data folder (``globals.data_dir``, relative to the project)."""
        try:
            data_dir = context.config_loader["globals"].get("data_dir", "data")
        except Exception:
            data_dir = "data"
        self._folder = Path(context.project_path) / str(data_dir)

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        """Take the data folder's lock (``FolderLockedError`` naming the holder when it is busy)."""
        from maf_pipeline.locks import FolderLock

        if self._folder is None or self._lock is not None or int(os.environ.get("RANK", "0")) != 0:
            return  # under torchrun the ranks are one run: rank 0 holds the lock (and alone writes)
        params = catalog.load("parameters") if catalog.exists("parameters") else {}
        wait_s = _block(params, "run")["lock_wait_s"]
        self._lock = FolderLock(self._folder, wait_s, "the project data folder", "run.lock_wait_s").acquire()

    @hook_impl
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        """Release the lock."""
        self._release()

    @hook_impl
    def on_pipeline_error(self, error: Exception, run_params: dict[str, Any], pipeline: Any, catalog: Any):
        """Release the lock of a failed run."""
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def fail_orphaned_runs(uri: str, experiment_id: str, current: str) -> list[str]:
    """Mark FAILED the RUNNING runs of ``experiment_id`` whose process (tags ``maf.pid`` on ``maf.host``, this
    host) is gone: a run killed with SIGKILL cannot end its MLflow run, which stayed RUNNING for ever."""
    from mlflow.tracking import MlflowClient

    from maf_pipeline.locks import pid_alive

    client = MlflowClient(uri)
    host, failed = socket.gethostname(), []
    for stale in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=200):
        tags = stale.data.tags
        pid = tags.get("maf.pid")
        if stale.info.run_id == current or tags.get("maf.host") != host or not (pid or "").isdigit():
            continue
        if pid_alive(int(pid)):
            continue
        note = f"process {pid} ended without closing this run (killed); marked FAILED by run {current}"
        client.set_tag(stale.info.run_id, "maf.note", note)
        client.set_terminated(stale.info.run_id, "FAILED")
        failed.append(stale.info.run_id)
    if failed:
        logger.warning(
            "MLflow runs %s of processes that are gone (killed) were RUNNING: marked FAILED", failed
        )
    return failed


class RunInterrupted(SystemExit):
    """Raised in the main thread on SIGTERM, so the run unwinds (and its MLflow run is ended as KILLED)."""


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise RunInterrupted(128 + signum)


class MlflowReportingHook:
    """Logs metric histories, final metrics, reporting/models-layer artifacts and the trained model (pyfunc)
    to the active MLflow run, and ends that run as KILLED when the process is interrupted."""

    def __init__(self, artifact_layers: Iterable[str] = ("reporting", "models")) -> None:
        self.artifact_layers = frozenset(artifact_layers)
        self._catalog: Any = None
        self._data_dir: Path | None = None
        self._params: dict[str, Any] = {}
        self._trained: list[str] = []
        self._run: tuple[str, str] | None = None  # (tracking uri, run id) while a pipeline runs
        self._previous_sigterm: Any = None
        self._exit_handler = False

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        """Remember the project's ``data/`` folder: artifact paths mirror it (``08_reporting/maf/...``)."""
        self._data_dir = Path(context.project_path) / "data"

    @hook_impl
    def after_catalog_created(self, catalog: Any) -> None:
        """Keep the catalog to find the file behind a saved dataset."""
        self._catalog = catalog

    @hook_impl(trylast=True)  # after kedro-mlflow started the run
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        """Note the active MLflow run and guard it against interruption (SIGTERM, Ctrl-C)."""
        import mlflow

        self._trained = []
        self._params = catalog.load("parameters") if catalog.exists("parameters") else {}
        run = mlflow.active_run()
        if run is None:
            return
        self._run = (mlflow.get_tracking_uri(), run.info.run_id)
        try:
            mlflow.set_tags({"maf.pid": str(os.getpid()), "maf.host": socket.gethostname()})
            fail_orphaned_runs(mlflow.get_tracking_uri(), run.info.experiment_id, run.info.run_id)
        except Exception:  # tracking must never fail a pipeline run
            logger.warning("could not check the store for runs of killed processes", exc_info=True)
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupted)
        if not self._exit_handler:  # runs before MLflow's own exit handler (which would mark it FINISHED)
            atexit.register(self.end_interrupted_run)
            self._exit_handler = True

    @hook_impl(tryfirst=True)  # before kedro-mlflow ends the run
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        """Log the trained models of ``serving.models`` as MLflow Models, then drop the interruption guard."""
        try:
            self._log_models(catalog)
        except Exception:  # tracking must never fail a pipeline run
            logger.warning("could not log the trained model to MLflow", exc_info=True)
        self._release()

    @hook_impl
    def on_pipeline_error(
        self, error: Exception, run_params: dict[str, Any], pipeline: Any, catalog: Any
    ) -> None:
        """kedro-mlflow ends the run as FAILED; only the guard is dropped here."""
        self._release()

    def _release(self) -> None:
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm)
        self._previous_sigterm = None
        self._run = None

    def end_interrupted_run(self) -> None:
        """End the run of a pipeline that never finished (interrupted) as KILLED; a no-op otherwise."""
        if self._run is None:
            return
        import mlflow
        from mlflow.tracking import MlflowClient

        uri, run_id = self._run
        self._run = None
        try:
            while mlflow.active_run() is not None:  # kedro-mlflow may have pushed the run more than once
                mlflow.end_run("KILLED")
            MlflowClient(uri).set_terminated(run_id, "KILLED")
            logger.warning("run interrupted: MLflow run %s ended as KILLED", run_id)
        except Exception:
            logger.warning("could not end the interrupted MLflow run %s", run_id, exc_info=True)

    def _log_models(self, catalog: Any) -> None:
        import mlflow

        serving = _block(self._params, "serving")
        if mlflow.active_run() is None or not serving["log_model"]:
            return
        models = list(serving["models"])
        trained = [m for m in models if m in self._trained]
        if not trained:  # e.g. a data-side run: no model code (torch) is imported
            return
        from maf_pipeline.inference import FEATURE_DATASETS, raw_user_histories
        from maf_pipeline.serving import log_recommender

        for model in trained:
            dataset = catalog.get(f"{model}.trained_model")
            meta = dataset.load()["__metadata__"]
            features = {
                FEATURE_DATASETS[m]: _local_path(catalog.get(FEATURE_DATASETS[m]))
                for m in meta.get("feature_dims", {})
            }
            histories = raw_user_histories(
                *(
                    catalog.load(n)
                    for n in ("user_index", "train_sequences", "valid_sequences", "test_sequences")
                )
            )
            params = dict(serving)
            if (
                model != models[0]
            ):  # the first listed model is `model` (and the registered name), others suffixed
                params["artifact_path"] = f"{serving['artifact_path']}_{model}"
                if serving["registered_model_name"]:
                    params["registered_model_name"] = f"{serving['registered_model_name']}-{model}"
            info = log_recommender(
                _local_path(dataset),
                catalog.load("item_index"),
                catalog.load("filtered_items"),
                histories,
                features,
                params,
            )
            logger.info("logged %s as MLflow Model %s", model, info.model_uri)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any) -> None:
        """Log what ``dataset_name`` holds to the active run (histories, metrics, artifact files)."""
        import mlflow

        run = mlflow.active_run()
        if run is None:
            return
        model, _, kind = dataset_name.rpartition(".")
        if kind == "trained_model":
            self._trained.append(model)
        try:
            if kind == "training_history" and isinstance(data, dict):
                self._log_history(run.info.run_id, model, data)
            elif kind == "metrics" and isinstance(data, dict):
                mlflow.log_metrics(final_metrics(model, data))
            self._log_artifact(dataset_name)
        except Exception:  # tracking must never fail a pipeline run
            logger.warning("could not log %s to MLflow", dataset_name, exc_info=True)

    def _log_history(self, run_id: str, model: str, history: dict[str, Any]) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        now = int(time.time() * 1000)
        rows = [Metric(k, v, now, step) for k, v, step in history_metrics(model, history)]
        client = MlflowClient()
        for i in range(0, len(rows), _MAX_BATCH):
            client.log_batch(run_id, metrics=rows[i : i + _MAX_BATCH])
        logger.info("logged %d metric values of %s.training_history to MLflow", len(rows), model)

    def _log_artifact(self, dataset_name: str) -> None:
        import mlflow

        dataset = self._catalog.get(dataset_name) if self._catalog is not None else None
        if dataset is None or _layer(dataset) not in self.artifact_layers:
            return
        path = _local_path(dataset)
        if path is None or not path.exists():
            return
        folder = path.parent
        try:
            artifact_dir = folder.resolve().relative_to(self._data_dir.resolve()).as_posix()
        except (AttributeError, ValueError):
            artifact_dir = _layer(dataset)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=f"{artifact_dir}/{path.name}")
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_dir)
