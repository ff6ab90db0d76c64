"""Use a trained model outside a Kedro run: load it with its id maps and score a sequence of raw item ids.

    from maf_pipeline.inference import Recommender

    rec = Recommender.from_project(".", model="maf")  # paths come from conf/base/catalog.yml
    rec.recommend(["B01N8O2DL9", "B02HTP68Y3"], k=10)  # DataFrame: rank, item_id, title, score

The same scoring (``top_k``) serves the ``recommend`` pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from maf_pipeline.metrics import pad_right
from maf_pipeline.models import model_from_artifact

logger = logging.getLogger(__name__)

FEATURE_DATASETS = {"image": "image_features", "text": "text_features", "category": "category_features"}


def load_model(artifact: dict[str, Any], features: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """Rebuild a ``<model>.trained_model`` artifact (with the feature tables it uses) in eval mode on CPU."""
    return model_from_artifact(artifact, features).eval()


def user_histories(
    train_sequences: pd.DataFrame, valid_sequences: pd.DataFrame, test_sequences: pd.DataFrame
) -> dict[int, np.ndarray]:
    """Every user's whole interaction sequence in time order: training items, then the validation and test
    targets (users kept for training only have no targets)."""
    valid = dict(zip(valid_sequences["user_idx"], valid_sequences["target"], strict=True))
    test = dict(zip(test_sequences["user_idx"], test_sequences["target"], strict=True))
    out = {}
    for user, items in zip(train_sequences["user_idx"], train_sequences["items"], strict=True):
        tail = [t for t in (valid.get(user), test.get(user)) if t is not None]
        out[int(user)] = np.concatenate([np.asarray(items, dtype=np.int64), np.asarray(tail, dtype=np.int64)])
    return out


@torch.no_grad()
def top_k(
    model: torch.nn.Module,
    histories: Sequence[np.ndarray],
    k: int,
    exclude_seen: bool = True,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best next items (ids 1..N) and their scores for each history, ``(B, k)`` each.

    The model reads each history's last ``max_len`` items; with ``exclude_seen`` every item of the whole
    history is left out. Slots with no candidate left hold item 0 and score ``-inf``.
    """
    model = model.to(device).eval()
    max_len = int(getattr(model, "max_len", 1))
    num_items = int(model.num_items)
    k = min(int(k), num_items)
    items_out = np.zeros((len(histories), k), dtype=np.int64)
    scores_out = np.full((len(histories), k), -np.inf, dtype=np.float32)
    for start in range(0, len(histories), batch_size):
        chunk = [np.array(h, dtype=np.int64) for h in histories[start : start + batch_size]]  # writable
        seq = torch.from_numpy(pad_right(chunk, max_len)).to(device)
        scores = model.full_sort_scores(seq).float()
        scores[:, 0] = float("-inf")
        if exclude_seen:
            for row, hist in enumerate(chunk):
                if len(hist):
                    scores[row, torch.from_numpy(hist).to(device)] = float("-inf")
        best = scores.topk(k, dim=1)
        top_scores, top_items = best.values.cpu().numpy(), best.indices.cpu().numpy()
        top_items[~np.isfinite(top_scores)] = 0
        items_out[start : start + len(chunk)] = top_items
        scores_out[start : start + len(chunk)] = top_scores
    return items_out, scores_out


def recommendation_frame(
    keys: Sequence[Any],
    key_name: str,
    items: np.ndarray,
    scores: np.ndarray,
    item_ids: np.ndarray,
    titles: dict,
) -> pd.DataFrame:
    """Long table ``<key_name>, rank, item_id, title, score`` from ``top_k`` output (empty slots dropped)."""
    rows, ranks = np.nonzero(items > 0)
    frame = pd.DataFrame(
        {
            key_name: pd.array([keys[r] for r in rows], dtype=str),
            "rank": (ranks + 1).astype(np.int64),
            "item_id": pd.array(item_ids[items[rows, ranks]], dtype=str),
            "score": scores[rows, ranks].astype(np.float32),
        }
    )
    frame.insert(3, "title", pd.array([titles.get(i, "") for i in frame["item_id"]], dtype=str))
    return frame


