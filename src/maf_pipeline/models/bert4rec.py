"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional Transformer trained by masked item prediction (Cloze).

Sources: the paper (sections 3.3-3.6) and RecBole ``recbole/model/sequential_recommender/bert4rec.py`` with
``BERT4Rec.yaml`` (mask_ratio 0.2, dropout 0.2, CE over all items). The mask token is an extra item-table row
``N + 1``; at inference it is appended after the last item and its output scores the next item. The position
table has ``max_len + 1`` rows so a full ``max_len`` history plus the mask fits (RecBole instead drops the
oldest item).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import SequentialRecommender
from .layers import Block


class BERT4Rec(SequentialRecommender):
    """Bidirectional self-attention (padding masked, no causal mask) with the BERT4Rec output layer.

    Output (paper eq 7): ``P(v) = softmax(LN(GELU(h W^P + b^P)) E^T + b^O)``, E the (shared) input item table.
    Training (``training_step``): each window's items ``s_a..s_b`` (inputs plus the last target) are masked
    independently with probability ``mask_ratio`` (at least one per window: else the last one), replaced by
    the mask token, and the CE is taken at masked positions only, over items ``1..N``.
    """

    architecture = "bert4rec"

    def __init__(
        self,
        num_items: int,
        max_len: int,
        d: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        d_ff: int = 256,
        dropout: float = 0.2,
        attn_dropout: float = 0.2,
        mask_ratio: float = 0.2,
        last_only_ratio: float = 0.1,
        layer_norm_eps: float = 1e-12,
        init_std: float = 0.02,
    ) -> None:
        super().__init__(num_items, max_len)
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if not 0.0 <= last_only_ratio <= 1.0:
            raise ValueError(f"last_only_ratio must be in [0, 1], got {last_only_ratio}")
        self.mask_ratio, self.last_only_ratio = float(mask_ratio), float(last_only_ratio)
        self.mask_token = num_items + 1
        self.item_emb = nn.Embedding(num_items + 2, d, padding_idx=0)  # row N + 1 = [mask]
        self.pos_emb = nn.Embedding(max_len + 1, d)
        self.ln = nn.LayerNorm(d, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d, n_heads, d_ff, dropout, attn_dropout, layer_norm_eps) for _ in range(n_layers)
        )
        self.out_proj = nn.Linear(d, d)  # W^P, b^P
        self.out_ln = nn.LayerNorm(d, eps=layer_norm_eps)
        self.out_bias = nn.Parameter(torch.zeros(num_items + 1))  # b^O
        self.init_weights(init_std)

    def forward(self, item_seq: torch.Tensor, return_attention: bool = False):
        """Output representations ``(B, L, d)`` (after the output transform); each position sees all items."""
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        x = self.dropout(self.ln(self.item_emb(item_seq) + self.pos_emb(positions)))
        L = item_seq.size(1)
        mask = (item_seq > 0)[:, None, None, :].expand(-1, 1, L, L)  # keys: items and [mask], not padding
        maps = []
        for block in self.blocks:
            x, m = block(x, mask, return_attention=return_attention)
            maps.append(m)
        x = self.out_ln(F.gelu(self.out_proj(x)))
        return (x, maps) if return_attention else x

    def item_embeddings(self) -> torch.Tensor:
        """Rows ``0..N`` of the item table (the mask row is never a candidate)."""
        return self.item_emb.weight[: self.num_items + 1]

    def output_bias(self) -> torch.Tensor:
        """The output bias b^O: logits are ``h E^T + b^O`` over items ``0..N`` (paper eq 7)."""
        return self.out_bias

    @staticmethod
    def full_windows(item_seq: np.ndarray, target_seq: np.ndarray) -> np.ndarray:
        """``(B, L + 1)`` right-padded windows ``s_a..s_b``: the inputs plus the target after the last one."""
        lengths = (item_seq > 0).sum(axis=1)
        last = np.take_along_axis(target_seq, np.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
        seq = np.pad(item_seq, ((0, 0), (0, 1)))
        seq[np.arange(len(seq)), lengths] = np.where(lengths > 0, last, 0)
        return seq

    def prepare_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Draw the Cloze mask on the host (numpy's seeded, checkpointed global RNG): each item of the full
        window is masked with probability ``mask_ratio``; ``last_only_ratio`` of the windows, and windows the
        draw left unmasked, mask only their last item. Adds the masked window and the flat masked positions
        with their items, so the device step has no data-dependent shape (no host sync)."""
        seq = self.full_windows(batch["item_seq"], batch["target_seq"])
        items = seq > 0
        masked = (np.random.random_sample(seq.shape) < self.mask_ratio) & items
        masked[np.random.random_sample(len(seq)) < self.last_only_ratio] = False
        lengths = items.sum(axis=1)
        none = ~masked.any(axis=1) & (lengths > 0)
        masked[np.flatnonzero(none), lengths[none] - 1] = True
        index = np.flatnonzero(masked)
        return {
            **batch,
            "cloze_seq": np.where(masked, self.mask_token, seq),
            "cloze_index": index,
            "cloze_targets": seq.reshape(-1)[index],
        }

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Masked item prediction (Cloze, paper section 3.6): CE at the masked positions only. The mask comes
        from :meth:`prepare_batch` (drawn here, with a host round trip, when the batch lacks it)."""
        if "cloze_index" not in batch:
            device = batch["item_seq"].device
            host = self.prepare_batch({k: batch[k].cpu().numpy() for k in ("item_seq", "target_seq")})
            batch = {k: torch.from_numpy(v).to(device) for k, v in host.items()}
        hidden = self(batch["cloze_seq"])
        h = hidden.reshape(-1, hidden.size(-1)).index_select(0, batch["cloze_index"])
        loss = self.next_item_loss(h, batch["cloze_targets"])
        return {"id": loss, "loss": loss}

    def last_hidden(self, item_seq: torch.Tensor) -> torch.Tensor:
        """Append ``[mask]`` after each history's last item and return its output ``(B, d)`` (section 3.6)."""
        lengths = (item_seq > 0).sum(dim=1)
        rows = torch.arange(item_seq.size(0), device=item_seq.device)
        seq = F.pad(item_seq, (0, 1))
        seq[rows, lengths] = self.mask_token
        return self(seq)[rows, lengths]
