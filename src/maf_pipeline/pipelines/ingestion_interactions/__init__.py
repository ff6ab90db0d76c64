"""``ingestion_interactions``: interaction-only inputs (RecBole atomic files, ``user item`` text) to the
``interactions`` and ``items`` tables; the code lives in ``pipelines/ingestion/interaction_formats.py``."""

from maf_pipeline.pipelines.ingestion.pipeline import create_interaction_only_pipeline as create_pipeline

__all__ = ["create_pipeline"]
