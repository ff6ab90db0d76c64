"""Wiring of the ingestion pipeline: raw files in; ``interactions``, ``items``, ``ingestion_report`` out."""

from kedro.pipeline import Node, Pipeline

from .nodes import build_ingestion_report, ingest_metadata, ingest_reviews


def create_pipeline(**kwargs) -> Pipeline:
    """Reviews and metadata are read independently; a last node merges their reports."""
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
                inputs=["raw_metadata", "params:ingestion"],
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
