"""Project pipelines: every folder under ``pipelines/``, found by Kedro's ``find_pipelines``.

``data`` and ``full`` are folders too (built from the stages in :mod:`maf_pipeline.pipelines.chains`), so
``find_pipelines``, which imports only the pipelines named on the command line, builds ``kedro run
--pipelines=data`` without importing any model code, and ``--pipelines=full`` from its stages.
"""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

from maf_pipeline.pipelines.chains import CHAINS, FULL_CHAIN

__all__ = ["FULL_CHAIN", "register_pipelines"]


def register_pipelines() -> dict[str, Pipeline]:
    """The pipelines Kedro asked for (all of them without a selection), each stage's nodes tagged with its
    name; ``__default__`` is ``full``."""
    found = find_pipelines(raise_errors=True)
    found.pop("__default__", None)  # find_pipelines' own: empty (no maf_pipeline/pipeline.py)
    pipelines = {name: pipe if name in CHAINS else pipe.tag(name) for name, pipe in found.items()}
    if "full" in pipelines:
        pipelines["__default__"] = pipelines["full"]
    return pipelines
