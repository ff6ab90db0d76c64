"""SASRec (Kang & McAuley, 2018), RecBole layout: item + learned positions, causal Transformer blocks."""

from __future__ import annotations

import torch
from torch import nn

from .base import SequentialRecommender
from .layers import Block, attention_mask


class SASRec(SequentialRecommender):
    """Self-attentive sequential recommendation with a tied input/output item table and full-softmax CE.

    ``fused_attention`` (default) runs each attention as one ``scaled_dot_product_attention`` call.
    """

    architecture = "sasrec"

    def __init__(
        self,
        num_items: int,
        max_len: int,
        d: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        d_ff: int = 256,
        dropout: float = 0.5,
        attn_dropout: float = 0.5,
        layer_norm_eps: float = 1e-12,
        init_std: float = 0.02,
        fused_attention: bool = True,
    ) -> None:
        super().__init__(num_items, max_len)
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, d)
        self.ln = nn.LayerNorm(d, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d, n_heads, d_ff, dropout, attn_dropout, layer_norm_eps, fused=fused_attention)
            for _ in range(n_layers)
        )
        self.init_weights(init_std)

    def forward(self, item_seq: torch.Tensor, return_attention: bool = False):
        """Hidden states ``(B, L, d)``; with ``return_attention`` also a per-layer list of attention maps."""
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        x = self.dropout(self.ln(self.item_emb(item_seq) + self.pos_emb(positions)))
        mask = attention_mask(item_seq)
        maps = []
        for block in self.blocks:
            x, m = block(x, mask, return_attention=return_attention, causal=True)
            maps.append(m)
        return (x, maps) if return_attention else x

    def item_embeddings(self) -> torch.Tensor:
        """The item embedding table, shared by input and output (as SASRec)."""
        return self.item_emb.weight
