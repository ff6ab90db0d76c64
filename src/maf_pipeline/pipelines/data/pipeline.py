"""Wiring of ``data``: the data side of ``full`` (see :mod:`maf_pipeline.pipelines.chains`)."""

from kedro.pipeline import Pipeline

from ..chains import data_chain


def create_pipeline(**kwargs) -> Pipeline:
    """Ingestion, preprocessing, image acquisition and sequences, each node tagged with its stage."""
    return data_chain()
