"""Reporting wiring: data plots once, model plots per namespaced model (``maf`` in ``full``)."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    compute_attention_maps,
    plot_attention_maps,
    plot_dataset_statistics,
    plot_sequence_lengths,
    plot_training_curves,
)

ATTENTION_INPUTS = (
    "test_sequences",
    "user_index",
    "item_index",
    "filtered_items",
    "image_features",
    "text_features",
    "category_features",
)


def create_data_pipeline() -> Pipeline:
    """Data statistics table + funnel, and the sequence-length histogram."""
    return Pipeline(
        [
            Node(
                plot_dataset_statistics,
                inputs="dataset_statistics",
                outputs="dataset_statistics_plot",
                name="plot_dataset_statistics",
            ),
            Node(
                plot_sequence_lengths,
                inputs=["kcore_interactions", "params:sequences.max_len", "params:reporting.histogram_bins"],
                outputs="sequence_length_histogram",
                name="plot_sequence_lengths",
            ),
        ],
        tags=["reporting"],
    )


def create_model_pipeline(model_name: str) -> Pipeline:
    """Training curves and attention maps of ``<model_name>`` (its namespace)."""
    template = Pipeline(
        [
            Node(
                plot_training_curves,
                inputs="training_history",
                outputs="training_curves",
                name="plot_training_curves",
            ),
            Node(
                compute_attention_maps,
                inputs=["trained_model", *ATTENTION_INPUTS, "params:reporting.attention", "params:seed"],
                outputs="attention_maps",
                name="compute_attention_maps",
            ),
            Node(
                plot_attention_maps,
                inputs="attention_maps",
                outputs="attention_maps_plot",
                name="plot_attention_maps",
            ),
        ]
    )
    return Pipeline(
        template,
        namespace=model_name,
        inputs=set(ATTENTION_INPUTS),
        parameters={"params:reporting.attention": "params:reporting.attention", "params:seed": "params:seed"},
        tags=["reporting"],
    )


def create_pipeline(**kwargs) -> Pipeline:
    """Data plots and MAF's training curves and attention maps."""
    return create_data_pipeline() + create_model_pipeline("maf")
