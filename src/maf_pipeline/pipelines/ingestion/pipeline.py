"""Wiring of the ingestion pipeline: raw files in; ``interactions``, ``items``, ``ingestion_report`` out."""

from kedro.pipeline import Node, Pipeline

from .nodes import build_ingestion_report, ingest_metadata, ingest_reviews


def create_pipeline(**kwargs) -> Pipeline:
    """Reviews first, then the metadata of the reviewed items only (a semi-join while streaming, so memory
    follows the reviewed items, not the dump); a last node merges their reports."""
    return Pipeline(
        [
            Node(
                ingest_reviews,
                inputs=["raw_reviews", "params:ingestion", "params:date_window"],
                outputs=["interactions", "reviews_ingestion_report"],
                name="ingest_reviews",
            ),
            Node(
                ingest_metadata,
                inputs=["raw_metadata", "params:ingestion", "interactions"],
                outputs=["items", "metadata_ingestion_report"],
                name="ingest_metadata",
            ),
            Node(
                build_ingestion_report,
                inputs=["reviews_ingestion_report", "metadata_ingestion_report", "interactions", "items"],
                outputs="ingestion_report",
                name="build_ingestion_report",
            ),
        ]
    )


def create_interaction_only_pipeline(**kwargs) -> Pipeline:
    """Interaction-only inputs (RecBole atomic files, SASRec ``user item`` text) to the same three outputs.

    Registered as the ``ingestion_interactions`` pipeline; run it instead of ``ingestion``, then the rest of
    the chain (e.g. ``kedro run --pipeline=full --from-nodes=filter_date_window``).
    """
    # imported here: interaction_formats needs maf_pipeline.datasets at run time, which imports torch
    # (~600 MB of RSS) that the streaming readers above must not pay for when used on their own
    from .interaction_formats import ingest_interaction_files

    return Pipeline(
        [
            Node(
                ingest_interaction_files,
                inputs=["raw_interactions", "params:ingestion.interaction_only", "params:date_window"],
                outputs=["interactions", "items", "ingestion_report"],
                name="ingest_interaction_files",
            )
        ]
    )
