"""One training on several GPUs: ``torchrun`` starts one ``kedro run`` per rank; rank 0 alone writes.

Every rank runs the same nodes with the same parameters; the training node joins the process group
(``training.distributed: auto``) and trains one DistributedDataParallel model (see
:func:`maf_pipeline.training.fit`). :class:`RankZeroWritesHook` turns every dataset the run
produces into an in-memory one on ranks > 0 (they still compute, so collective calls line up, but write no
file), and :func:`rank_mlflow_dir` sends their MLflow runs to a throw-away folder. Usage::

    torchrun --standalone --nproc_per_node=4 -m maf_pipeline --pipeline=training
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset

logger = logging.getLogger(__name__)


def launch_rank() -> int:
    """This process's rank under ``torchrun`` (``RANK``), 0 otherwise."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def rank_mlflow_dir() -> None:
    """On ranks > 0, point ``MAF_MLFLOW_DIR`` at a temporary folder (only rank 0 tracks to the project)."""
    if launch_rank() > 0:
        os.environ["MAF_MLFLOW_DIR"] = tempfile.mkdtemp(prefix=f"maf-rank{launch_rank()}-mlflow-")


class RankZeroWritesHook:
    """On ranks > 0 of a ``torchrun`` launch, the run's outputs become MemoryDatasets (nothing on disk)."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        """Replace every output of ``pipeline`` in ``catalog`` on ranks > 0."""
        rank = launch_rank()
        if rank == 0:
            return
        outputs = sorted(pipeline.all_outputs())
        for name in outputs:
            catalog[name] = MemoryDataset()
        logger.info("rank %d: %d outputs kept in memory (rank 0 writes)", rank, len(outputs))
