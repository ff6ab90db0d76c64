"""Project pipelines: every folder under ``pipelines/``, found by Kedro's ``find_pipelines``.

``data`` and ``full`` are folders too (built from the stages in :mod:`maf_pipeline.pipelines.chains`), so
``find_pipelines``, which imports only the pipelines named on the command line, builds ``kedro run
--pipelines=data`` without importing any model code, and ``--pipelines=full`` from its stages.
"""

from importlib import import_module, resources

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

from maf_pipeline.pipelines.chains import CHAINS, FULL_CHAIN

__all__ = ["FULL_CHAIN", "every_pipeline", "register_pipelines"]


def _tagged(name: str, pipe: Pipeline) -> Pipeline:
    return pipe if name in CHAINS else pipe.tag(name)


def register_pipelines() -> dict[str, Pipeline]:
    """The pipelines Kedro asked for (all of them without a selection), each stage's nodes tagged with its
    name; ``__default__`` is ``full``."""
    found = find_pipelines(raise_errors=True)
    found.pop("__default__", None)  # find_pipelines' own: empty (no maf_pipeline/pipeline.py)
    pipelines = {name: _tagged(name, pipe) for name, pipe in found.items()}
    if "full" in pipelines:
        pipelines["__default__"] = pipelines["full"]
    return pipelines


def every_pipeline() -> dict[str, Pipeline]:
    """Every pipeline folder, whatever the command line selected (``find_pipelines`` builds only the selected
    ones): the run check names the node and pipeline that make a missing input from these. It imports all the
    model code, so it is called only when an input is missing."""
    folders = resources.files("maf_pipeline.pipelines")
    names = sorted(p.name for p in folders.iterdir() if (p / "__init__.py").is_file() and p.name[0] != "_")
    return {n: _tagged(n, import_module(f"maf_pipeline.pipelines.{n}").create_pipeline()) for n in names}
