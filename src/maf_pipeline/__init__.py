"""maf-pipeline: Kedro pipelines for MAF multimodal sequential recommendation."""

__version__ = "0.1.0"
