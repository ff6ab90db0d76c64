"""Next-item losses over the item table: full softmax in chunks of items, and sampled softmax with logQ.

The full-softmax cross-entropy of ``M`` target positions over ``V`` items materialises an ``(M, V)`` logit
matrix (6 GB in fp32 at the paper's scale, 50 GB for a 1M-item catalog). :func:`chunked_cross_entropy` gives
the same loss and gradients while holding only ``(M, chunk)`` logits at a time: the forward pass keeps a
running log-sum-exp per row, the backward pass recomputes each chunk's logits and accumulates the gradients
(the memory of a fused "cut cross-entropy" kernel, with plain matmuls).

:func:`sampled_softmax_loss` scores each target against ``n`` negatives drawn for the batch (uniform or by
training popularity) with the logQ correction (Bengio & Senecal 2008; Yi et al., RecSys 2019): every logit
``s_j`` becomes ``s_j - log(n q_j)`` where ``q_j`` is the probability of drawing item ``j``, which makes the
sampled loss an estimate of the full softmax (the target's logit is left as it is); negatives equal to the
row's target are masked.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOSSES = ("full", "sampled_softmax")
NEGATIVE_SAMPLING = ("uniform", "popularity")


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The matmul dtype: the autocast dtype when autocast is on for ``t``'s device, else ``t``'s own."""
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Per-row ``logsumexp(h W^T + b) - (h W^T + b)[target]`` over columns 1..V-1 (column 0 is padding)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, exclude, chunk: int, dtype: torch.dtype):
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.to(dtype)
            rows = hidden.size(0)
            run_max = torch.full((rows,), float("-inf"), device=hidden.device)
            run_sum = torch.zeros(rows, device=hidden.device)
            target_logit = torch.zeros(rows, device=hidden.device)
            for start in range(0, weight.size(0), chunk):
                logits = _chunk_logits(h, weight, bias, start, chunk, dtype, exclude)
                cols, in_chunk = _target_cols(targets, start, logits.size(1))
                target_logit += torch.where(in_chunk, logits.gather(1, cols[:, None]).squeeze(1), 0.0)
                run_max_new = torch.maximum(run_max, logits.amax(dim=1))
                shift = run_max_new.masked_fill(torch.isinf(run_max_new), 0.0)  # an all-padding chunk
                scaled = torch.exp(logits.sub_(shift[:, None]))
                run_sum = run_sum * torch.exp(run_max - shift) + scaled.sum(1)
                run_max = run_max_new
            lse = run_max + torch.log(run_sum)
            # One chunk (a small catalog): keep the probabilities, as the plain CE would, instead of
            # recomputing the logits in backward.
            probs = scaled.div_(run_sum[:, None]) if weight.size(0) <= chunk else None
        ctx.save_for_backward(hidden, weight, bias, targets, exclude, lse, probs)
        ctx.chunk, ctx.dtype = chunk, dtype
        return lse - target_logit

    @staticmethod
    def backward(ctx, grad_rows):
        hidden, weight, bias, targets, exclude, lse, saved_probs = ctx.saved_tensors
        chunk, dtype = ctx.chunk, ctx.dtype
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.to(dtype)
            grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
            grad_w = torch.empty(weight.shape, dtype=torch.float32, device=weight.device)
            grad_b = None if bias is None else torch.empty_like(bias, dtype=torch.float32)
            scale = grad_rows.float()[:, None]
            for start in range(0, weight.size(0), chunk):
                if saved_probs is not None:
                    probs = saved_probs.clone()  # backward may run again (retain_graph)
                else:  # the softmax of the chunk's columns, recomputed
                    logits = _chunk_logits(h, weight, bias, start, chunk, dtype, exclude)
                    probs = torch.exp(logits.sub_(lse[:, None]))
                cols, in_chunk = _target_cols(targets, start, probs.size(1))
                probs.scatter_add_(1, cols[:, None], -in_chunk.to(probs.dtype)[:, None])  # minus one-hot
                g = probs.mul_(scale)
                stop = start + g.size(1)
                gd = g.to(dtype)
                grad_h += (gd @ weight[start:stop].to(dtype)).float()
                grad_w[start:stop] = (gd.T @ h).float()
                if grad_b is not None:
                    grad_b[start:stop] = g.sum(0)
        return (
            grad_h.to(hidden.dtype),
            grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            None,
            None,
            None,
            None,
        )


