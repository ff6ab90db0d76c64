"""SASRecF: SASRec whose input embedding fuses the item id with its side features (RecBole's SASRecF).

Source: RecBole ``recbole/model/sequential_recommender/sasrecf.py`` (feature fields embedded to ``d`` each,
concatenated with the item embedding and mapped back to ``d`` by one linear layer, then positions, LayerNorm,
dropout and causal Transformer blocks; prediction against the item-id table only). Here the feature fields are
the image, text and category tables: dense vectors are projected linearly, and the multi-hot categories are
mean-pooled label embeddings (RecBole's ``pooling_mode: mean`` for token_seq fields).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import SequentialRecommender, unique_items
from .layers import Block, attention_mask
from .maf import MAF, MODALITIES


class FeatureFields(nn.Module):
    """Fixed per-item feature tables (non-persistent buffers) and one linear embedding per field, to ``d``.

    ``forward(item_seq)`` gives ``(B, L, F, d)``; only the distinct items of the batch are projected.
    """

    def __init__(self, features: dict[str, torch.Tensor] | None, modalities, num_items: int, d: int) -> None:
        super().__init__()
        self.modalities = tuple(modalities or ())
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; choose from {MODALITIES}")
        self.proj = nn.ModuleDict()
        for name in self.modalities:
            table = MAF._check_table(name, (features or {}).get(name), num_items)
            if name == "category":  # mean of the item's label embeddings
                table = table / table.sum(dim=1, keepdim=True).clamp(min=1.0)
            self.register_buffer(f"feat_{name}", table, persistent=False)
            self.proj[name] = nn.Linear(table.size(1), d, bias=False)

    def forward(
        self, item_seq: torch.Tensor, items: torch.Tensor | None = None, inverse: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Field embeddings ``(B, L, F, d)`` of the items in ``item_seq`` (padding rows stay zero)."""
        uniq, inverse = unique_items(item_seq, items, inverse)
        fields = [self.proj[name](getattr(self, f"feat_{name}")[uniq]) for name in self.modalities]
        return torch.stack(fields, dim=-2)[inverse]


class SASRecF(SequentialRecommender):
    """``x_t = W_c [E_id(s_t); f_1(s_t); ...; f_F(s_t)] + P_t``, then LN, dropout and SASRec's blocks."""

    reads_items = True

    architecture = "sasrecf"
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
            raise ValueError("SASRecF needs at least one feature modality (image, text or category)")
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, d)
        self.fields = FeatureFields(features, modalities, num_items, d)
        self.modalities = self.fields.modalities
        self.concat = nn.Linear(d * (1 + len(self.modalities)), d)
        self.ln = nn.LayerNorm(d, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d, n_heads, d_ff, dropout, attn_dropout, layer_norm_eps) for _ in range(n_layers)
        )
        self.init_weights(init_std)

    def forward(
        self,
        item_seq: torch.Tensor,
        return_attention: bool = False,
        items: torch.Tensor | None = None,
        inverse: torch.Tensor | None = None,
    ):
        """Hidden states ``(B, L, d)``; with ``return_attention`` also the per-layer attention maps."""
        B, L = item_seq.shape
        fields = self.fields(item_seq, items, inverse).reshape(B, L, -1)
        x = self.concat(torch.cat([self.item_emb(item_seq), fields], dim=-1))
        positions = torch.arange(L, device=item_seq.device)
        x = self.dropout(self.ln(x + self.pos_emb(positions)))
        mask = attention_mask(item_seq)
        maps = []
        for block in self.blocks:
            x, m = block(x, mask, return_attention=return_attention, causal=True)
            maps.append(m)
        return (x, maps) if return_attention else x

    def item_embeddings(self) -> torch.Tensor:
        """The item-id table (features enter the input only, as RecBole's SASRecF)."""
        return self.item_emb.weight
