"""Caser (Tang & Wang, WSDM 2018): horizontal and vertical convolutions over the last L item embeddings.

Source: RecBole ``recbole/model/sequential_recommender/caser.py`` and ``Caser.yaml`` (d 64, nh 16, nv 4,
dropout 0.4, reg_weight 1e-4, CE loss, window L = MAX_ITEM_LIST_LENGTH, 5 in the paper). Two deviations, both
because every model here shares one item-sequence interface: (1) the user embedding P_u is left out (no user
ids reach the models), so ``y = z E^T`` instead of ``y = [z; P_u] W'^T``; (2) instead of one window per sample
(RecBole), the window ending at *every* position is convolved, so the causal all-positions objective applies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import SequentialRecommender


class Caser(SequentialRecommender):
    """Convolutional sequence embedding: for position t, the ``L x d`` image of items ``s_{t-L+1..t}``.

    Horizontal filters of heights 1..L (``nh`` each, ReLU, max-pool over time) catch union-level patterns,
    ``nv`` vertical ``L x 1`` filters weight the L rows (point-level); ``z = ReLU(W_1 Dropout([o_v; o_h]))``
    (Caser eqs 2-5) is scored against the tied item table. Windows start with zero rows before the first item.
    """

    architecture = "caser"

    def __init__(
        self,
        num_items: int,
        max_len: int,
        d: int = 64,
        L: int = 5,
        nh: int = 16,
        nv: int = 4,
        dropout: float = 0.4,
        reg_weight: float = 1.0e-4,
    ) -> None:
        super().__init__(num_items, max_len)
        if L < 1 or nh < 0 or nv < 0 or nh + nv == 0:
            raise ValueError(f"Caser needs L >= 1 and some filters, got L={L}, nh={nh}, nv={nv}")
        self.d, self.L, self.nh, self.nv, self.reg_weight = d, L, nh, nv, float(reg_weight)
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)
        self.conv_v = nn.Conv2d(1, nv, (L, 1)) if nv else None  # vertical, eq 4
        self.conv_h = nn.ModuleList(nn.Conv2d(1, nh, (h, d)) for h in range(1, L + 1)) if nh else None  # eq 2
        self.fc1 = nn.Linear(nv * d + nh * L, d)  # eq 5
        self.dropout = nn.Dropout(dropout)
        # RecBole's init: embeddings N(0, 1/d), linear Xavier-normal with zero bias, convolutions default.
        nn.init.normal_(self.item_emb.weight, 0.0, 1.0 / d)
        nn.init.xavier_normal_(self.fc1.weight)
        nn.init.zeros_(self.fc1.bias)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def windows(self, item_seq: torch.Tensor) -> torch.Tensor:
        """``(B, T, L)`` item ids of the window ending at each position (zeros before the first item)."""
        return F.pad(item_seq, (self.L - 1, 0)).unfold(1, self.L, 1)

    def forward(self, item_seq: torch.Tensor, return_attention: bool = False):
        """Hidden state z ``(B, T, d)`` per position; ``return_attention`` gives an empty map list."""
        B, T = item_seq.shape
        emb = self.item_emb(self.windows(item_seq)).reshape(B * T, 1, self.L, self.d)
        parts = []
        if self.conv_v is not None:
            parts.append(self.conv_v(emb).reshape(B * T, self.nv * self.d))  # o_v (eq 4)
        if self.conv_h is not None:
            for conv in self.conv_h:  # o_h (eqs 2-3): ReLU, then max over the L - h + 1 steps
                parts.append(F.relu(conv(emb).squeeze(3)).amax(dim=2))
        z = F.relu(self.fc1(self.dropout(torch.cat(parts, dim=1))))  # eq 5
        hidden = z.view(B, T, self.d)
        return (hidden, []) if return_attention else hidden

    def item_embeddings(self) -> torch.Tensor:
        """The item table, shared by the input and the output layer (RecBole)."""
        return self.item_emb.weight

    def extra_losses(self, hidden: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """RecBole's regulariser: ``reg_weight * sum of L2 norms`` of embedding, vertical and fc weights."""
        if not self.reg_weight:
            return {}
        weights = [self.item_emb.weight, self.fc1.weight]
        if self.conv_v is not None:
            weights.append(self.conv_v.weight)
        return {"reg": self.reg_weight * sum(w.norm(2) for w in weights)}
