"""RecBole's pre-split benchmark files: detection, the split kept exactly, broken splits reported by line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from maf_pipeline.datasets import RawSource
from maf_pipeline.pipelines.ingestion.interaction_formats import (
    detect_interaction_format,
    ingest_interaction_files,
)
from maf_pipeline.pipelines.ingestion.nodes import ingest_metadata, ingest_reviews
from maf_pipeline.pipelines.sequences.nodes import build_id_maps, build_sequences
from tests.benchmark_files import make_sequences, write_split

CFG = {"format": "auto"}


def _file_rows(path, users: dict[str, str], items: dict[str, str]) -> dict[str, tuple[list[str], str]]:
    rows = {}
    for line in path.read_text().splitlines()[1:]:
        u, history, target = line.split("\t")
        rows[users[u]] = ([items[i] for i in history.split()], items[target])
    return rows


def _maps(paths) -> tuple[dict[str, str], dict[str, str]]:
    def read(p):
        return {i: raw for raw, i in (line.split("\t") for line in p.read_text().splitlines())}

    return read(paths["user2index"]), read(paths["item2index"])


@pytest.fixture
def split(tmp_path):
    sequences = make_sequences(60, 40, seed=3, max_len=14)
    sequences[0] = [1, 2, 3, 2, 5, 6]  # a repeated item stays (the published sequences keep repeats)
    return sequences, write_split(tmp_path, sequences, 40, cap=8)


def test_detected_from_the_history_column_and_the_siblings(split, tmp_path):
    _, paths = split
    assert detect_interaction_format(RawSource(str(paths["train"])), {**CFG, "field_separator": "\t"}) == (
        "recbole_split"
    )
    plain = tmp_path / "other" / "x.inter"
    plain.parent.mkdir()
    plain.write_text("user_id:token\titem_id:token\n1\t2\n")
    assert detect_interaction_format(RawSource(str(plain)), {**CFG, "field_separator": "\t"}) == "recbole"


def test_split_kept_exactly_with_raw_ids(split):
    sequences, paths = split
    interactions, items, report = ingest_interaction_files(RawSource(str(paths["train"])), None, None)
    users, item_ids = _maps(paths)
    assert report["format"] == "recbole_split" and report["split"]["users_skipped"] == 0
    assert report["split"]["history_cap"] == 8
    assert len(interactions) == sum(len(s) for s in sequences)  # every train-file item, the early ones too
    assert set(interactions["item_id"]) <= set(item_ids.values())  # raw ASINs, not indices
    assert (items["text"] != "").all() and set(items["item_id"]) == set(interactions["item_id"])
    item_index, user_index = build_id_maps(interactions)
    train, valid, test = build_sequences(interactions, item_index, user_index, max_len=8)
    item_of = dict(zip(item_index["item_idx"], item_index["item_id"], strict=True))
    user_of = dict(zip(user_index["user_idx"], user_index["user_id"], strict=True))
    for frame, name in ((valid, "valid"), (test, "test")):
        expected = _file_rows(paths[name], users, item_ids)
        got = {
            user_of[u]: ([item_of[i] for i in h], item_of[t])
            for u, h, t in zip(frame["user_idx"], frame["history"], frame["target"], strict=True)
        }
        assert got == expected
    # training holds exactly the train file's items: the first history item and every train target
    train_of = {
        user_of[u]: [item_of[i] for i in s] for u, s in zip(train["user_idx"], train["items"], strict=True)
    }
    for u, seq in enumerate(sequences):
        assert train_of[f"A{u:012d}"] == [item_ids[str(i)] for i in seq[:-2]]


def test_the_ingestion_pipeline_reads_them_too(split):
    _, paths = split
    interactions, report = ingest_reviews(RawSource(str(paths["train"])), {}, {"start": None, "end": None})
    items, meta_report = ingest_metadata(RawSource(str(paths["text"])), {}, interactions)
    assert report["format"] == "recbole_split" and "split" in interactions.columns
    assert meta_report["format"] == "recbole_item" and set(items["item_id"]) == set(interactions["item_id"])
    assert items["text"].str.startswith("Product").all()


def _break(path, line: int, new: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[line - 1] = new
    path.write_text("".join(lines))


@pytest.mark.parametrize(
    "case",
    ["user_missing_in_valid", "valid_not_prefix_of_test", "unknown_item_index", "train_does_not_chain"],
)
def test_a_broken_split_is_reported_by_line_and_skipped(split, case, caplog):
    _, paths = split
    if case == "user_missing_in_valid":
        _break(paths["valid"], 3, "")  # the row of user 1
    elif case == "valid_not_prefix_of_test":
        u, h, t = paths["test"].read_text().splitlines()[2].split("\t")
        _break(paths["test"], 3, f"{u}\t{' '.join(reversed(h.split()))}\t{t}\n")
    elif case == "unknown_item_index":
        u, h, t = paths["test"].read_text().splitlines()[2].split("\t")
        _break(paths["test"], 3, f"{u}\t{h}\t999\n")
    else:
        lines = paths["train"].read_text().splitlines()
        number = next(n for n, line in enumerate(lines, start=1) if line.startswith("1\t"))
        u, h, t = lines[number - 1].split("\t")
        _break(paths["train"], number, f"{u}\t{h} 7\t{t}\n")
    params = {"max_bad_fraction": 0.05}
    interactions, _, report = ingest_interaction_files(RawSource(str(paths["train"])), params, None)
    assert report["split"]["users_skipped"] == 1
    problem = report["split"]["first_problems"][0]
    assert problem.startswith("user 1: Scientific.") and ".inter:" in problem
    assert "A000000000001" not in set(interactions["user_id"])
    assert "inconsistent and skipped" in caplog.text
    with pytest.raises(ValueError, match=r"more than max_bad_fraction 0\.0"):
        ingest_interaction_files(RawSource(str(paths["train"])), {"max_bad_fraction": 0.0}, None)


def test_a_filter_that_breaks_a_users_split_drops_that_user(split, caplog):
    _, paths = split
    interactions, _, _ = ingest_interaction_files(RawSource(str(paths["train"])), None, None)
    first = interactions["user_id"].iloc[0]
    test_row = interactions.index[(interactions["user_id"] == first) & (interactions["split"] == "test")]
    cut = interactions.drop(index=test_row).reset_index(drop=True)
    item_index, user_index = build_id_maps(cut)
    _, valid, _ = build_sequences(cut, item_index, user_index, max_len=8)
    assert len(valid) == interactions["user_id"].nunique() - 1
    assert "do not end with exactly one valid then one test row" in caplog.text


def test_real_scientific_files_when_present():
    from tests.conftest import REPO

    folder = REPO.parent / "shared" / "data" / "unisrec-scientific"
    if not folder.exists():
        pytest.skip("../shared/data/unisrec-scientific is not beside the project")
    interactions, items, report = ingest_interaction_files(
        RawSource(str(folder / "Scientific.train.inter")), None, None
    )
    assert report["summary"]["users"] == 8442 and report["summary"]["items"] == 4385
    assert report["split"]["users_skipped"] == 0 and (items["text"] != "").all()
    counts = interactions["split"].value_counts()
    assert counts["valid"] == counts["test"] == 8442
    assert np.array_equal(pd.unique(interactions["user_id"])[:1], ["ABW8NXS7SV55K"])
