"""Transformer blocks shared by SASRec and MAF, laid out as in RecBole (post-LN residual sub-layers).

A block is ``R^{k+1} = LN(FFN(MAF(R^k, E_m)))`` (paper eq 4) where each sub-layer is
``LayerNorm(x + Dropout(sublayer(x)))``. Without a multimodal input the attention is SASRec's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FUSIONS = ("sum", "concat", "gate")
SCALES = ("head", "model")


def attention_mask(item_seq: torch.Tensor) -> torch.Tensor:
    """Causal + key-padding mask ``(B, 1, L, L)``, True where query i may attend to key j (j <= i, j not pad).

    Sequences are right-padded (items first, 0s after), so every query row keeps at least key 0.
    """
    L = item_seq.size(1)
    causal = torch.ones(L, L, dtype=torch.bool, device=item_seq.device).tril()
    return causal[None, None] & (item_seq > 0)[:, None, None, :]


class FeedForward(nn.Module):
    """Position-wise feed-forward sub-layer with residual, dropout and LayerNorm (SASRec / RecBole)."""

    def __init__(self, d: int, d_ff: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, d_ff)
        self.fc2 = nn.Linear(d_ff, d)
        self.dropout = nn.Dropout(dropout)
        self.ln = nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``LN(x + Dropout(W2 gelu(W1 x)))``."""
        return self.ln(x + self.dropout(self.fc2(F.gelu(self.fc1(x)))))


