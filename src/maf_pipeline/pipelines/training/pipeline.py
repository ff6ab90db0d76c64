"""Training wiring: one namespaced pipeline per model; ``create_pipeline`` trains MAF (the ``full`` chain)."""

from kedro.pipeline import Node, Pipeline

from .nodes import train_model

# Datasets every model reads from the shared (un-namespaced) catalog.
SHARED_INPUTS = (
    "train_sequences",
    "valid_sequences",
    "item_index",
    "image_features",
    "text_features",
    "category_features",
)


def create_model_pipeline(
    model_name: str, training_params: str = "params:training", seed: str = "params:seed"
) -> Pipeline:
    """Train model ``model_name`` (namespace) from ``params:<model_name>.model``.

    Writes ``<model_name>.trained_model`` and ``<model_name>.training_history``; ``training_params`` and
    ``seed`` name the parameters to use, so a comparison can vary them per model or per seed.
    """
    template = Pipeline(
        [
            Node(
                train_model,
                inputs=[
                    *SHARED_INPUTS,
                    "params:model",
                    "params:training",
                    "params:sequences.max_len",
                    "params:seed",
                ],
                outputs=["trained_model", "training_history"],
                name="train_model",
            )
        ]
    )
    return Pipeline(
        template,
        namespace=model_name,
        inputs=set(SHARED_INPUTS),
        parameters={
            "params:training": training_params,
            "params:sequences.max_len": "params:sequences.max_len",
            "params:seed": seed,
        },
        tags=["training"],
    )


def create_pipeline(**kwargs) -> Pipeline:
    """Train MAF."""
    return create_model_pipeline("maf")
