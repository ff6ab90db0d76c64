"""RecBole's pre-split benchmark files (UniSRec, VQ-Rec, MISSRec and later): one fixed split, kept exactly.

``<name>.train.inter``, ``<name>.valid.inter`` and ``<name>.test.inter`` are TSVs with the header
``user_id:token  item_id_list:token_seq  item_id:token``: one row per target, the space-separated history
before it (oldest first, cut to the last ``C`` items) and the target. ``train`` holds every training target of
a user, ``valid`` one row (the second-last item), ``test`` one row (the last item, whose history ends with the
validation target). Ids are the 0-based indices of ``<name>.item2index`` / ``<name>.user2index``
(``raw id<TAB>index``) when those files exist, and are then mapped back to the raw ids (ASINs).

Each user's whole sequence is rebuilt by chaining: the train row with the shortest history starts it, and the
row whose history equals the sequence's last ``C`` items extends it by its target. The interactions get
strictly increasing synthetic timestamps in that order and a ``split`` column (train, valid, test) that the
sequences stage honours, so validation and test rows equal the files' rows (with ``sequences.max_len`` = C).

Inconsistent users (a user in test but not in valid or the reverse, train rows that do not chain, a
validation history that does not end the test history, an unknown item or user index) are reported by file
and line and skipped whole; more than ``max_bad_fraction`` of the users fails the read.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from maf_pipeline.datasets.embeddings import read_index_rows
from maf_pipeline.datasets.raw_file import RawSource

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
HISTORY_FIELD = "item_id_list"


@dataclass
class _Row:
    line: int
    history: tuple[str, ...]
    target: str


@dataclass
class _Problems:
    """Inconsistencies found, per user: the first reason and where (file:line)."""

    by_user: dict[str, str] = field(default_factory=dict)

    def add(self, user: str, where: str, why: str) -> None:
        self.by_user.setdefault(user, f"{where}: {why}")


def split_files(source: RawSource) -> dict[str, RawSource]:
    """The three split files next to ``source`` (any of them, or ``<name>.inter``), keyed by split."""
    path = PurePosixPath(source.path)
    stem = path.name.split(".")[0]
    return {
        s: RawSource(str(path.with_name(f"{stem}.{s}.inter")), source.protocol, source.storage_options)
        for s in SPLITS
    }


def sibling(source: RawSource, suffix: str) -> RawSource:
    """``<name><suffix>`` next to ``source`` (the name up to its first dot)."""
    path = PurePosixPath(source.path)
    return RawSource(
        str(path.with_name(path.name.split(".")[0] + suffix)), source.protocol, source.storage_options
    )


def is_benchmark_split(source: RawSource, header: str, field_separator: str = "\t") -> bool:
    """Whether ``source`` is one of RecBole's pre-split files: a header with an ``item_id_list`` column, or
    ``.train/.valid/.test.inter`` siblings all present."""
    names = [c.strip().partition(":")[0] for c in header.rstrip("\r\n").split(field_separator)]
    if HISTORY_FIELD in names:
        return True
    return all(s.exists() for s in split_files(source).values())


def read_index(text: str, name: str) -> dict[str, str]:
    """An ``id<TAB>index`` map file as index (the string the ``.inter`` files use) -> raw id."""
    return {str(row): raw for row, raw in read_index_rows(text, name).items()}


def _parse(text: str, name: str, cfg: dict[str, Any], problems: _Problems) -> dict[str, list[_Row]]:
    """Rows of one split file grouped by user, file order kept; bad lines are recorded against their user."""
    sep, seq_sep = cfg["field_separator"], cfg["seq_separator"]
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{name} is empty")
    columns = [c.strip().partition(":")[0] for c in lines[0].rstrip("\r").split(sep)]
    want = (cfg["user_field"], HISTORY_FIELD, cfg["item_field"])
    if any(c not in columns for c in want):
        raise ValueError(f"{name}: header {columns} lacks one of {list(want)}")
    pos = [columns.index(c) for c in want]
    rows: dict[str, list[_Row]] = defaultdict(list)
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.rstrip("\r").split(sep)
        if len(cells) != len(columns):
            problems.add(cells[0].strip() if cells else "", f"{name}:{number}", "wrong number of fields")
            continue
        user, history, target = (cells[p].strip() for p in pos)
        rows[user].append(_Row(number, tuple(t for t in history.split(seq_sep) if t), target))
    return rows


def _chain(user: str, rows: list[_Row], cap: int, name: str, problems: _Problems) -> list[str] | None:
    """The user's training sequence rebuilt from their train rows (history of the first, then the targets)."""
    first = min(rows, key=lambda r: (len(r.history), r.line))
    if not first.history:
        problems.add(user, f"{name}:{first.line}", "a train row with an empty history")
        return None
    by_history: dict[tuple[str, ...], list[_Row]] = defaultdict(list)
    for row in rows:
        by_history[row.history].append(row)
    sequence = list(first.history)
    used = 0
    while (nxt := by_history.get(tuple(sequence[-cap:]))) and used < len(rows):
        row = nxt.pop(0)
        sequence.append(row.target)
        used += 1
    if used != len(rows):
        left = min(r.line for group in by_history.values() for r in group)
        problems.add(user, f"{name}:{left}", "train rows do not chain into one sequence")
        return None
    return sequence


