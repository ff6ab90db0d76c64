"""Wiring of the preprocessing stages; every output, counts included, is a catalog dataset on disk."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    build_dataset_statistics,
    deduplicate_interactions,
    filter_categories,
    filter_date_window,
    filter_multimodal_completeness,
    filter_verified_images,
    kcore_filter,
    select_items,
)


def _filter_nodes() -> list[Node]:
    """The paper's filters in order: date window, categories, duplicates, multimodal completeness."""
    return [
        Node(
            filter_date_window,
            inputs=["interactions", "params:date_window"],
            outputs=["windowed_interactions", "stage_counts_window"],
            name="filter_date_window",
        ),
        Node(
            filter_categories,
            inputs=["windowed_interactions", "items", "params:preprocessing.category_labels"],
            outputs=["category_filtered_interactions", "stage_counts_categories"],
            name="filter_categories",
        ),
        Node(
            deduplicate_interactions,
            inputs=["category_filtered_interactions", "params:preprocessing.dedup_keep"],
            outputs=["deduplicated_interactions", "stage_counts_dedup"],
            name="deduplicate_interactions",
        ),
        Node(
            filter_multimodal_completeness,
            inputs=[
                "deduplicated_interactions",
                "items",
                "image_candidates",
                "params:preprocessing.required_modalities",
                "text_embeddings",
                "params:features.text_encoder.source",
            ],
            outputs=["complete_interactions", "stage_counts_completeness"],
            name="filter_multimodal_completeness",
        ),
    ]


def _kcore_nodes() -> list[Node]:
    """The k-core on image candidates, then again once the verified images are known."""
    return [
        Node(
            kcore_filter,
            inputs=[
                "complete_interactions",
                "params:preprocessing.k",
                "params:preprocessing.user_k",
                "params:preprocessing.item_k",
            ],
            outputs=["candidate_kcore_interactions", "stage_counts_kcore"],
            name="kcore_filter",
        ),
        Node(
            filter_verified_images,
            inputs=[
                "candidate_kcore_interactions",
                "image_availability",
                "params:preprocessing.required_modalities",
                "params:preprocessing.k",
                "params:preprocessing.user_k",
                "params:preprocessing.item_k",
            ],
            outputs=["kcore_interactions", "stage_counts_images"],
            name="filter_verified_images",
        ),
    ]


def _report_nodes() -> list[Node]:
    """The items that survive, and the Table-1 statistics with the per-stage funnel."""
    return [
        Node(
            select_items,
            inputs=["kcore_interactions", "items"],
            outputs="filtered_items",
            name="select_items",
        ),
        Node(
            build_dataset_statistics,
            inputs=[
                "stage_counts_window",
                "stage_counts_categories",
                "stage_counts_dedup",
                "stage_counts_completeness",
                "stage_counts_kcore",
                "stage_counts_images",
                "kcore_interactions",
                "params:preprocessing.dataset_name",
                "ingestion_report",
            ],
            outputs=["dataset_statistics", "dataset_statistics_table"],
            name="build_dataset_statistics",
        ),
    ]


def create_pipeline(**kwargs) -> Pipeline:
    """The filter chain ``interactions`` -> ``kcore_interactions``, ``filtered_items`` and the statistics.

    Completeness and the k-core read the cheap ``image_candidates``; the features pipeline's
    ``acquire_images`` then fetches images for ``candidate_kcore_interactions`` only, and
    ``filter_verified_images`` drops the failures and re-applies the k-core (the same fixed point as
    filtering on verified images up front, at a fraction of the downloads).
    """
    return Pipeline([*_filter_nodes(), *_kcore_nodes(), *_report_nodes()])
