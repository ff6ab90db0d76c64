"""Evaluation wiring: one namespaced pipeline per trained model, plus the popularity floor (``pop``)."""

from kedro.pipeline import Node, Pipeline

from .nodes import evaluate_model, evaluate_popularity

SHARED_INPUTS = (
    "train_sequences",
    "valid_sequences",
    "test_sequences",
    "image_features",
    "text_features",
    "category_features",
)


def create_model_pipeline(model_name: str, seed: str = "params:seed") -> Pipeline:
    """Evaluate ``<model_name>.trained_model`` into ``<model_name>.metrics`` and ``.per_user_results``."""
    template = Pipeline(
        [
            Node(
                evaluate_model,
                inputs=["trained_model", *SHARED_INPUTS, "params:evaluation", "params:seed"],
                outputs=["metrics", "per_user_results"],
                name="evaluate_model",
            )
        ]
    )
    return Pipeline(
        template,
        namespace=model_name,
        inputs=set(SHARED_INPUTS),
        parameters={"params:evaluation": "params:evaluation", "params:seed": seed},
        tags=["evaluation"],
    )


def create_popularity_pipeline() -> Pipeline:
    """Evaluate the popularity ranking into ``pop.metrics`` and ``pop.per_user_results``."""
    template = Pipeline(
        [
            Node(
                evaluate_popularity,
                inputs=[
                    "train_sequences",
                    "valid_sequences",
                    "test_sequences",
                    "item_index",
                    "params:evaluation",
                    "params:seed",
                ],
                outputs=["metrics", "per_user_results"],
                name="evaluate_popularity",
            )
        ]
    )
    shared = {"train_sequences", "valid_sequences", "test_sequences", "item_index"}
    return Pipeline(
        template,
        namespace="pop",
        inputs=shared,
        parameters={"params:evaluation": "params:evaluation", "params:seed": "params:seed"},
        tags=["evaluation"],
    )


def create_pipeline(**kwargs) -> Pipeline:
    """Evaluate MAF and the popularity floor."""
    return create_model_pipeline("maf") + create_popularity_pipeline()
