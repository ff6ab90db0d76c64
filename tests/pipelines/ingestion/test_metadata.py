"""``ingest_metadata``: the three formats, cleaning of text, categories and images, duplicates, bad lines."""

from __future__ import annotations

import gzip
import json
import random

import pandas as pd
import pytest

from maf_pipeline.pipelines.ingestion.nodes import ingest_metadata
from maf_pipeline.pipelines.ingestion.stream import IngestionError

from .raw_files import SMALL_BLOCKS

THUMB = "https://images-na.ssl-images-amazon.com/images/I/51Iph04Jy3L._SX38_SY50_CR,0,0,38,50_.jpg"
FULL = "https://images-na.ssl-images-amazon.com/images/I/51Iph04Jy3L.jpg"


def meta_2018(asin: str, **fields) -> dict:
    """A 2018 metadata line with the real files' field set (empty where not given)."""
    record = {
        "category": [],
        "tech1": "",
        "description": [],
        "fit": "",
        "title": "",
        "also_buy": [],
        "image": [],
        "tech2": "",
        "brand": "",
        "feature": [],
        "rank": [],
        "also_view": [],
        "details": {"ASIN: ": asin},
        "main_cat": "",
        "similar_item": "",
        "date": "",
        "price": "",
        "asin": asin,
    }
    record.update(fields)
    return record


def _rows(frame) -> dict[str, dict]:
    return {
        r["item_id"]: {**r, "categories": list(r["categories"]), "image_urls": list(r["image_urls"])}
        for r in frame.to_dict("records")
    }


def test_2018_fields_are_cleaned(write_raw):
    records = [
        meta_2018(
            "0000031887",
            title='<span class="a-size-medium a-color-secondary"',  # real titles are cut mid-tag
            description=["<b>Soft</b> cotton&nbsp;dress &amp; belt.", "", "<br/>Machine   wash"],
            category=["Clothing, Shoes &amp; Jewelry", "Women", "", "Dresses", "Women"],
            image=[THUMB, " "],
            brand="Tom &amp; Co",
            main_cat="Amazon Fashion",
            feature=["100% cotton"],
        ),
        meta_2018(
            "B2",
            title='<span class="a-size-medium a-color-base">Summer Dress</span>',
            description=["size < 5 is fine"],
            imageURL=[THUMB],
            imageURLHighRes=["https://x/hi.jpg"],
        ),
    ]
    frame, report = ingest_metadata(write_raw("meta.json.gz", records), {})
    assert list(frame.columns) == ["item_id", "title", "text", "categories", "image_urls", "brand"]
    rows = _rows(frame)
    assert rows["0000031887"] == {
        "item_id": "0000031887",
        "title": "",
        "text": "Soft cotton dress & belt. Machine wash",
        "categories": ["Clothing, Shoes & Jewelry", "Women", "Dresses"],
        "image_urls": [FULL],
        "brand": "Tom & Co",
    }
    assert rows["B2"]["title"] == "Summer Dress"
    assert rows["B2"]["text"] == "Summer Dress size < 5 is fine"
    assert rows["B2"]["image_urls"] == ["https://x/hi.jpg"]  # the high-resolution list wins
    assert rows["B2"]["categories"] == []
    assert report["format"] == "2018"
    assert report["items_with"] == {"text": 2, "categories": 1, "image_urls": 2, "brand": 1}


def test_options_features_fallback_category_and_thumbnails(write_raw):
    source = write_raw(
        "meta.json",
        [
            meta_2018(
                "B1",
                title="Dress",
                feature=["Cotton"],
                image=[THUMB],
                main_cat='<img src="x" alt="AMAZON FASHION"/>',
            )
        ],
    )
    options = {"include_features": True, "main_category_fallback": True, "upgrade_thumbnails": False}
    row = _rows(ingest_metadata(source, {"metadata": options})[0])["B1"]
    assert row["text"] == "Dress Cotton"
    assert row["categories"] == ["AMAZON FASHION"]
    assert row["image_urls"] == [THUMB]


