"""The interface every sequential recommender implements, with the default next-item training loss.

Conventions: item ids are 1..N with 0 = padding; sequences are right-padded ``(B, L)`` int64 tensors (items
first, then zeros), so position ``t`` is the ``t``-th item of the window and the last item sits at
``length - 1``. A training batch is ``{"item_seq": (B, L), "target_seq": (B, L)}`` where ``target_seq[b, t]``
is the item to predict after position ``t`` (0 = no loss there).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn


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

    def forward(self, item_seq: torch.Tensor, return_attention: bool = False) -> Any:
        """Hidden states ``(B, L, d)`` for a right-padded batch (and attention maps when asked)."""
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:
        """The output item table ``(N + 1, d)`` that hidden states are scored against (row 0 = padding)."""
        raise NotImplementedError

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``hidden @ M_id^T`` over all items ``(..., N + 1)``, the padding column at -inf (eq 7)."""
        logits = hidden @ self.item_embeddings().T
        logits[..., 0] = float("-inf")
        return logits

    def extra_losses(self, hidden: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Auxiliary losses from the hidden states at the target positions ``(M, d)`` and targets ``(M,)``."""
        return {}

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss parts for one batch; ``"loss"`` is the total to minimise.

        Full-softmax cross-entropy (eq 7) at non-padding targets only: the hidden states at those positions
        are gathered first, so the ``(M, N + 1)`` logits cost is paid for real targets, not for padding.
        """
        item_seq, target_seq = batch["item_seq"], batch["target_seq"]
        hidden = self(item_seq)
        where = target_seq > 0
        h, targets = hidden[where], target_seq[where]
        loss_id = F.cross_entropy(self.score(h).float(), targets)
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
