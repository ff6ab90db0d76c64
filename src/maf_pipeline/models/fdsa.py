"""FDSA: Feature-level Deeper Self-Attention (Zhang et al., IJCAI 2019), laid out as RecBole's FDSA.

Source: the paper (section 3: item-based and feature-based self-attention blocks, vanilla attention over the
feature fields, concatenation and a fully connected layer) and RecBole ``recbole/model/sequential_recommender/
fdsa.py`` (shared position table and LayerNorm, same encoder configuration for both branches, CE over all
items against the item-id table).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import SequentialRecommender
from .layers import Block, attention_mask
from .maf import MODALITIES
from .sasrecf import FeatureFields


class FDSA(SequentialRecommender):
    """Two causal Transformer stacks, one over item ids, one over fused item features; then concat + linear.

    Feature fusion per item (paper eq 1, RecBole's ``VanillaAttention``):
    ``a_j = softmax_j(w^T ReLU(W f_j + b) + c)`` over the fields j, ``f = sum_j a_j f_j``. Both branches add
    the same positions and LayerNorm; the output ``O_t = Dropout(LN(W_o [O^item_t ; O^feature_t] + b_o))``
    (paper eq 9) is scored against E_id.
    """

    reads_items = True

    architecture = "fdsa"
    feature_names = MODALITIES

    def __init__(
        self,
        num_items: int,
        max_len: int,
        features: dict[str, torch.Tensor] | None = None,
        modalities: list[str] | tuple[str, ...] = MODALITIES,
        d: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        d_ff: int = 256,
        dropout: float = 0.5,
        attn_dropout: float = 0.5,
        layer_norm_eps: float = 1e-12,
        init_std: float = 0.02,
    ) -> None:
        super().__init__(num_items, max_len)
        if not modalities:
            raise ValueError("FDSA needs at least one feature modality (image, text or category)")
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, d)
        self.fields = FeatureFields(features, modalities, num_items, d)
        self.modalities = self.fields.modalities
        self.field_attn = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 1))  # vanilla attention
        self.ln = nn.LayerNorm(d, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

        def stack() -> nn.ModuleList:
            return nn.ModuleList(
                Block(d, n_heads, d_ff, dropout, attn_dropout, layer_norm_eps) for _ in range(n_layers)
            )

        self.item_blocks, self.feature_blocks = stack(), stack()
        self.concat = nn.Linear(2 * d, d)
        self.init_weights(init_std)

    def field_weights(self, fields: torch.Tensor) -> torch.Tensor:
        """Attention weights ``(B, L, F)`` over the feature fields ``(B, L, F, d)`` of each item."""
        return torch.softmax(self.field_attn(fields).squeeze(-1), dim=-1)

    def forward(
        self,
        item_seq: torch.Tensor,
        return_attention: bool = False,
        items: torch.Tensor | None = None,
        inverse: torch.Tensor | None = None,
    ):
        """Hidden states ``(B, L, d)``; with ``return_attention`` per-layer ``{"item", "feature"}`` maps."""
        pos = self.pos_emb(torch.arange(item_seq.size(1), device=item_seq.device))
        x = self.dropout(self.ln(self.item_emb(item_seq) + pos))
        fields = self.fields(item_seq, items, inverse)
        f = (self.field_weights(fields).unsqueeze(-1) * fields).sum(dim=-2)
        f = self.dropout(self.ln(f + pos))
        mask = attention_mask(item_seq)
        maps = []
        for item_block, feature_block in zip(self.item_blocks, self.feature_blocks, strict=True):
            x, mi = item_block(x, mask, return_attention=return_attention, causal=True)
            f, mf = feature_block(f, mask, return_attention=return_attention, causal=True)
            maps.append({"item": mi["id"], "feature": mf["id"]} if return_attention else None)
        out = self.dropout(self.ln(self.concat(torch.cat([x, f], dim=-1))))
        return (out, maps) if return_attention else out

    def item_embeddings(self) -> torch.Tensor:
        """The item-id table E_id (tied with the input)."""
        return self.item_emb.weight