class FusedSelfAttention(nn.Module):
    """Multi-head causal self-attention whose scores may be fused with multimodal scores (paper eqs 5-6).

    Per head i (``d_h = d / h``, ``d'_h = d' / h``)::

        att_ID = (R W_Q^i)(R W_K^i)^T            att_m = (E_m W_Q^m)(E_m W_K^m)^T      (eq 5)
        head_i = softmax(F(att_ID, att_m) / s) (R W_V^i)                                (eq 6)

    ``F`` is one of ``sum``, ``concat``, ``gate`` (see :class:`maf_pipeline.models.maf.MAF`); ``s`` is
    ``sqrt(d_h)`` (``scale: head``, standard and DIF-SR's choice) or ``sqrt(d)`` (``scale: model``, as eq 6 is
    written). With ``d_mm == 0`` there is no multimodal branch and this is SASRec's attention exactly.

    With ``fused`` (default) and ``sum`` fusion (or no multimodal branch) the whole head is one
    ``F.scaled_dot_product_attention`` call: ``A + B = [Q, Q_m] [K, K_m]^T`` per head, so concatenating the
    query and key heads gives the fused scores, and ``scale=1/s`` keeps the explicit scale (SDPA's default
    would be ``1/sqrt(d_h + d'_h)``). ``causal`` callers (right-padded causal models) pass ``is_causal``
    instead of the mask: rows of real items see only earlier real items either way; padding rows, whose
    outputs no loss or score reads, then attend to earlier padding too. Attention maps and ``concat``/``gate``
    use the explicit scores.
    """

    def __init__(
        self,
        d: int,
        n_heads: int,
        attn_dropout: float,
        dropout: float,
        eps: float,
        d_mm: int = 0,
        fusion: str = "sum",
        max_len: int = 50,
        scale: str = "head",
        fused: bool = True,
        side_values: bool = False,
    ) -> None:
        super().__init__()
        if d % n_heads:
            raise ValueError(f"hidden size d={d} must be divisible by n_heads={n_heads}")
        if d_mm and d_mm % n_heads:
            raise ValueError(f"multimodal size d_mm={d_mm} must be divisible by n_heads={n_heads}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        self.n_heads, self.d_mm, self.fusion, self.max_len = n_heads, d_mm, fusion, max_len
        self.fused = bool(fused) and (not d_mm or fusion == "sum")
        self.scale = math.sqrt(d // n_heads if scale == "head" else d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.dropout = nn.Dropout(dropout)
        self.ln = nn.LayerNorm(d, eps=eps)
        if d_mm:
            self.q_mm, self.k_mm = nn.Linear(d_mm, d_mm), nn.Linear(d_mm, d_mm)  # W_Q^m, W_K^m
            if fusion == "concat":  # [att_ID[i,:] ; att_m[i,:]] in R^{2L} -> R^L (DIF-SR)
                self.fuse = nn.Linear(2 * max_len, max_len)
            elif fusion == "gate":  # DIF-SR's VanillaAttention over the score rows of the sources
                self.gate1, self.gate2 = nn.Linear(max_len, max_len), nn.Linear(max_len, 1)
        # side_values: E_m also enters the values, V = R W_V + E_m W_V^m (off: DIF-SR keeps it out of them)
        self.v_mm = nn.Linear(d_mm, d, bias=False) if d_mm and side_values else None

    def reset_fusion(self) -> None:
        """Start ``concat`` as ``sum`` (weights ``[I I]``, bias 0); called after the model's generic init."""
        if self.d_mm and self.fusion == "concat":
            eye = torch.eye(self.max_len)
            with torch.no_grad():
                self.fuse.weight.copy_(torch.cat([eye, eye], dim=1))
                self.fuse.bias.zero_()

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        return x.view(B, L, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, h, L, d_h)

    def _fuse(self, att_id: torch.Tensor, att_mm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Fuse two ``(B, h, L, L)`` score tensors; masked entries are zeroed so F never sees the future."""
        if self.fusion == "sum":
            return att_id + att_mm
        L = att_id.size(-1)
        if self.max_len < L:
            raise ValueError(f"sequence length {L} exceeds the model's max_len {self.max_len}")
        att_id, att_mm = att_id.masked_fill(~mask, 0.0), att_mm.masked_fill(~mask, 0.0)
        # Right padding: a window of length L < max_len is the first L positions of a max_len window whose
        # other scores are masked (zero), so slicing the weights is exactly equivalent to padding to max_len.
        if self.fusion == "concat":
            W = self.fuse.weight
            W = torch.cat([W[:L, :L], W[:L, self.max_len : self.max_len + L]], dim=1)
            return F.linear(torch.cat([att_id, att_mm], dim=-1), W, self.fuse.bias[:L])
        rows = torch.stack([att_id, att_mm], dim=-2)  # (B, h, L, 2, L): one score row per source
        energy = self.gate2(F.relu(F.linear(rows, self.gate1.weight[:, :L], self.gate1.bias)))
        weights = torch.softmax(energy, dim=-2)  # (B, h, L, 2, 1), softmax over the sources
        return (weights * rows).sum(dim=-2)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        e_mm: torch.Tensor | None = None,
        return_attention: bool = False,
        causal: bool = False,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """Attend over ``x`` (B, L, d) under ``mask`` (B, 1, L, L); ``e_mm`` (B, L, d') is E_m when fusing.

        ``causal``: the mask is the causal + right-padding mask of :func:`attention_mask`.
        """
        if self.d_mm and e_mm is None:
            raise ValueError("this attention layer fuses multimodal scores: pass e_mm")
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        if self.v_mm is not None and e_mm is not None:
            v = v + self._split(self.v_mm(e_mm))
        if self.fused and not return_attention:
            if self.d_mm:  # [Q, Q_m][K, K_m]^T = att_ID + att_m (eqs 5-6 with F = sum)
                q = torch.cat([q, self._split(self.q_mm(e_mm)).to(q.dtype)], dim=-1)
                k = torch.cat([k, self._split(self.k_mm(e_mm)).to(k.dtype)], dim=-1)
            ctx = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=None if causal else mask,
                dropout_p=self.attn_dropout.p if self.training else 0.0,
                is_causal=causal,
                scale=1.0 / self.scale,
            )  # fmt: skip
            ctx = ctx.transpose(1, 2).reshape(x.shape)
            return self.ln(x + self.dropout(self.out(ctx))), None
        att_id = q @ k.transpose(-1, -2)  # eq 5, item-ID scores
        maps: dict[str, torch.Tensor] = {}
        if self.d_mm:
            qm, km = self._split(self.q_mm(e_mm)), self._split(self.k_mm(e_mm))
            att_mm = qm @ km.transpose(-1, -2)  # eq 5, multimodal scores
            scores = self._fuse(att_id, att_mm, mask)  # eq 6, F(att_ID, att_m)
            if return_attention:
                maps["id"] = self._probs(att_id, mask)
                maps["mm"] = self._probs(att_mm, mask)
        else:
            scores = att_id
            if return_attention:
                maps["id"] = self._probs(att_id, mask)
        probs = self._probs(scores, mask)  # eq 6, softmax(F / s)
        if return_attention:
            maps["fused"] = probs
        ctx = self.attn_dropout(probs) @ v  # (B, h, L, d_h)
        ctx = ctx.transpose(1, 2).reshape(x.shape)  # concat of the heads
        return self.ln(x + self.dropout(self.out(ctx))), (maps if return_attention else None)

    def _probs(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = (scores / self.scale).masked_fill(~mask, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1)


class Block(nn.Module):
    """One encoder block: (fused) self-attention then feed-forward (paper eq 4)."""

    def __init__(
        self, d: int, n_heads: int, d_ff: int, dropout: float, attn_dropout: float, eps: float, **mm
    ):
        super().__init__()
        self.attn = FusedSelfAttention(d, n_heads, attn_dropout, dropout, eps, **mm)
        self.ffn = FeedForward(d, d_ff, dropout, eps)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        e_mm: torch.Tensor | None = None,
        return_attention: bool = False,
        causal: bool = False,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """Return the block output and, when asked, its attention maps."""
        x, maps = self.attn(x, mask, e_mm, return_attention, causal)
        return self.ffn(x), maps