def test_duplicate_asins_collapse_to_the_most_complete_record(write_raw):
    records = [
        meta_2018("B1", title="First, sparse"),
        meta_2018("B2", title="Only once", category=["A"]),
        meta_2018("B1", title="Complete", description=["d"], category=["A", "B"], image=[THUMB], brand="X"),
        meta_2018("B1", title="Complete too", description=["d"], category=["A"], image=[THUMB], brand="Y"),
        meta_2018("B3", title="Tie one", brand="P"),
        meta_2018("B3", title="Tie two", brand="Q"),
    ]
    frame, report = ingest_metadata(write_raw("meta.json", records), {})
    assert frame["item_id"].tolist() == ["B2", "B1", "B3"]  # in the file order of the kept lines
    rows = _rows(frame)
    assert rows["B1"]["title"] == "Complete"  # most non-empty fields, then the earliest line
    assert rows["B3"]["brand"] == "P"
    assert (report["records"], report["kept"], report["duplicates_collapsed"]) == (6, 3, 3)
    assert frame["item_id"].is_unique
    # the choice does not depend on how the file is cut into blocks
    blocked, _ = ingest_metadata(write_raw("meta2.json", records * 1), SMALL_BLOCKS)
    assert blocked.equals(frame)


def test_2014_python_literal_metadata(write_raw):
    lines = [
        "{'asin': '0000031852', 'title': 'Girls Ballet Tutu &amp; Zebra', 'price': 3.17, "
        "'imUrl': 'http://ecx.images-amazon.com/images/I/51fAmVkTbyL._SY300_.jpg', "
        "'related': {'also_bought': ['B00JHONN1S']}, 'salesRank': {'Sports &amp; Outdoors': 8547}, "
        "'categories': [['Sports & Outdoors', 'Other Sports', 'Dance'], "
        "['Clothing, Shoes & Jewelry', 'Girls', 'Clothing', 'Active', 'Skirts']], 'brand': 'Coxlures', "
        "'description': 'A <i>cute</i> tutu'}",
        "{'asin': 'B0001', 'categories': [['Clothing, Shoes & Jewelry', 'Men']], "
        "'title': \"Men's \\'Classic\\' tee\"}",
        "{'asin': 'B0002', 'title': 'broken' 'categories': [[",  # a malformed literal
    ] + [f"{{'asin': 'C{i}', 'title': 'filler {i}'}}" for i in range(200)]
    frame, report = ingest_metadata(write_raw("meta_2014.json.gz", lines), {})
    rows = _rows(frame)
    assert rows["0000031852"] == {
        "item_id": "0000031852",
        "title": "Girls Ballet Tutu & Zebra",
        "text": "Girls Ballet Tutu & Zebra A cute tutu",
        # every path's labels, in order, each once (category_paths: all, the default)
        "categories": [
            "Sports & Outdoors",
            "Other Sports",
            "Dance",
            "Clothing, Shoes & Jewelry",
            "Girls",
            "Clothing",
            "Active",
            "Skirts",
        ],
        "image_urls": ["http://ecx.images-amazon.com/images/I/51fAmVkTbyL.jpg"],
        "brand": "Coxlures",
    }
    assert rows["B0001"]["title"] == "Men's 'Classic' tee"
    assert rows["B0001"]["categories"] == ["Clothing, Shoes & Jewelry", "Men"]
    assert report["format"] == "2014"
    assert report["skipped"]["malformed"] == 1
    assert report["first_bad_lines"] == [{"line": 3, "reason": "malformed"}]
    assert len(frame) == 202
    longest, _ = ingest_metadata(
        write_raw("meta_2014b.json.gz", lines), {"metadata": {"category_paths": "longest"}}
    )
    assert _rows(longest)["0000031852"]["categories"] == [
        "Clothing, Shoes & Jewelry", "Girls", "Clothing", "Active", "Skirts"
    ]  # fmt: skip


def test_unicode_forms_of_a_label_are_one_label(write_raw):
    """Composed (NFC) and decomposed (NFD) spellings of a label and a title become one form at ingestion."""
    import unicodedata

    nfc, nfd = "Café Wear", unicodedata.normalize("NFD", "Café Wear")
    assert nfc != nfd
    lines = [
        {"asin": "A1", "title": f"Shirt {nfd}", "category": ["Clothing", nfc]},
        {"asin": "A2", "title": f"Shirt {nfc}", "category": ["Clothing", nfd]},
    ]
    frame, _ = ingest_metadata(write_raw("meta_nfd.json.gz", lines), {})
    rows = _rows(frame)
    assert rows["A1"]["categories"] == rows["A2"]["categories"] == ["Clothing", nfc]
    assert rows["A1"]["title"] == rows["A2"]["title"] == f"Shirt {nfc}"


