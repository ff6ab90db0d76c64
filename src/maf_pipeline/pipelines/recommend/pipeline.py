"""Recommendation wiring: one namespaced pipeline per trained model (``maf`` in ``full``)."""

from kedro.pipeline import Node, Pipeline

from .nodes import recommend_top_k

SHARED_INPUTS = (
    "train_sequences",
    "valid_sequences",
    "test_sequences",
    "user_index",
    "item_index",
    "filtered_items",
    "image_features",
    "text_features",
    "category_features",
)


def create_model_pipeline(model_name: str) -> Pipeline:
    """Recommend with ``<model_name>.trained_model`` into ``<model_name>.recommendations`` (+ a report)."""
    template = Pipeline(
        [
            Node(
                recommend_top_k,
                inputs=["trained_model", *SHARED_INPUTS, "params:recommend"],
                outputs=["recommendations", "recommendation_report"],
                name="recommend_top_k",
            )
        ]
    )
    return Pipeline(
        template,
        namespace=model_name,
        inputs=set(SHARED_INPUTS),
        parameters={"params:recommend": "params:recommend"},
        tags=["recommend"],
    )


def create_pipeline(**kwargs) -> Pipeline:
    """Top-k recommendations of MAF."""
    return create_model_pipeline("maf")
