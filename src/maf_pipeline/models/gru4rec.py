"""GRU4Rec (Hidasi et al., ICLR 2016; Tan et al., DLRS 2016), in RecBole's sequential form.

Source: RecBole ``recbole/model/sequential_recommender/gru4rec.py`` and its ``GRU4Rec.yaml`` defaults
(embedding 64, hidden 128, 1 layer, dropout 0.3 on the item embeddings, CE loss). As in RecBole, the session-
parallel mini-batches and TOP1/BPR losses of the original paper are replaced by the shared sequential setup:
full-softmax cross-entropy against the item table at every position of a training window.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import SequentialRecommender


class GRU4Rec(SequentialRecommender):
    """Item embeddings -> dropout -> GRU -> linear map back to the embedding size, scored against E.

    ``h_t = GRU(e_{s_1}, ..., e_{s_t})`` and ``logits_t = (W h_t + b) E^T``; a recurrent net only reads the
    past, so right padding never leaks into earlier positions.
    """

    architecture = "gru4rec"

    def __init__(
        self,
        num_items: int,
        max_len: int,
        embedding_size: int = 64,
        hidden_size: int = 128,
        num_layers: int = 1,
        dropout: float = 0.3,
    ) -> None:
        super().__init__(num_items, max_len)
        self.item_emb = nn.Embedding(num_items + 1, embedding_size, padding_idx=0)
        self.emb_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(embedding_size, hidden_size, num_layers, bias=False, batch_first=True)
        self.dense = nn.Linear(hidden_size, embedding_size)
        # RecBole's init: Xavier-normal embeddings, Xavier-uniform recurrent weights, default for dense.
        nn.init.xavier_normal_(self.item_emb.weight)
        for name, weight in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, item_seq: torch.Tensor, return_attention: bool = False):
        """Hidden states ``(B, L, embedding_size)``; ``return_attention`` adds an empty map list."""
        out, _ = self.gru(self.emb_dropout(self.item_emb(item_seq)))
        hidden = self.dense(out)
        return (hidden, []) if return_attention else hidden

    def item_embeddings(self) -> torch.Tensor:
        """The input item table, shared with the output layer (RecBole)."""
        return self.item_emb.weight
