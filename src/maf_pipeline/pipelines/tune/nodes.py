"""Tune nodes: an Optuna study over one model's parameters, chosen on the validation metric only.

Each trial trains ``tune.model`` (its ``params:<model>.model`` block and ``params:training``, with the trial's
values of ``tune.space`` and ``tune.model_space.<model>`` set on top) once per ``tune.seeds`` seed through the
trainer (``maf_pipeline.training.train_on``); its value is the mean over seeds of the best-epoch validation
metric (the same number early stopping keeps).
The first seed reports every epoch's validation value, so the pruner stops trials whose curve falls behind
(Optuna's median rule by default). The study lives in an SQLite file (``tune_study_storage``): finished trials
survive a kill, and a re-run continues until ``tune.n_trials`` trials have finished. Each trial is an MLflow
run nested under the run of ``kedro run`` (or a parent run of its own). Test data is never touched.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd

from maf_pipeline.hooks import metric_key
from maf_pipeline.model_inputs import ModelInputs
from maf_pipeline.pipelines.compare.nodes import deep_merge
from maf_pipeline.training import train_on

logger = logging.getLogger(__name__)

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
BLOCKS = ("model", "training")


def _parse_space(space: dict[str, Any], blocks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``tune.space`` checked against the blocks it changes: ``<block>.<key>`` names, ranges or choices."""
    if not space:
        raise ValueError(
            "tune.space is empty: give ranges or choices, e.g. "
            "{training.learning_rate: {low: 1e-4, high: 1e-2, log: true}}"
        )
    parsed = {}
    for name, spec in space.items():
        block, _, key = name.partition(".")
        if block not in BLOCKS or not key:
            raise ValueError(f"tune.space key {name!r} must be model.<key> or training.<key>")
        target = blocks[block]
        for part in key.split(".")[:-1]:
            target = target.get(part) if isinstance(target, dict) else None
        if not isinstance(target, dict) or key.split(".")[-1] not in target:
            known = sorted(blocks[block])
            raise ValueError(f"tune.space key {name!r}: {key!r} is not a key of the {block} block ({known})")
        if not isinstance(spec, dict) or not ("choices" in spec or {"low", "high"} <= set(spec)):
            raise ValueError(f"tune.space.{name} needs choices: [...] or low and high (got {spec!r})")
        parsed[name] = dict(spec)
    return parsed