def test_2023_metadata(write_raw):
    record = {
        "main_category": "AMAZON FASHION",
        "title": "Running Shoe",
        "average_rating": 4.5,
        "rating_number": 10,
        "features": ["Rubber sole"],
        "description": ["Light <b>and</b> fast"],
        "price": None,
        "images": [
            {
                "thumb": "https://t/1.jpg",
                "large": "https://l/1.jpg",
                "variant": "MAIN",
                "hi_res": "https://h/1.jpg",
            },
            {"thumb": "https://t/2.jpg", "large": "https://l/2.jpg", "variant": "PT01", "hi_res": None},
        ],
        "videos": [],
        "store": "Acme",
        "categories": ["Clothing, Shoes & Jewelry", "Men", "Shoes"],
        "details": {"Package Dimensions": "1 x 2 x 3"},
        "parent_asin": "B0P1",
        "bought_together": None,
    }
    sparse = {"parent_asin": "B0P2", "title": None, "images": [], "categories": [], "main_category": None}
    frame, report = ingest_metadata(write_raw("meta_2023.json", [record, sparse]), {})
    rows = _rows(frame)
    assert rows["B0P1"] == {
        "item_id": "B0P1",
        "title": "Running Shoe",
        "text": "Running Shoe Light and fast",
        "categories": ["Clothing, Shoes & Jewelry", "Men", "Shoes"],
        "image_urls": ["https://h/1.jpg", "https://l/2.jpg"],
        "brand": "Acme",
    }
    assert rows["B0P2"] == {
        "item_id": "B0P2",
        "title": "",
        "text": "",
        "categories": [],
        "image_urls": [],
        "brand": "",
    }
    assert report["format"] == "2023"


def test_missing_asin_is_counted_and_over_the_threshold_fails(write_raw):
    records = [meta_2018(f"B{i}", title=f"t{i}") for i in range(150)]
    records.insert(20, {**meta_2018("X"), "asin": None})
    records.insert(40, {k: v for k, v in meta_2018("Y").items() if k != "asin"})
    source = write_raw("meta.json", records)
    with pytest.raises(IngestionError, match=r"meta\.json: 2 of 152 lines .*missing_field: 2"):
        ingest_metadata(source, {})
    frame, report = ingest_metadata(source, {"max_bad_fraction": 0.02})
    assert len(frame) == 150
    assert report["first_bad_lines"] == [
        {"line": 21, "reason": "missing_field"},
        {"line": 41, "reason": "missing_field"},
    ]


def test_detection_forcing_and_unknown_metadata(write_raw):
    source = write_raw("meta.json", [meta_2018("B1", title="t")])
    assert ingest_metadata(source, {"format": "2018"})[1]["format_detected"] is None
    with pytest.raises(IngestionError, match=r"unknown metadata format.*'sku'"):
        ingest_metadata(write_raw("m.json", [{"sku": 1, "name": "x"}]), {})
    review = {"reviewerID": "A", "asin": "B", "overall": 5.0, "unixReviewTime": 1}
    with pytest.raises(IngestionError, match="unknown metadata format"):
        ingest_metadata(write_raw("r.json", [review]), {})


def test_truncated_metadata_gzip_fails_with_the_file_name(tmp_path):
    import json

    from maf_pipeline.datasets import RawSource

    data = gzip.compress(
        "".join(json.dumps(meta_2018(f"B{i}")) + "\n" for i in range(3000)).encode(), mtime=0
    )
    (tmp_path / "meta_cut.json.gz").write_bytes(data[:-100])
    with pytest.raises(IngestionError, match=r"meta_cut\.json\.gz: truncated gzip"):
        ingest_metadata(RawSource(str(tmp_path / "meta_cut.json.gz")), {})


