"""Training batches: the windows cut from each user's history, one epoch's order, host-side batches.

Objectives (``training.objective``):
  * ``all_positions`` (default): causal loss at every position of a window. A history ``s_1..s_n`` has targets
    ``s_2..s_n``; it is cut from the end into windows of ``max_len`` targets (the most recent window gets the
    full context), so each target is predicted exactly once per epoch.
  * ``last_position``: RecBole's prefix augmentation, one sample per target ``s_t`` with input
    ``s_{t-max_len}..s_{t-1}`` and the loss at the last position only (same targets, ~max_len times the cost).
"""

from __future__ import annotations

import numpy as np
import torch

OBJECTIVES = ("all_positions", "last_position")


def training_windows(
    sequences: list[np.ndarray], max_len: int, objective: str = "all_positions"
) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ``(W, L)`` input and target windows (target 0 = no loss) for the chosen objective."""
    if objective not in OBJECTIVES:
        raise ValueError(f"training.objective must be one of {OBJECTIVES}, got {objective!r}")
    spans = []  # (user, start, end): inputs s[start:end], targets s[start+1:end+1]
    for u, seq in enumerate(sequences):
        n = len(seq)
        if objective == "all_positions":
            end = n - 1
            while end >= 1:
                spans.append((u, max(0, end - max_len), end))
                end -= max_len
        else:
            spans.extend((u, max(0, t - max_len), t) for t in range(1, n))
    inputs = np.zeros((len(spans), max_len), dtype=np.int64)
    targets = np.zeros_like(inputs)
    for w, (u, a, b) in enumerate(spans):
        seq = np.asarray(sequences[u], dtype=np.int64)
        inputs[w, : b - a] = seq[a:b]
        if objective == "all_positions":
            targets[w, : b - a] = seq[a + 1 : b + 1]
        else:
            targets[w, b - a - 1] = seq[b]
    return inputs, targets


def host_batch(
    inputs: np.ndarray, targets: np.ndarray, lengths: np.ndarray, idx: np.ndarray, num_items: int,
    with_items: bool, history: bool = False,
) -> dict[str, np.ndarray]:  # fmt: skip
    """One training batch prepared on the host, so the device step has no data-dependent shapes.

    Windows are trimmed to the longest in the batch (right padding). ``target_index``/``targets``: flat
    positions and items of the targets; ``items``/``item_inverse`` (feature models): the distinct items and
    each position's index into them. ``history`` (``training.loss_mask_history``): ``(M, width)`` each
    target's earlier items in the window, 0 in place of later positions and of copies of the target.
    """
    width = max(int(lengths[idx].max()), 1)
    x, y = inputs[idx, :width], targets[idx, :width]
    flat = y.reshape(-1)
    index = np.flatnonzero(flat)
    batch = {"item_seq": x, "target_seq": y, "target_index": index, "targets": flat[index]}
    if history:  # [b, t, j]: input j is at or before position t (so before target t) and is not the target
        earlier = np.tril(np.ones((width, width), dtype=bool)) & (x[:, None, :] != y[:, :, None])
        batch["history"] = np.where(earlier, x[:, None, :], 0).reshape(-1, width)[index]
    if with_items:
        if x.size * 16 < num_items:  # small batch, big catalog: sort
            items, inverse = np.unique(x, return_inverse=True)
        else:  # mark the items present: O(N + B L), no sort
            present = np.zeros(num_items + 1, dtype=bool)
            present[x.reshape(-1)] = True
            items = np.flatnonzero(present)
            slot = np.zeros(num_items + 1, dtype=np.int64)
            slot[items] = np.arange(len(items))
            inverse = slot[x]
        batch.update(items=items.astype(np.int64), item_inverse=inverse.reshape(x.shape).astype(np.int64))
    return batch


def to_device(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Host arrays to device tensors: pinned memory and non-blocking copies on CUDA."""
    cuda = device.type == "cuda"
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        out[k] = t.pin_memory().to(device, non_blocking=True) if cuda else t
    return out


def epoch_order(lengths: np.ndarray, batch_size: int, grouping: int, seed: int) -> np.ndarray:
    """The window order of one epoch: a seeded permutation; with ``grouping`` > 0, windows are sorted by
    length within consecutive groups of ``grouping`` batches and the batches are then shuffled, so a batch
    holds windows of similar length (little right padding: the encoder's cost follows the real positions)
    while every window is still seen once per epoch in a seeded random batch order."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    if grouping <= 0:
        return order
    group = grouping * batch_size
    for start in range(0, len(order), group):
        part = order[start : start + group]
        order[start : start + group] = part[np.argsort(lengths[part], kind="stable")]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return np.concatenate([batches[i] for i in rng.permutation(len(batches))]) if batches else order