def suggest(trial: optuna.Trial, name: str, spec: dict[str, Any]) -> Any:
    """The trial's value of one search dimension (categorical, int or float, optionally log-scaled)."""
    if "choices" in spec:
        return trial.suggest_categorical(name, list(spec["choices"]))
    low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    kind = spec.get("type") or ("int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind == "int":
        return trial.suggest_int(name, int(low), int(high), step=int(step or 1), log=log)
    return trial.suggest_float(name, float(low), float(high), step=step, log=log)


def _apply(blocks: dict[str, dict[str, Any]], values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Copies of the blocks with ``<block>.<key.path>`` values set."""
    out = copy.deepcopy(blocks)
    for name, value in values.items():
        block, _, key = name.partition(".")
        *parents, leaf = key.split(".")
        target = out[block]
        for part in parents:
            target = target[part]
        target[leaf] = value
    return out


def _settings(parameters: dict[str, Any]) -> dict[str, Any]:
    tune = dict(parameters["tune"])
    name = tune["model"]
    if name not in parameters or "model" not in (parameters[name] or {}):
        raise ValueError(f"tune.model {name!r} has no params:{name}.model block")
    training = deep_merge(parameters["training"], tune["training"])
    training["checkpoint_dir"] = None  # a killed trial is run again; its checkpoints would only litter
    metric = tune["metric"] or training["early_stopping"]["metric"]
    seeds = [int(s) for s in (tune["seeds"] or [parameters["seed"]])]
    blocks = {"model": copy.deepcopy(parameters[name]["model"]), "training": training}
    return {
        **tune,
        "metric": metric,
        "seeds": seeds,
        "blocks": blocks,
        "max_len": parameters["sequences"]["max_len"],
        "space": _parse_space({**tune["space"], **tune["model_space"].get(name, {})}, blocks),
        "seed": int(parameters["seed"]),
    }


def _pruner(spec: dict[str, Any]) -> optuna.pruners.BasePruner:
    spec = dict(spec)
    kind, percentile = spec.pop("type"), spec.pop("percentile")
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(**spec)
    if kind == "percentile":
        if percentile is None:
            raise ValueError("tune.pruner.percentile is needed with type: percentile (e.g. 25.0)")
        return optuna.pruners.PercentilePruner(float(percentile), **spec)
    raise ValueError(f"tune.pruner.type must be median, percentile or none, got {kind!r}")


def _storage(storage_url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """The study storage, its schema created when new. Two processes opening a new storage at once (a second
    tune worker, a dashboard) both create the schema and one fails; the schema is then there, so try again."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                # heartbeats (a killed run's RUNNING trials become FAIL) are "experimental"
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(storage_url, heartbeat_interval=60, grace_period=180)
        except (IntegrityError, OperationalError):
            if attempt == attempts:
                raise
            logger.info("tune: the study storage's schema is being created by another process; retrying")
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def load_study(storage_url: str, tune: dict[str, Any], seed: int = 0) -> optuna.Study:
    """The named study in the storage, created when new (maximising the validation metric)."""
    return optuna.create_study(
        study_name=tune["study_name"],
        storage=_storage(storage_url),
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=int(tune["n_startup_trials"])),
        pruner=_pruner(tune["pruner"]),
        load_if_exists=True,
    )


class _Objective:
    """One trial: train every seed with the trial's values, report the first seed's curve, return the mean."""

    def __init__(self, inputs: ModelInputs, cfg: dict[str, Any], mlflow_parent: Any) -> None:
        self.inputs, self.cfg, self.parent = inputs, cfg, mlflow_parent

    def __call__(self, trial: optuna.Trial) -> float:
        import mlflow

        values = {name: suggest(trial, name, spec) for name, spec in self.cfg["space"].items()}
        earlier = _finished_twin(trial, values)
        if earlier is not None:  # a point already trained (e.g. enqueued, then drawn by the sampler again)
            return _repeat(trial, earlier)
        blocks = _apply(self.cfg["blocks"], values)
        metric, scores = self.cfg["metric"], []
        run = mlflow.start_run(run_name=f"{self.cfg['study_name']} trial {trial.number}", nested=True) \
            if self.parent else None  # fmt: skip
        try:
            if run:
                mlflow.log_params({**values, "trial": trial.number, "seeds": str(self.cfg["seeds"])})
            for i, seed in enumerate(self.cfg["seeds"]):
                scores.append(self._train(trial, blocks, seed, first=i == 0, metric=metric, log=bool(run)))
            value = float(np.mean(scores))
            if run:
                mlflow.log_metric(metric_key("valid", metric), value)
                mlflow.set_tag("state", "COMPLETE")
            return value
        except optuna.TrialPruned:
            if run:
                mlflow.set_tag("state", "PRUNED")
            raise
        finally:
            if run:
                mlflow.end_run()

    def _train(
        self, trial: optuna.Trial, blocks: dict[str, Any], seed: int, first: bool, metric: str, log: bool
    ) -> float:
        import mlflow

        def report(epoch: int, valid: dict[str, float]) -> None:
            if log:
                mlflow.log_metric(metric_key("valid", metric, f"seed{seed}"), valid[metric], step=epoch)
            if first:
                trial.report(valid[metric], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"validation {metric} {valid[metric]:.4f} at epoch {epoch}")

        _, history = train_on(
            self.inputs, blocks["model"], blocks["training"], self.cfg["max_len"], seed, on_validation=report
        )
        trial.set_user_attr(f"best_epoch_seed{seed}", history["best_epoch"])
        trial.set_user_attr(f"valid_seed{seed}", history["best_valid"][metric])
        return float(history["best_valid"][metric])


def _finished_twin(trial: optuna.Trial, values: dict[str, Any]) -> optuna.trial.FrozenTrial | None:
    """An earlier finished trial of the study at exactly these values (training is seeded, so its result is
    this trial's result: nothing to gain from training it again)."""
    finished = trial.study.get_trials(deepcopy=False, states=FINISHED)
    return next((t for t in finished if t.number != trial.number and t.params == values), None)


def _repeat(trial: optuna.Trial, earlier: optuna.trial.FrozenTrial) -> float:
    """Record ``trial`` as a repeat of ``earlier``: its value (or its pruning) without training again."""
    trial.set_user_attr("repeat_of", earlier.number)
    for key, value in earlier.user_attrs.items():
        if key != "repeat_of":
            trial.set_user_attr(key, value)
    logger.info("tune trial %d repeats trial %d (the same values): its result, not trained again",
                trial.number, earlier.number)  # fmt: skip
    if earlier.state == optuna.trial.TrialState.PRUNED:
        raise optuna.TrialPruned(f"repeat of pruned trial {earlier.number}")
    return float(earlier.value)


def _trial_line(n_trials: int):
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = sum(t.state in FINISHED for t in study.trials)
        best = f"{study.best_value:.4f} (trial {study.best_trial.number})" if _has_complete(study) else "-"
        value = f"{trial.value:.4f}" if trial.value is not None else trial.state.name.lower()
        if trial.state == optuna.trial.TrialState.PRUNED:
            value = f"pruned at epoch {trial.last_step}"
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        logger.info("tune trial %d (%d/%d finished): %s | best %s | %s | %.0f s",
                    trial.number, done, n_trials, value, best, trial.params, seconds)  # fmt: skip

    return callback


def _has_complete(study: optuna.Study) -> bool:
    return any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def run_study(
    train_sequences: pd.DataFrame,
    valid_sequences: pd.DataFrame,
    item_index: pd.DataFrame,
    image_features: dict[str, Any],
    text_features: dict[str, Any],
    category_features: dict[str, Any],
    storage_url: str,
    parameters: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Run (or continue) the study until ``tune.n_trials`` trials have finished or ``tune.timeout_s`` passed.

    Returns the best trial's parameters, its validation metric and the merged model and training blocks
    (``best_params``), and the trials table (one row per trial: state, value, parameters, best epochs).
    """
    import mlflow

    cfg = _settings(parameters)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from _trial_line
    study = load_study(storage_url, cfg, cfg["seed"])
    for point in cfg["enqueue"]:
        study.enqueue_trial(dict(point), skip_if_exists=True)
    n_trials = int(cfg["n_trials"])
    done = sum(t.state in FINISHED for t in study.trials)
    logger.info("tune %s: study %r, %d of %d trials already finished, metric valid %s, seeds %s, space %s",
                cfg["model"], cfg["study_name"], done, n_trials, cfg["metric"], cfg["seeds"],
                sorted(cfg["space"]))  # fmt: skip
    inputs = ModelInputs(train_sequences, valid_sequences, item_index, None,  # the tuner never reads test
                         image_features, text_features, category_features)  # fmt: skip
    own_parent = cfg["mlflow"] and mlflow.active_run() is None
    parent = mlflow.start_run(run_name=f"tune {cfg['study_name']}") if own_parent else mlflow.active_run()
    parent = parent if cfg["mlflow"] else None
    started = time.perf_counter()
    try:
        if parent:
            mlflow.set_tags({"tune.study": cfg["study_name"], "tune.model": cfg["model"]})
        if n_trials > done:
            study.optimize(
                _Objective(inputs, cfg, parent),
                n_trials=n_trials - done,
                timeout=cfg["timeout_s"],
                callbacks=[_trial_line(n_trials)],
                catch=(
                    ValueError,
                ),  # an impossible combination (e.g. d_mm not divisible by heads) fails one trial
            )
        best = _best_params(study, cfg)
        if parent and best["value"] is not None:
            mlflow.log_metric(metric_key("tune", "best_valid", cfg["metric"]), best["value"])
    finally:
        if own_parent:
            mlflow.end_run()
    logger.info("tune %s: best trial %s, valid %s %s, %s (%.0f s this run)", cfg["model"], best["best_trial"],
                cfg["metric"], best["value"], best["params"], time.perf_counter() - started)  # fmt: skip
    return best, _trials_table(study)


def _best_params(study: optuna.Study, cfg: dict[str, Any]) -> dict[str, Any]:
    states = pd.Series([t.state.name for t in study.trials]).value_counts().to_dict()
    if not _has_complete(study):
        raise RuntimeError(f"tune: no trial of study {cfg['study_name']!r} completed ({states}); see the log")
    best = study.best_trial
    blocks = _apply(cfg["blocks"], best.params)
    blocks["training"].pop("checkpoint_dir", None)
    return {
        "study": cfg["study_name"],
        "model": cfg["model"],
        "metric": f"valid {cfg['metric']}",
        "value": float(best.value),
        "best_trial": best.number,
        "params": best.params,
        "seeds": cfg["seeds"],
        "per_seed": {k: v for k, v in best.user_attrs.items()},
        "model_block": blocks["model"],
        "training_block": blocks["training"],
        "trials": {k.lower(): int(v) for k, v in states.items()},
    }


def _trials_table(study: optuna.Study) -> pd.DataFrame:
    frame = study.trials_dataframe(attrs=("number", "state", "value", "duration", "params", "user_attrs"))
    if "duration" in frame:
        frame["duration"] = frame["duration"].dt.total_seconds().round(1)
    frame["last_epoch"] = [t.last_step for t in study.trials]
    return frame


def study_reports(
    storage_url: str, best_params: dict[str, Any], tune: dict[str, Any]
) -> tuple[plt.Figure, plt.Figure]:
    """Optuna's optimisation history and parameter importances (fANOVA) of the study, as figures."""
    from optuna.visualization import matplotlib as ovm

    study = optuna.load_study(study_name=best_params["study"], storage=storage_url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        history = ovm.plot_optimization_history(study, target_name=best_params["metric"]).figure
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(complete) >= 2 and len({tuple(sorted(t.params.items())) for t in complete}) >= 2:
            importances = ovm.plot_param_importances(study, target_name=best_params["metric"]).figure
        else:
            importances, ax = plt.subplots(figsize=(6, 2))
            ax.axis("off")
            ax.text(0.5, 0.5, f"parameter importances need 2 completed trials with different values "
                    f"({len(complete)} completed)", ha="center", va="center", wrap=True)  # fmt: skip
    for figure in (history, importances):
        figure.set_size_inches(8, 5)
        figure.tight_layout()
    return history, importances
