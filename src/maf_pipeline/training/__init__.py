"""The trainer, a library of its own (the ``training`` pipeline's node, ``compare``, ``tune``, DDP under
``torchrun`` and the benchmarks all call it): :mod:`.batching` (windows, epoch order, host batches),
:mod:`.checkpoints` (RNG states, keys, atomic writes), :mod:`.ddp`, :mod:`.loop` (train an epoch, validate,
save, resume, stop: :func:`fit`) and :mod:`.trainer` (:func:`train_model`)."""

from .batching import OBJECTIVES, epoch_order, host_batch, to_device, training_windows
from .checkpoints import checkpoint_interval, save_checkpoint
from .ddp import init_distributed
from .loop import configure_training_loss, fit, seed_everything
from .trainer import train_model, train_on

__all__ = [
    "OBJECTIVES",
    "checkpoint_interval",
    "configure_training_loss",
    "epoch_order",
    "fit",
    "host_batch",
    "init_distributed",
    "save_checkpoint",
    "seed_everything",
    "to_device",
    "train_model",
    "train_on",
    "training_windows",
]
