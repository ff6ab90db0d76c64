"""The interface every sequential recommender implements, with the default next-item training loss.

Conventions: item ids are 1..N with 0 = padding; sequences are right-padded ``(B, L)`` int64 tensors (items
first, then zeros), so position ``t`` is the ``t``-th item of the window and the last item sits at
``length - 1``. A training batch is ``{"item_seq": (B, L), "target_seq": (B, L)}`` where ``target_seq[b, t]``
is the item to predict after position ``t`` (0 = no loss there).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .losses import (
    LOSSES,
    chunked_cross_entropy,
    draw_negatives,
    exclude_items,
    sampled_softmax_loss,
    sampling_log_probs,
)


class SequentialRecommender(nn.Module):
    """Base class: ``forward`` gives a hidden state per position; scoring, losses and evaluation follow.

    Subclasses implement ``forward`` and ``item_embeddings``. They can add losses through ``extra_losses``
    (weighted by ``aux_loss_weight``) or replace the whole step (e.g. BERT4Rec's masked-item objective)
    by overriding ``training_step``.
    """

    architecture: ClassVar[str] = ""
    #: Feature tables (``image``, ``text``, ``category``) the model reads; ``build_model`` passes only these.
    feature_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, num_items: int, max_len: int) -> None:
        super().__init__()
        self.num_items, self.max_len = int(num_items), int(max_len)
        self.aux_loss_weight = 1.0
        self.loss_kind, self.loss_chunk_size, self.num_negatives = "full", None, 0
        self.negative_log_probs: torch.Tensor | None = None  # log q of the sampler (sampled softmax)
        self.uniform_negatives = True
        self.loss_mask_history = False  # leave each target's earlier window items out of its softmax

    def configure_loss(
        self,
        loss: str = "full",
        chunk_size: int | None = None,
        num_negatives: int = 256,
        negative_sampling: str = "uniform",
        target_counts: torch.Tensor | None = None,
        mask_history: bool = False,
    ) -> None:
        """Choose the next-item loss of ``training_step`` (the model's output and evaluation are unchanged).

        ``full``: softmax over all items (eq 7), in chunks of ``chunk_size`` items when set (same loss and
        gradients, memory O(positions x chunk)). ``sampled_softmax``: ``num_negatives`` items per batch
        drawn ``uniform`` or by ``popularity`` (``target_counts``: training target counts ``(N + 1,)``),
        logQ-corrected. ``mask_history``: each target's softmax leaves out the items before it in the window
        (the target itself stays), as ``evaluation.mask_history`` ranks (full loss, next-item step only).
        """
        if loss not in LOSSES:
            raise ValueError(f"training.loss must be one of {LOSSES}, got {loss!r}")
        own_step = type(self).training_step is not SequentialRecommender.training_step
        if mask_history and (loss != "full" or own_step):
            raise ValueError(
                "training.loss_mask_history needs training.loss: full and the next-item training step "
                f"({type(self).__name__} {'has its own step' if loss == 'full' else 'uses ' + loss})"
            )
        self.loss_mask_history = bool(mask_history)
        self.loss_kind = loss
        self.loss_chunk_size = int(chunk_size) if chunk_size else None
        if loss == "sampled_softmax":
            if int(num_negatives) < 1:
                raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
            counts = target_counts if target_counts is not None else torch.zeros(self.num_items + 1)
            if counts.numel() != self.num_items + 1:
                raise ValueError(f"target_counts must have num_items + 1 = {self.num_items + 1} entries")
            self.num_negatives = int(num_negatives)
            self.uniform_negatives = negative_sampling == "uniform"
            device = self.item_embeddings().device
            self.negative_log_probs = sampling_log_probs(counts.to(device), negative_sampling)

    def output_bias(self) -> torch.Tensor | None:
        """A per-item output bias ``(N + 1,)`` added to the logits, if the model has one."""
        return None

    def next_item_loss(
        self, hidden: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean next-item loss of hidden states ``(M, d)`` against targets ``(M,)`` (``configure_loss``);
        ``exclude (M, K)``: items (0-padded) left out of each row's softmax."""
        weight, bias = self.item_embeddings(), self.output_bias()
        if self.loss_kind == "sampled_softmax" and self.training:
            log_q = self.negative_log_probs
            if log_q.device != weight.device:  # the model moved after configure_loss
                log_q = self.negative_log_probs = log_q.to(weight.device)
            negatives = draw_negatives(log_q, self.num_negatives, self.uniform_negatives)
            return sampled_softmax_loss(hidden, weight, targets, negatives, log_q, bias)
        if self.loss_chunk_size:
            return chunked_cross_entropy(hidden, weight, targets, bias, self.loss_chunk_size, exclude)
        logits = self.score(hidden).float()
        if exclude is not None:
            exclude_items(logits, exclude)
        return F.cross_entropy(logits, targets)

    #: feature models embed each distinct item of the batch once: their ``forward`` takes the batch's
    #: host-computed ``items`` and ``inverse`` (see :func:`unique_items`)
    reads_items: bool = False

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Hidden states ``(B, L, d)`` of a training batch, with its distinct items for feature models."""
        if self.reads_items:
            return self(batch["item_seq"], items=batch.get("items"), inverse=batch.get("item_inverse"))
        return self(batch["item_seq"])

    def forward(self, item_seq: torch.Tensor, return_attention: bool = False) -> Any:
        """Hidden states ``(B, L, d)`` for a right-padded batch (and attention maps when asked)."""
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:
        """The output item table ``(N + 1, d)`` that hidden states are scored against (row 0 = padding)."""
        raise NotImplementedError

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``hidden @ M_id^T`` over all items ``(..., N + 1)``, the padding column at -inf (eq 7)."""
        logits = hidden @ self.item_embeddings().T
        bias = self.output_bias()
        if bias is not None:
            logits = logits + bias
        logits[..., 0] = float("-inf")
        return logits

    def extra_losses(self, hidden: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Auxiliary losses from the hidden states at the target positions ``(M, d)`` and targets ``(M,)``."""
        return {}

    def prepare_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Host-side (numpy) additions to a training batch before it is copied to the device: a model whose
        step needs data-dependent shapes (BERT4Rec's mask) computes them here: no sync in the device step."""
        return batch

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss parts for one batch; ``"loss"`` is the total to minimise.

        Next-item loss (eq 7, see ``configure_loss``) at non-padding targets only: the hidden states at those
        positions are gathered first (by index, no host sync), so the logits cost is paid for real targets.
        With ``loss_mask_history`` the batch carries ``history`` ``(M, L)``: each target's earlier items.
        """
        hidden = self.encode(batch)
        index, targets = target_positions(batch)
        h = hidden.reshape(-1, hidden.size(-1)).index_select(0, index)
        exclude = None
        if self.loss_mask_history:
            if "history" not in batch:
                raise ValueError(
                    "loss_mask_history: the batch has no 'history' (host_batch(..., history=True))"
                )
            exclude = batch["history"]
        loss_id = self.next_item_loss(h, targets, exclude)
        parts = {"id": loss_id, **self.extra_losses(h, targets)}
        total = loss_id
        for name, value in parts.items():
            if name != "id":
                total = total + self.aux_loss_weight * value
        parts["loss"] = total
        return parts

    def last_hidden(self, item_seq: torch.Tensor) -> torch.Tensor:
        """The hidden state at each sequence's last item, ``(B, d)`` (R^L_n of eq 7)."""
        hidden = self(item_seq)
        last = (item_seq > 0).sum(dim=1).clamp(min=1) - 1
        return hidden[torch.arange(item_seq.size(0), device=item_seq.device), last]

    def full_sort_scores(self, item_seq: torch.Tensor) -> torch.Tensor:
        """Scores of every item as the next one, ``(B, N + 1)``; column 0 (padding) is -inf."""
        return self.score(self.last_hidden(item_seq))

    def init_weights(self, std: float) -> None:
        """RecBole's init: Linear/Embedding ~ N(0, std), biases 0, LayerNorm (1, 0); padding row zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if hasattr(module, "reset_fusion"):
                module.reset_fusion()
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()


def target_positions(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat positions ``(M,)`` of the batch's targets in ``(B * L)`` and the targets ``(M,)``.

    Taken from the batch when the trainer computed them on the host; else found on the device (a sync).
    """
    if "target_index" in batch:
        return batch["target_index"], batch["targets"]
    flat = batch["target_seq"].reshape(-1)
    index = torch.nonzero(flat > 0).squeeze(1)
    return index, flat[index]


def unique_items(
    item_seq: torch.Tensor, items: torch.Tensor | None = None, inverse: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct items of a batch and each position's index into them (``torch.unique`` unless given)."""
    if items is not None and inverse is not None:
        return items, inverse
    return torch.unique(item_seq, return_inverse=True)
