"""The two chains made of other pipelines: ``data`` (raw files to sequences) and ``full`` (end to end).

A module, not a pipeline folder: ``pipelines/data`` and ``pipelines/full`` build their pipeline from it, so
Kedro's ``find_pipelines`` treats them like any other folder and, for ``kedro run --pipelines=data``, imports
only the data side (no model code, no torch: ~500 MB less RSS).
"""

from importlib import import_module

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
# The data side (raw files through sequences, images included) is built from modules that never import torch.
DATA_STAGES = ("ingestion", "preprocessing", "sequences")
CHAINS = ("data", "full")


def stage(name: str) -> Pipeline:
    """Pipeline ``name`` (a folder under ``pipelines/``), each node tagged with the stage's name."""
    return import_module(f"maf_pipeline.pipelines.{name}").create_pipeline().tag(name)


def data_chain() -> Pipeline:
    """Ingestion, preprocessing, the image nodes of ``features`` and sequences: everything up to training."""
    from maf_pipeline.pipelines.features.pipeline import create_image_pipeline

    return sum((stage(name) for name in DATA_STAGES), create_image_pipeline().tag("features"))


def full_chain() -> Pipeline:
    """Every stage of ``FULL_CHAIN`` in order: raw files to the trained model, reports, recommendations."""
    return sum((stage(name) for name in FULL_CHAIN), Pipeline([]))
