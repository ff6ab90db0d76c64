"""Project pipelines: each folder under ``pipelines/`` plus the ``full`` chain."""

from importlib import import_module, resources

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
    modules = {name: import_module(f"maf_pipeline.pipelines.{name}") for name in names}
    return {name: module.create_pipeline().tag(name) for name, module in modules.items()}


def register_pipelines() -> dict[str, Pipeline]:
    """Register every discovered pipeline and ``full`` (also ``__default__``), the whole chain."""
    pipelines = _discover()
    full = sum((pipelines[name] for name in FULL_CHAIN if name in pipelines), Pipeline([]))
    pipelines["full"] = full
    pipelines["__default__"] = full
    return pipelines
