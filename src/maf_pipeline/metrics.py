"""Ranking metrics for leave-one-out evaluation, shared by training (validation) and the evaluation pipeline.

Each user has one relevant item (the target), so with its 1-based rank r among the candidates:
``Recall@k = [r <= k]``, ``NDCG@k = [r <= k] / log2(r + 1)`` (IDCG = 1, paper eq 11) and ``MRR = 1 / r``.

Tie rule (pessimistic): ``r = 1 + #{candidates scoring higher} + #{other candidates scoring equal}``, so every
tie counts against the target and a constant scorer ranks the target last (no credit). NaN scores count
as -inf. Candidates are all items except padding (full protocol) or the target plus sampled negatives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

DEFAULT_KS = (10, 20)


def pessimistic_rank(scores: torch.Tensor, target_col: torch.Tensor) -> torch.Tensor:
    """1-based rank of column ``target_col[b]`` in each row of ``scores`` ``(B, C)``, ties counted against it.

    Columns scored -inf that are not the target (padding, masked items) rank below a finite target. Equals
    ``1 + #{higher} + #{other equal}`` with NaN read as -inf, i.e. ``#{columns >= target}``, computed with one
    boolean ``(B, C)`` temporary and no copy of ``scores``.
    """
    target = scores.gather(1, target_col[:, None]).float()
    at_least = (scores >= target.to(scores.dtype)).sum(dim=1)
    bottom = torch.isnan(target[:, 0]) | (target[:, 0] == float("-inf"))  # everything is >= -inf
    return torch.where(bottom, scores.size(1), at_least)


def metric_values(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-user Recall@k, NDCG@k (every k) and MRR from 1-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size and ranks.min() < 1:
        raise ValueError("ranks are 1-based")
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = ranks <= k
        out[f"recall@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)
    out["mrr"] = 1.0 / ranks
    return out


def summarize(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean of each metric over users (and the user count)."""
    values = metric_values(ranks, ks)
    summary = {name: float(v.mean()) if v.size else float("nan") for name, v in values.items()}
    summary["num_users"] = len(ranks)
    return summary


def pad_right(sequences: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    """Right-padded ``(n, L)`` int64 array of each sequence's last ``max_len`` items (L = longest kept)."""
    lengths = np.array([min(len(s), max_len) for s in sequences], dtype=np.int64)
    out = np.zeros((len(sequences), max(int(lengths.max(initial=0)), 1)), dtype=np.int64)
    for i, (seq, n) in enumerate(zip(sequences, lengths, strict=True)):
        if n:
            out[i, :n] = np.asarray(seq, dtype=np.int64)[-n:]
    return out


def sample_negatives(
    interacted: Sequence[np.ndarray], num_items: int, num_negatives: int, seed: int
) -> np.ndarray:
    """For each user, ``num_negatives`` distinct items in 1..N that the user never interacted with (seeded).

    Returns ``(U, num_negatives)``; a user with fewer available items is padded with 0 (scored -inf, never
    ranked above the target).
    """
    rng = np.random.default_rng(seed)
    out = np.zeros((len(interacted), num_negatives), dtype=np.int64)
    for u, seen in enumerate(interacted):
        seen = np.unique(np.asarray(seen, dtype=np.int64))
        available = num_items - len(seen[(seen >= 1) & (seen <= num_items)])
        want = min(num_negatives, available)
        picked = np.empty(0, dtype=np.int64)
        while len(picked) < want:
            draw = rng.integers(1, num_items + 1, size=2 * (want - len(picked)) + 8)
            draw = draw[~np.isin(draw, seen) & ~np.isin(draw, picked)]
            _, first = np.unique(draw, return_index=True)
            picked = np.concatenate([picked, draw[np.sort(first)]])[:want]
        out[u, :want] = picked
    return out


@torch.no_grad()
def rank_targets(
    scorer: torch.nn.Module,
    histories: Sequence[np.ndarray] | np.ndarray,
    targets: np.ndarray,
    max_len: int,
    batch_size: int = 512,
    exclude: Sequence[np.ndarray] | None = None,
    negatives: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    desc: str = "ranking",
    max_scores: int | None = None,
) -> np.ndarray:
    """Pessimistic 1-based rank of each target under ``scorer.full_sort_scores`` (eval mode, no grad).

    Full protocol: candidates are all items but padding, minus ``exclude[u]`` (history masking; the target
    itself is never excluded). Sampled protocol (``negatives`` given, ``(U, n)``): candidates are the target
    and its negatives. ``histories`` may be given already right-padded (``(U, L)`` array, see
    :func:`pad_right`). ``max_scores`` bounds the users x items score matrix of a batch (memory): batches
    shrink to ``max_scores // (N + 1)`` users when that is below ``batch_size``. Users are batched in order
    of history length (little padding for the encoder); ranks stay on the device until the end (one sync).
    """
    was_training = scorer.training
    scorer.eval()
    device = torch.device(device)
    targets = np.array(targets, dtype=np.int64)  # a writable copy (pandas arrays may be read-only)
    padded = histories if isinstance(histories, np.ndarray) and histories.ndim == 2 else None
    if padded is None:
        padded = pad_right(histories, max_len)
    padded = padded[:, -max_len:] if padded.shape[1] > max_len else padded
    lengths = (padded > 0).sum(axis=1)
    num_columns = int(getattr(scorer, "num_items", 0)) + 1
    if max_scores:
        batch_size = max(1, min(batch_size, int(max_scores) // max(num_columns, 1)))
    order = np.argsort(lengths, kind="stable")  # users of similar history length share a batch
    out = []
    starts = range(0, len(targets), batch_size)
    for start in tqdm(starts, desc=desc, disable=None, leave=False):
        users = order[start : start + batch_size]
        width = max(int(lengths[users].max(initial=0)), 1)
        seq = _to(padded[users, :width], device)
        tgt = _to(targets[users], device)
        scores = scorer.full_sort_scores(seq)
        if negatives is not None:
            cand = torch.cat([tgt[:, None], _to(negatives[users], device)], dim=1)
            cand_scores = scores.gather(1, cand).float()
            cand_scores[:, 1:] = cand_scores[:, 1:].masked_fill(cand[:, 1:] == 0, float("-inf"))
            out.append(pessimistic_rank(cand_scores, torch.zeros_like(tgt)))
            continue
        if exclude is not None:
            excluded = [np.asarray(exclude[u], dtype=np.int64) for u in users]
            rows = [np.full(len(e), i) for i, e in enumerate(excluded)]
            if rows and sum(len(r) for r in rows):
                r = _to(np.concatenate(rows), device)
                c = _to(np.concatenate(excluded), device)
                if scores._is_view():  # e.g. an expanded row: mask a copy, never the scorer's tensor
                    scores = scores.clone()
                keep = scores.gather(1, tgt[:, None])
                scores.index_put_((r, c), torch.tensor(float("-inf"), device=device))
                scores.scatter_(1, tgt[:, None], keep)  # the target is never masked
        out.append(pessimistic_rank(scores, tgt))
    scorer.train(was_training)
    ranks = np.empty(len(targets), dtype=np.int64)
    if out:
        ranks[order] = torch.cat(out).cpu().numpy()
    return ranks


def _to(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device`` (pinned and non-blocking on CUDA)."""
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t