def check_k(k: Any) -> int:
    """``k`` as an int >= 1, or a ``ValueError`` saying what was given (torch's own error is cryptic)."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def _id_list(values: Any, what: str) -> list[str]:
    """Raw ids from a list/tuple/array/Series; a lone string is refused (not a list of characters)."""
    if isinstance(values, str | bytes):
        raise TypeError(
            f"{what} must be a sequence of raw ids, not a string: use [{values!r}] for a single id"
        )
    if values is None or not hasattr(values, "__iter__"):
        raise TypeError(f"{what} must be a sequence of raw ids, got {type(values).__name__}")
    return [str(v) for v in values]


class Recommender:
    """A trained model with its item id map and titles: raw item ids in, top-k raw item ids and titles out.

    With ``histories`` (raw user id -> item_idx sequence, as ``user_histories`` builds them) it also
    recommends for known users by id (``recommend_users``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        item_index: pd.DataFrame,
        items: pd.DataFrame | None = None,
        histories: dict[str, np.ndarray] | None = None,
    ):
        self.model = model.eval()
        self.item_ids = np.empty(int(item_index["item_idx"].max()) + 1, dtype=object)
        self.item_ids[0] = ""
        self.item_ids[item_index["item_idx"].to_numpy()] = item_index["item_id"].astype(str).to_numpy()
        self.index_of = dict(zip(item_index["item_id"].astype(str), item_index["item_idx"], strict=True))
        self.titles = {} if items is None else dict(zip(items["item_id"], items["title"], strict=False))
        self.histories = histories or {}

    @classmethod
    def from_catalog(cls, catalog: Any, model: str = "maf") -> Recommender:
        """Load ``<model>.trained_model``, ``item_index``, ``filtered_items``, the users' histories and the
        feature tables the model uses from a Kedro ``DataCatalog`` (e.g. ``catalog`` in a notebook after
        ``%reload_kedro``)."""
        artifact = catalog.load(f"{model}.trained_model")
        used = artifact["__metadata__"].get("feature_dims", {})
        features = {name: catalog.load(FEATURE_DATASETS[name])["features"] for name in used}
        sequences = ("user_index", "train_sequences", "valid_sequences", "test_sequences")
        histories = (
            raw_user_histories(*(catalog.load(name) for name in sequences))
            if all(catalog.exists(name) for name in sequences)
            else None  # item sequences only (e.g. the sequences were never written here)
        )
        return cls(
            load_model(artifact, features),
            catalog.load("item_index"),
            catalog.load("filtered_items"),
            histories,
        )

    @classmethod
    def from_project(
        cls, project_path: str | Path = ".", model: str = "maf", env: str | None = None
    ) -> Recommender:
        """Read the project's catalog config (``conf/base`` + ``env``) and load as ``from_catalog`` does,
        without a Kedro session (no hooks, no MLflow run)."""
        from kedro.config import OmegaConfigLoader
        from kedro.io import DataCatalog

        root = Path(project_path).resolve()
        loader = OmegaConfigLoader(str(root / "conf"), base_env="base", default_run_env="local", env=env)
        config = {name: _absolute_paths(entry, root) for name, entry in loader["catalog"].items()}
        return cls.from_catalog(DataCatalog.from_config(config), model)

    def recommend(self, item_ids: Sequence[str], k: int = 10, exclude_seen: bool = True) -> pd.DataFrame:
        """Top-``k`` next items after the sequence ``item_ids`` (raw ids, oldest first).

        Ids the model does not know are skipped with a warning; if none is known a ``ValueError`` says so.
        A single id must be given as a list (``["B0..."]``): a string is refused, not split into characters.
        """
        item_ids = _id_list(item_ids, "item_ids")
        k = check_k(k)
        known = [self.index_of[i] for i in item_ids if i in self.index_of]
        unknown = [i for i in item_ids if i not in self.index_of]
        if unknown:
            logger.warning("%d item ids unknown to the model are skipped: %s", len(unknown), unknown[:10])
        if not known:
            raise ValueError(
                f"none of the {len(item_ids)} item ids is known to the model (e.g. {unknown[:3]})"
            )
        frame = self.recommend_histories([np.asarray(known, dtype=np.int64)], k, exclude_seen)
        return frame.drop(columns="query")

    def recommend_users(
        self, user_ids: Sequence[str], k: int = 10, exclude_seen: bool = True
    ) -> pd.DataFrame:
        """Top-``k`` items after each known user's whole history (as the ``recommend`` pipeline does):
        ``user_id, rank, item_id, title, score``; unknown users are logged and get no rows."""
        user_ids = _id_list(user_ids, "user_ids")
        k = check_k(k)
        known = [u for u in dict.fromkeys(user_ids) if u in self.histories]
        unknown = [u for u in user_ids if u not in self.histories]
        if unknown:
            logger.warning(
                "%d user ids unknown to the model get no recommendations: %s", len(unknown), unknown[:10]
            )
        frame = self.recommend_histories([self.histories[u] for u in known], k, exclude_seen)
        frame["query"] = pd.array([known[i] for i in frame["query"]], dtype=str)
        return frame.rename(columns={"query": "user_id"})

    def recommend_histories(
        self, histories: Sequence[np.ndarray], k: int = 10, exclude_seen: bool = True
    ) -> pd.DataFrame:
        """Top-``k`` for item_idx sequences in one batch: ``query`` (position in ``histories``), ``rank``,
        ``item_id``, ``title``, ``score``."""
        k = check_k(k)
        if not histories:
            return recommendation_frame(
                [],
                "query",
                np.zeros((0, k), np.int64),
                np.zeros((0, k), np.float32),
                self.item_ids,
                self.titles,
            ).astype({"query": "int64"})
        items, scores = top_k(self.model, list(histories), k, bool(exclude_seen))
        frame = recommendation_frame(
            list(range(len(histories))), "query", items, scores, self.item_ids, self.titles
        )
        return frame.astype({"query": "int64"})


def raw_user_histories(
    user_index: pd.DataFrame,
    train_sequences: pd.DataFrame,
    valid_sequences: pd.DataFrame,
    test_sequences: pd.DataFrame,
) -> dict[str, np.ndarray]:
    """``user_histories`` keyed by raw user id (``user_index``) instead of user_idx."""
    by_idx = user_histories(train_sequences, valid_sequences, test_sequences)
    ids = dict(zip(user_index["user_idx"].astype(int), user_index["user_id"].astype(str), strict=True))
    return {ids[i]: h for i, h in by_idx.items() if i in ids}


def _absolute_paths(entry: Any, root: Path) -> Any:
    """A catalog entry with relative local ``filepath``/``path`` values made absolute under ``root``."""
    if not isinstance(entry, dict):
        return entry
    out = dict(entry)
    for key in ("filepath", "path"):
        value = out.get(key)
        if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
            out[key] = (root / value).as_posix()
    return out
