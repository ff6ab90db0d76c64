"""MAF: Multimodal Attention Fusion for sequential recommendation (Oh, Jo & Kim), section 3, eqs 2-10."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import SequentialRecommender, unique_items
from .layers import Block, attention_mask

MODALITIES = ("image", "text", "category")


class MAF(SequentialRecommender):
    """SASRec whose attention scores are fused, in every block, with scores computed from item features.

    Embedding (eqs 2-3): ``R^1 = Dropout(LN(E_ID + P))`` with learned positions P (as SASRec), and
    ``E_m = E_v W_v + E_t W_t + E_c W_c`` (no bias) over the modalities in use, ``d' = d_mm <= d``. E_m is
    computed once per batch and enters every block unchanged (DIF-SR style); feature tables are fixed,
    non-persistent buffers indexed per batch (only the distinct items of the batch are projected).

    Attention (eqs 5-6), per head with ``d_h = d/h`` and ``d'_h = d'/h``: ``A = (R W_Q)(R W_K)^T``,
    ``B = (E_m W_Qm)(E_m W_Km)^T``; before ``concat``/``gate`` fusion the entries that the causal/padding mask
    hides are set to 0 so the fused row never depends on future or padding items. The fusion F is
      * ``sum``:    ``F = A + B``;
      * ``concat``: ``F[i, :] = W_f [A[i, :] ; B[i, :]] + b_f`` with ``W_f in R^{L x 2L}`` shared by the
        heads of a layer (DIF-SR's concat; initialised to ``[I I]``, i.e. starting as ``sum``);
      * ``gate``:   ``e_S[i] = w_2^T ReLU(W_1 S[i, :] + b_1) + b_2`` for each source ``S in {A, B}``,
        ``g = softmax_S(e_S[i])``, ``F[i, :] = g_A A[i, :] + g_B B[i, :]`` (DIF-SR's vanilla attention).
    Then ``head = softmax(mask(F) / s) (R W_V)`` with ``s = sqrt(d_h)`` (``scale: head``, the standard choice
    and DIF-SR's) or ``s = sqrt(d)`` (``scale: model``, eq 6 as printed). Heads are concatenated, projected,
    and followed by FFN, residuals, dropout and LayerNorm as in SASRec (eq 4).

    ``fused_attention`` (default) computes ``softmax(mask(A + B) / s) V`` as one
    ``scaled_dot_product_attention`` call on ``[Q, Q_m]`` and ``[K, K_m]`` (the scores add), for ``sum`` and
    for SASRec; ``concat``/``gate`` and attention maps use the explicit scores.

    Levers beyond the paper (default off, for tuning on validation): ``side_values`` also adds
    ``E_m W_V^m`` to each block's values (by default, as in DIF-SR, side information shapes only the
    attention scores), and ``mm_dropout`` applies dropout to E_m (the side embedding) during training.

    Prediction and loss (eqs 7-10): logits ``R_t M_id^T`` against the tied item table, full-softmax CE at
    every target position; with ``multitask`` linear decoders predict the next item's image and text features
    (``L_v``, ``L_t``: MSE) and a sigmoid head its categories (``L_c``: BCE), each a mean over targets and
    feature dimensions. With ``mtl_normalize: constant`` (default) each L_j is divided by the loss of the
    best constant predictor on the table (mean per-dimension variance for MSE, mean binary entropy of the
    category frequencies for BCE): L_j = 1 at the start (the decoders are initialised as that predictor)
    and < 1 once they learn, whatever the extractor's scale; ``none`` keeps PyTorch's (RecBole's) raw means,
    whose size depends on the features (element-mean MSE of L2-normalised 4096-d features is ~1e-4, so
    lambda barely matters for them). Measured on the bundled sample with ``constant``: lambda 0.1-3 helps
    or is neutral, lambda 10 swamps L_id (training stalls near popularity), so the paper's grid 5..25 fits
    raw losses, and about 0.1..3 fits normalised ones. Total
    ``L = L_id + mtl_lambda * sum_j L_j`` (eq 10). With no modalities the model is SASRec exactly
    (same parameter names and forward).
    """

    reads_items = True

    architecture = "maf"
    feature_names = MODALITIES

    def __init__(
        self,
        num_items: int,
        max_len: int,
        features: dict[str, torch.Tensor] | None = None,
        modalities: list[str] | tuple[str, ...] = MODALITIES,
        d: int = 64,
        d_mm: int = 32,
        n_layers: int = 2,
        n_heads: int = 2,
        d_ff: int = 256,
        fusion: str = "sum",
        scale: str = "head",
        multitask: bool = True,
        mtl_lambda: float = 1.0,
        mtl_normalize: str = "constant",
        dropout: float = 0.5,
        attn_dropout: float = 0.5,
        layer_norm_eps: float = 1e-12,
        init_std: float = 0.02,
        fused_attention: bool = True,
        side_values: bool = False,
        mm_dropout: float = 0.0,
    ) -> None:
        super().__init__(num_items, max_len)
        self.modalities = tuple(modalities or ())
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; choose from {MODALITIES}")
        if self.modalities and d_mm > d:
            raise ValueError(
                f"multimodal size d_mm={d_mm} must be <= the hidden size d={d} (paper section 3.3)"
            )
        if mtl_normalize not in ("constant", "none"):
            raise ValueError(f"mtl_normalize must be 'constant' or 'none', got {mtl_normalize!r}")
        self.aux_loss_weight = float(mtl_lambda)
        self.multitask = bool(multitask) and bool(self.modalities)
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, d)
        self.ln = nn.LayerNorm(d, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        mm = {
            "scale": scale,
            "fused": fused_attention,
            **({"d_mm": d_mm, "fusion": fusion, "max_len": max_len} if self.modalities else {}),
            **({"side_values": True} if self.modalities and side_values else {}),
        }
        self.mm_dropout = nn.Dropout(mm_dropout)
        self.blocks = nn.ModuleList(
            Block(d, n_heads, d_ff, dropout, attn_dropout, layer_norm_eps, **mm) for _ in range(n_layers)
        )
        self.mtl_norm: dict[str, float] = {}  # loss of the best constant predictor per modality
        constant: dict[str, torch.Tensor] = {}  # that predictor's output (decoder bias at init)
        if self.modalities:
            self.mm_proj = nn.ModuleDict()  # W_v, W_t, W_c (eq 3)
            self.decoders = nn.ModuleDict()  # W'_v, W'_t, W'_c with biases (eqs 8-9)
            for name in self.modalities:
                table = self._check_table(name, (features or {}).get(name), num_items)
                self.register_buffer(f"feat_{name}", table, persistent=False)
                self.mtl_norm[name], constant[name] = _constant_predictor(name, table)
                if mtl_normalize == "none":
                    self.mtl_norm[name] = 1.0
                self.mm_proj[name] = nn.Linear(table.size(1), d_mm, bias=False)
                if self.multitask:
                    self.decoders[name] = nn.Linear(d, table.size(1))
        self.init_weights(init_std)
        with torch.no_grad():  # decoders start as the constant predictor: every L_j starts at 1
            for name, decoder in getattr(self, "decoders", {}).items():
                decoder.weight.zero_()
                decoder.bias.copy_(constant[name])

    @staticmethod
    def _check_table(name: str, table: torch.Tensor | None, num_items: int) -> torch.Tensor:
        if table is None:
            raise ValueError(f"modality {name!r} is in use but no {name} feature table was given")
        if table.dim() != 2 or table.size(0) != num_items + 1:
            raise ValueError(
                f"{name} features must be (num_items + 1, dim) = ({num_items + 1}, dim), "
                f"got {tuple(table.shape)}"
            )
        table = table.detach()
        if not table.is_floating_point():
            table = table.float()
        if name == "category" and (table.min() < 0 or table.max() > 1):
            raise ValueError("category features must be multi-hot in [0, 1] (they are BCE targets, eq 9)")
        return table

    def feature(self, name: str) -> torch.Tensor:
        """The fixed feature table of a modality, ``(N + 1, dim)``, on the model's device."""
        return getattr(self, f"feat_{name}")

    def multimodal_embedding(
        self, item_seq: torch.Tensor, items: torch.Tensor | None = None, inverse: torch.Tensor | None = None
    ) -> torch.Tensor:
        """E_m ``(B, L, d')`` (eq 3), projecting only the distinct items of the batch (``items``/``inverse``
        when the trainer computed them on the host, else ``torch.unique``)."""
        uniq, inverse = unique_items(item_seq, items, inverse)
        e = sum(self.mm_proj[name](self.feature(name)[uniq].float()) for name in self.modalities)
        return e[inverse]

    def forward(
        self,
        item_seq: torch.Tensor,
        return_attention: bool = False,
        items: torch.Tensor | None = None,
        inverse: torch.Tensor | None = None,
    ):
        """Hidden states ``(B, L, d)`` (R^L of eq 4); with ``return_attention`` also per-layer maps
        ``{"id", "mm", "fused"}`` of shape ``(B, h, L, L)``: softmaxes of the ID, multimodal, fused scores."""
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        x = self.dropout(self.ln(self.item_emb(item_seq) + self.pos_emb(positions)))  # R^1 (eq 2)
        e_mm = (
            self.mm_dropout(self.multimodal_embedding(item_seq, items, inverse)) if self.modalities else None
        )
        mask = attention_mask(item_seq)
        maps = []
        for block in self.blocks:
            x, m = block(x, mask, e_mm, return_attention, causal=True)  # eq 4
            maps.append(m)
        return (x, maps) if return_attention else x

    def item_embeddings(self) -> torch.Tensor:
        """The item-ID table M_id (eq 7), tied with the input embedding."""
        return self.item_emb.weight

    def extra_losses(self, hidden: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Multitask losses on the next item's features (eqs 8-9), each over the constant-predictor loss."""
        if not self.multitask:
            return {}
        losses = {}
        for name in self.modalities:
            pred = self.decoders[name](hidden).float()
            true = self.feature(name)[targets].float()
            if name == "category":
                loss = F.binary_cross_entropy_with_logits(pred, true)  # eq 9
            else:
                loss = F.mse_loss(pred, true)  # eq 8
            losses[name] = loss / self.mtl_norm[name]
        return losses


def _constant_predictor(name: str, table: torch.Tensor, chunk: int = 16384) -> tuple[float, torch.Tensor]:
    """The best constant prediction over items 1..N and its loss: the mean row and the mean per-dimension
    variance (MSE), or the category logits log(p / (1 - p)) and the mean binary entropy of the frequencies p
    (BCE). A zero loss (constant table) is reported as 1.0 so the normalisation never divides by zero."""
    rows = table[1:]
    total = torch.zeros(table.size(1), dtype=torch.float64, device=table.device)
    squares = torch.zeros_like(total)
    for start in range(0, rows.size(0), chunk):  # float64 sums in chunks: no full-size copy of the table
        part = rows[start : start + chunk].double()
        total += part.sum(0)
        squares += (part * part).sum(0)
    mean = total / max(rows.size(0), 1)
    if name == "category":
        p = mean.clamp(1e-6, 1 - 1e-6)
        value = float(-(p * p.log() + (1 - p) * (1 - p).log()).mean())
        output = torch.logit(p)
    else:
        value = float((squares / max(rows.size(0), 1) - mean * mean).clamp(min=0).mean())
        output = mean
    return (value if value > 1e-12 else 1.0), output.float()