def _chunk_logits(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, start: int, chunk: int, dtype,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """fp32 logits ``(M, c)`` of item columns ``start..start+c``; the padding column 0 and each row's
    ``exclude`` items are -inf."""
    logits = (h @ weight[start : start + chunk].to(dtype).T).float()
    if bias is not None:
        logits += bias[start : start + chunk].float()
    if start == 0:
        logits[:, 0] = float("-inf")
    if exclude is not None:
        exclude_items(logits, exclude, start)
    return logits


def exclude_items(logits: torch.Tensor, exclude: torch.Tensor, start: int = 0) -> torch.Tensor:
    """``logits (M, c)`` of item columns ``start..start+c`` with each row's ``exclude`` items at -inf, in
    place. ``exclude``: ``(M, K)`` item ids per row, 0-padded (0, the padding item, is in no softmax).

    A min-scatter of -inf (a hit in this chunk) or +inf (an id elsewhere, clamped onto an edge column: no
    change) writes only ``(M, K)`` values: no ``(M, c)`` mask beside the logits; repeated ids are harmless.
    """
    width = logits.size(1)
    local = exclude - start
    hit = (local >= 0) & (local < width) & (exclude > 0)
    fill = torch.full(exclude.shape, float("inf"), dtype=logits.dtype, device=logits.device)
    return logits.scatter_reduce_(1, local.clamp(0, width - 1), fill.masked_fill_(hit, float("-inf")), "amin")


def _target_cols(targets: torch.Tensor, start: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's target column within the chunk (clamped) and whether the target lies in the chunk."""
    local = targets - start
    in_chunk = (local >= 0) & (local < width)
    return local.clamp(0, width - 1), in_chunk


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_size: int = 32768,
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean full-softmax CE of ``hidden (M, d)`` against ``weight (V, d)`` (+ ``bias (V,)``), column 0 out.

    Equal to ``F.cross_entropy(logits, targets)`` with ``logits = hidden @ weight.T + bias`` and
    ``logits[:, 0] = -inf``, in loss and gradients, with peak memory ``O(M * chunk_size)`` instead of
    ``O(M * V)``. Under autocast the matmuls run in the autocast dtype, the softmax sums in fp32.
    ``exclude (M, K)``: items (0-padded) left out of each row's softmax; never a row's target.
    """
    if chunk_size < 1:
        raise ValueError(f"loss chunk size must be >= 1, got {chunk_size}")
    dtype = _compute_dtype(hidden)
    rows = _ChunkedCrossEntropy.apply(hidden, weight, bias, targets, exclude, int(chunk_size), dtype)
    return rows.mean()


def sampling_log_probs(counts: torch.Tensor, sampling: str) -> torch.Tensor:
    """``log q`` over items ``0..N`` (padding at -inf): uniform over 1..N, or proportional to ``counts``.

    Popularity probabilities add one to every count so that items never seen as targets can be drawn.
    """
    if sampling not in NEGATIVE_SAMPLING:
        raise ValueError(f"negative_sampling must be one of {NEGATIVE_SAMPLING}, got {sampling!r}")
    weights = torch.ones(counts.numel(), dtype=torch.float64, device=counts.device)
    if sampling == "popularity":
        weights = counts.double() + 1.0
    weights[0] = 0.0
    return torch.log(weights / weights.sum()).float()


def draw_negatives(log_probs: torch.Tensor, num: int, uniform: bool) -> torch.Tensor:
    """``num`` item ids drawn with replacement from ``exp(log_probs)`` without a host sync (inverse CDF)."""
    n_items = log_probs.numel() - 1
    if uniform:
        return torch.randint(1, n_items + 1, (num,), device=log_probs.device)
    cdf = torch.cumsum(torch.exp(log_probs.double()), 0)
    u = torch.rand(num, dtype=torch.float64, device=log_probs.device) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp_(1, n_items)


def sampled_softmax_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    log_probs: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean CE of each target against the shared ``negatives (n,)`` with the logQ correction.

    ``log_probs`` is ``log q`` over items ``0..N``; negative logits are corrected by ``log(n q)``, so that
    ``sum_neg exp(s_j) / (n q_j)`` estimates the full partition sum and the loss approaches the full softmax
    as ``n`` grows; a negative equal to the row's target is masked (an accidental hit is not a negative).
    """
    n = negatives.numel()
    w_pos, w_neg = weight[targets], weight[negatives]
    pos = (hidden * w_pos.to(hidden.dtype)).sum(-1).float()
    neg = (hidden @ w_neg.to(hidden.dtype).T).float()
    if bias is not None:
        pos = pos + bias[targets].float()
        neg = neg + bias[negatives].float()
    neg = neg - (log_probs[negatives] + math.log(n))[None, :]
    neg = neg.masked_fill(targets[:, None] == negatives[None, :], float("-inf"))
    logits = torch.cat([pos[:, None], neg], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(targets))
