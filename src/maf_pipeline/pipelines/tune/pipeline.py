"""Wiring of the tune pipeline: one study node, then its reports."""

from kedro.pipeline import Node, Pipeline

from ..training.pipeline import SHARED_INPUTS  # what every model's training reads


def create_pipeline(**kwargs) -> Pipeline:
    """Raw data to the tuned parameters: the data chain and the features, then the study (tag ``tune``).

    ``kedro run --pipeline=tune --tags=tune`` reruns only the study on existing sequences and features.
    """
    from ..features import create_pipeline as features_pipeline
    from ..ingestion import create_pipeline as ingestion_pipeline
    from ..preprocessing import create_pipeline as preprocessing_pipeline
    from ..sequences import create_pipeline as sequences_pipeline

    data = ingestion_pipeline() + preprocessing_pipeline() + sequences_pipeline() + features_pipeline()
    return data + create_study_pipeline()


def create_study_pipeline() -> Pipeline:
    """Search ``tune.model``'s parameters (``tune.space``) on validation; write the best point and plots."""
    from .nodes import run_study, study_reports  # torch and optuna only when the pipeline is built to run

    return Pipeline(
        [
            Node(
                run_study,
                inputs=[*SHARED_INPUTS, "tune_study_storage", "parameters"],
                outputs=["tune.best_params", "tune.trials"],
                name="run_study",
                namespace="tune",
            ),
            Node(
                study_reports,
                inputs=["tune_study_storage", "tune.best_params", "params:tune"],
                outputs=["tune.optimization_history", "tune.param_importances"],
                name="plot_study",
                namespace="tune",
            ),
        ],
        tags=["tune"],
    )
