"""Project pipelines: each folder under ``pipelines/`` plus the ``data`` and ``full`` chains."""

from importlib import import_module, resources

from kedro.framework.project import pipelines as project_pipelines
from kedro.pipeline import Pipeline

# Order of the end-to-end chain; a stage appears here once its pipeline exists.
FULL_CHAIN = (
    "ingestion",
    "preprocessing",
    "sequences",
    "features",
    "training",
    "evaluation",
    "reporting",
    "recommend",
)
# The data side (raw files through sequences, images included) is built from modules that never import
# torch: `kedro run --pipelines=data` keeps the process lean (torch alone is ~500 MB of RSS).
DATA_STAGES = ("ingestion", "preprocessing", "sequences")
LIGHT_PIPELINES = frozenset({"data", *DATA_STAGES})


def _stage(name: str) -> Pipeline:
    return import_module(f"maf_pipeline.pipelines.{name}").create_pipeline().tag(name)


def _data_pipeline(stages: dict[str, Pipeline]) -> Pipeline:
    """Ingestion, preprocessing, the image nodes of ``features`` and sequences: everything up to training."""
    from maf_pipeline.pipelines.features.pipeline import create_image_pipeline

    images = create_image_pipeline().tag("features")
    return sum((stages[name] for name in DATA_STAGES), images)


def _discover() -> dict[str, Pipeline]:
    """``create_pipeline()`` of every folder under ``pipelines/``, each node tagged with its pipeline's name.

    Not ``kedro.framework.project.find_pipelines``: in Kedro 1.7 it imports only the pipelines named on the
    command line, so ``kedro run --pipelines=full`` would find nothing to build ``full`` from.
    """
    package = resources.files("maf_pipeline.pipelines")
    names = sorted(  # packages only: a folder without __init__.py (left-overs, work in progress) is skipped
        p.name
        for p in package.iterdir()
        if (p / "__init__.py").is_file() and not p.name.startswith(("_", "."))
    )
    return {name: _stage(name) for name in names}


def register_pipelines() -> dict[str, Pipeline]:
    """Every discovered pipeline, ``data`` and ``full`` (also ``__default__``).

    When the command line names only data-side pipelines (``kedro run --pipelines=data``), only those are
    built, the way Kedro's own ``find_pipelines`` honours that selection, so no model code is imported.
    """
    requested = set(getattr(project_pipelines, "_requested_pipelines", None) or ())
    if requested and requested <= LIGHT_PIPELINES:
        stages = {name: _stage(name) for name in DATA_STAGES}
        return {**stages, "data": _data_pipeline(stages)}
    pipelines = _discover()
    pipelines["data"] = _data_pipeline(pipelines)
    full = sum((pipelines[name] for name in FULL_CHAIN if name in pipelines), Pipeline([]))
    pipelines["full"] = full
    pipelines["__default__"] = full
    return pipelines
