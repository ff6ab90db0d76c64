"""Project pipelines: each folder under ``pipelines/`` plus the ``full`` chain."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# Order of the end-to-end chain; a stage appears here once its pipeline exists.
FULL_CHAIN = ("ingestion", "preprocessing", "sequences", "features", "training", "evaluation")


def register_pipelines() -> dict[str, Pipeline]:
    """Register every discovered pipeline and ``full`` (also ``__default__``), the whole chain."""
    pipelines = find_pipelines(raise_errors=True)
    full = sum((pipelines[name] for name in FULL_CHAIN if name in pipelines), Pipeline([]))
    pipelines["full"] = full
    pipelines["__default__"] = full
    return pipelines