def _check_eval(user: str, sequence: list[str], row: _Row, cap: int, where: str, problems: _Problems) -> bool:
    """Whether an evaluation row's history is the sequence before it, cut to its last ``cap`` items."""
    if list(row.history) != sequence[-cap:]:
        problems.add(user, f"{where}:{row.line}", "history is not the end of the sequence before it")
        return False
    return True


def _map_ids(values: list[str], index: dict[str, str] | None) -> list[str] | None:
    if index is None:
        return values
    out = [index.get(v) for v in values]
    return None if any(v is None for v in out) else out  # type: ignore[return-value]


def benchmark_interactions(
    texts: dict[str, tuple[str, str]],
    item_index: dict[str, str] | None,
    user_index: dict[str, str] | None,
    cfg: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``interactions`` (+ a ``split`` column) from the three split files' texts (``{split: (name, text)}``).

    Ids go through the index maps when given. Returns the table (users in file order, each user's items in
    sequence order; the caller adds the synthetic timestamps) and a report of what was skipped and why.
    """
    problems = _Problems()
    parsed = {s: _parse(text, name, cfg, problems) for s, (name, text) in texts.items()}
    names = {s: name for s, (name, _) in texts.items()}
    histories = [len(r.history) for rows in parsed.values() for group in rows.values() for r in group]
    cap = max(histories, default=0) or 1
    users = list(dict.fromkeys([*parsed["train"], *parsed["valid"], *parsed["test"]]))
    out_users: list[str] = []
    out_items: list[str] = []
    out_split: list[str] = []
    for user in users:
        if user in problems.by_user:
            continue
        missing = [s for s in SPLITS if user not in parsed[s]]
        if missing:
            present = next(s for s in SPLITS if s not in missing)
            line = parsed[present][user][0].line
            problems.add(user, f"{names[present]}:{line}", f"user has no row in {', '.join(missing)}")
            continue
        for s in ("valid", "test"):
            if len(parsed[s][user]) > 1:
                problems.add(user, f"{names[s]}:{parsed[s][user][1].line}", f"user has several {s} rows")
        if user in problems.by_user:
            continue
        sequence = _chain(user, parsed["train"][user], cap, names["train"], problems)
        if sequence is None:
            continue
        valid, test = parsed["valid"][user][0], parsed["test"][user][0]
        if not _check_eval(user, sequence, valid, cap, names["valid"], problems):
            continue
        if not _check_eval(user, [*sequence, valid.target], test, cap, names["test"], problems):
            continue
        items = _map_ids([*sequence, valid.target, test.target], item_index)
        raw_user = _map_ids([user], user_index)
        if items is None or raw_user is None:
            what = "an item index" if items is None else "the user index"
            problems.add(user, f"{names['test']}:{test.line}", f"{what} is not in the index file")
            continue
        out_users.extend(raw_user * len(items))
        out_items.extend(items)
        out_split.extend(["train"] * len(sequence) + ["valid", "test"])
    bad = problems.by_user
    limit = float(cfg["max_bad_fraction"])
    first = [f"user {u}: {why}" for u, why in list(bad.items())[: int(cfg["first_bad_lines"])]]
    if bad:
        logger.warning(
            "benchmark split: %d of %d users inconsistent and skipped; first: %s", len(bad), len(users), first
        )
    if users and len(bad) / len(users) > limit:
        raise ValueError(
            f"benchmark split files {sorted(names.values())}: {len(bad)} of {len(users)} users are "
            f"inconsistent, more than max_bad_fraction {limit}; first: {first}"
        )
    frame = pd.DataFrame({"user_id": out_users, "item_id": out_items})
    frame["rating"] = np.float32(1.0)
    frame["split"] = pd.Categorical(out_split, categories=list(SPLITS))
    report = {
        "users": len(users),
        "users_kept": len(users) - len(bad),
        "users_skipped": len(bad),
        "first_problems": first,
        "history_cap": cap,
        "rows": {s: sum(len(g) for g in parsed[s].values()) for s in SPLITS},
        "id_maps": {"items": item_index is not None, "users": user_index is not None},
    }
    return frame, report
