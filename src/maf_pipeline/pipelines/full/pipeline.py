"""Wiring of ``full`` (also ``__default__``): every stage in order (:mod:`maf_pipeline.pipelines.chains`)."""

from kedro.pipeline import Pipeline

from ..chains import full_chain


def create_pipeline(**kwargs) -> Pipeline:
    """Ingestion through recommend, each node tagged with its stage."""
    return full_chain()