def test_semi_join_keeps_exactly_the_reviewed_items(write_raw):
    rng = random.Random(9)
    ids = [f"B{i:03d}" for i in range(300)] + [f"{i:010d}" for i in range(0, 60, 3)]  # all-digit asins too
    records = []
    for _ in range(900):  # repeats of one asin differ in completeness: the collapse must pick the same line
        asin = rng.choice(ids)
        records.append(
            meta_2018(asin, title=f"t{rng.randrange(5)}", category=["A"] * rng.randrange(2), image=[THUMB])
        )
    lines = [json.dumps(r) for r in records]
    lines.insert(400, '{"title": "no asin at all"}')  # a bad line counts the same with or without the join
    reviewed = [*rng.sample(ids, 90), "B_never_in_metadata"]
    interactions = pd.DataFrame({"item_id": reviewed * 2, "user_id": "u"})

    everything, full_report = ingest_metadata(write_raw("meta.json", lines), {})
    for params in ({}, SMALL_BLOCKS):
        joined, report = ingest_metadata(write_raw("meta.json.gz", lines), params, interactions)
        in_file = set(everything["item_id"])
        assert set(joined["item_id"]) == set(reviewed) & in_file  # exactly the reviewed items with metadata
        expected = everything[everything["item_id"].isin(reviewed)].reset_index(drop=True)
        assert joined.reset_index(drop=True).equals(expected)  # same record chosen, same cleaning, same order
        assert (
            report["skipped"] == full_report["skipped"] and report["lines_read"] == full_report["lines_read"]
        )
        assert report["semi_join"]["reviewed_items"] == len(set(reviewed))
        unreviewed = sum(1 for r in records if r["asin"] not in set(reviewed))
        assert report["semi_join"]["records_of_unreviewed_items"] == unreviewed
        assert report["records"] == len(records) - unreviewed


def test_huge_texts_and_long_lists_are_bounded_and_counted(write_raw):
    """A 5 MB description is cut before cleaning; category labels and image URLs are bounded too."""
    lines = [
        {
            "asin": "H1",
            "title": "Huge",
            "description": ["word " * 1_000_000],
            "category": [f"label {i}" for i in range(80)],
            "imageURLHighRes": [
                f"https://images-na.ssl-images-amazon.com/images/I/{i}.jpg" for i in range(40)
            ],
        },
        {"asin": "S1", "title": "Small", "description": ["short"], "category": ["A"]},
    ]
    frame, report = ingest_metadata(write_raw("meta_huge.json.gz", lines), {})
    rows = _rows(frame)
    assert len(rows["H1"]["text"]) <= 20_000 + len("Huge ") and rows["S1"]["text"] == "Small short"
    assert len(rows["H1"]["categories"]) == 50 and len(rows["H1"]["image_urls"]) == 20
    assert report["capped"] == {"description": 1, "categories": 1, "image_urls": 1}
    params = {"metadata": {"max_text_chars": 0, "max_category_labels": 0, "max_image_urls": 0}}
    whole, report = ingest_metadata(write_raw("meta_huge2.json.gz", lines), params)
    assert len(_rows(whole)["H1"]["categories"]) == 80 and report["capped"] == {}


def test_marketing_sentences_are_not_categories(write_raw):
    """Real Gift Cards metadata lists sentences as categories; with max_labels 3 they crowded out the real
    label. They are dropped (by reason, counted), and the real labels stay."""
    from maf_pipeline.pipelines.ingestion.cleaning import label_drop_reason

    rule = {"max_words": 8, "max_chars": 80, "drop_sentences": True, "stop_list": ["Misc"]}
    assert label_drop_reason("No expiration, no fees.", rule) == "sentence"
    assert label_drop_reason("Redeemable online. Not for resale", rule) == "sentence"
    assert label_drop_reason("Use it at any of our stores for anything you want today", rule) == "too_long"
    assert label_drop_reason("misc", rule) == "stop_list"
    for label in ("Gift Cards", "Clothing, Shoes & Jewelry", "Arts, Music & Photography", "3.5 Floppy"):
        assert label_drop_reason(label, rule) is None, label
    lines = [
        {
            "asin": f"G{i}",
            "title": f"Card {i}",
            "category": [
                "Gift Cards",
                "No expiration, no fees.",
                "Redeemable online. Not for resale",
                "Restaurants",
            ],
        }
        for i in range(3)
    ]
    frame, report = ingest_metadata(write_raw("meta_gift.json.gz", lines), {})
    assert _rows(frame)["G0"]["categories"] == ["Gift Cards", "Restaurants"]
    assert report["labels"]["dropped"] == {"sentence": 6} and report["labels"]["kept_distinct"] == 2
    assert report["labels"]["dropped_examples"] == {
        "No expiration, no fees.": 3,
        "Redeemable online. Not for resale": 3,
    }
    off = {"metadata": {"labels": {"max_words": 0, "max_chars": 0, "drop_sentences": False, "stop_list": []}}}
    frame, _ = ingest_metadata(write_raw("meta_gift2.json.gz", lines), off)
    assert len(_rows(frame)["G0"]["categories"]) == 4
