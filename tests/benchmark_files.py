"""Writers of RecBole's pre-split benchmark files (UniSRec's layout) with made-up users, items and vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"


def make_sequences(n_users: int, n_items: int, seed: int = 0, max_len: int = 12) -> list[list[int]]:
    """Per user a sequence of item indices (length 4..max_len, a repeat now and then, four item groups)."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n_users):
        length = int(rng.integers(4, max_len + 1))
        group = (u % 4) * (n_items // 4)
        out.append([int(group + rng.integers(0, n_items // 4)) for _ in range(length)])
    return out


def write_split(
    folder: Path,
    sequences: list[list[int]],
    n_items: int,
    name: str = "Scientific",
    cap: int = 50,
    dim: int | None = 8,
    seed: int = 0,
) -> dict[str, Path]:
    """``<name>.train/.valid/.test.inter``, ``.item2index``, ``.user2index``, ``.text`` (and, with ``dim``,
    ``.feat1CLS`` / ``.feat3CLS`` raw float32 vectors) in ``folder``; train rows newest first per user, as
    UniSRec writes them. Returns the paths by suffix."""
    folder.mkdir(parents=True, exist_ok=True)
    train, valid, test = [HEADER], [HEADER], [HEADER]
    for u, seq in enumerate(sequences):
        rows = [
            f"{u}\t{' '.join(map(str, seq[max(0, t - cap) : t]))}\t{seq[t]}\n" for t in range(1, len(seq) - 2)
        ]
        train.extend(reversed(rows))
        v, t = len(seq) - 2, len(seq) - 1
        valid.append(f"{u}\t{' '.join(map(str, seq[max(0, v - cap) : v]))}\t{seq[v]}\n")
        test.append(f"{u}\t{' '.join(map(str, seq[max(0, t - cap) : t]))}\t{seq[t]}\n")
    paths = {s: folder / f"{name}.{s}.inter" for s in ("train", "valid", "test")}
    for split, lines in zip(("train", "valid", "test"), (train, valid, test), strict=True):
        paths[split].write_text("".join(lines))
    asins = [f"B{i:09d}" for i in range(n_items)]
    paths["item2index"] = folder / f"{name}.item2index"
    paths["item2index"].write_text("".join(f"{a}\t{i}\n" for i, a in enumerate(asins)))
    paths["user2index"] = folder / f"{name}.user2index"
    paths["user2index"].write_text("".join(f"A{u:012d}\t{u}\n" for u in range(len(sequences))))
    paths["text"] = folder / f"{name}.text"
    paths["text"].write_text(
        "item_id:token\ttext:token_seq\n"
        + "".join(
            f"{a}\tProduct {i} of group {i % 4}. Industrial & Scientific tools.\n"
            for i, a in enumerate(asins)
        )
    )
    if dim:
        rng = np.random.default_rng(seed + 1)
        for suffix in ("feat1CLS", "feat3CLS"):
            paths[suffix] = folder / f"{name}.{suffix}"
            rng.standard_normal((n_items, dim)).astype("<f4").tofile(paths[suffix])
    return paths
