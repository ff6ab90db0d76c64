"""Generate the bundled synthetic sample in the Amazon 2018 format (reviews, metadata, one JPEG per product).

Usage: ``python scripts/make_sample.py [--out data/01_raw/sample] [--seed 2018]``. The output is byte-for-byte
deterministic (fixed seed, gzip with mtime 0 and no file name, stable key order, JPEGs without metadata).

The hidden process that drives the user sequences (a sequential model can learn it, a popularity ranking
cannot):

* The catalogue is a tree ``Clothing, Shoes & Jewelry > {Women, Men, Girls, Boys} > leaf`` with 4-6 leaves per
  gender and ``ITEMS_PER_LEAF`` items per leaf. Item ``j`` of a leaf is its position in the leaf's ordered
  "collection" (its title, brand and image pattern depend on ``j``, its image shape and colour on the leaf).
* Every user has one gender segment and buys (almost) only in it. The leaves of a gender form an outfit cycle
  (e.g. Dresses -> Shoes -> Handbags -> Jewelry -> Tops & Tees -> Swimsuits -> Dresses). After buying in leaf
  ``L`` the next leaf is the next one on the cycle with probability ``P_NEXT_LEAF``, the one after it with
  ``P_SKIP_LEAF``, otherwise any leaf of the gender (a first-order Markov chain over related leaves).
* Within the chosen leaf the user buys, with probability ``P_FOLLOW``, the item that continues the collection:
  position ``(j + 1) mod ITEMS_PER_LEAF`` where ``j`` is the previous item's position; otherwise a uniformly
  random item of the leaf. A few purchases (``P_GIFT``) are random items of another gender (gifts).
* First items are uniform, so item popularity stays nearly flat: each item has only ~3 likely successors,
  which first-order item-to-item transitions learn, while the most popular items carry almost no information.

Timestamps are whole days (the 2018 dumps store midnight UTC) over 2015-2018; consecutive purchases of a
user are at least one day apart so the time order is unambiguous. Real-world dirt is injected on purpose
(malformed and incomplete lines, duplicates, HTML titles, empty fields, missing or corrupt images, ...);
``data/01_raw/sample/README.md`` lists each kind and :func:`generate` returns how many of each it wrote.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("data/01_raw/sample")
REVIEWS_FILE = "Clothing_Shoes_and_Jewelry_sample.json.gz"
META_FILE = "meta_Clothing_Shoes_and_Jewelry_sample.json.gz"
IMAGES_DIR = "images"
SEED = 2018

ROOT = "Clothing, Shoes & Jewelry"
N_USERS = 800
ITEMS_PER_LEAF = 18
N_UNREVIEWED = 8  # metadata entries for products nobody reviews
P_NEXT_LEAF, P_SKIP_LEAF = 0.6, 0.2
P_FOLLOW = 0.65
P_GIFT = 0.03
IMAGE_SIZE = 64
JPEG_QUALITY = 80
LAST_DAY = date(2018, 9, 30)  # the 2018 release ends in October 2018

# (label, shape drawn in the image, base RGB, title noun, style kind) per gender, in outfit-cycle order.
TREE: dict[str, list[tuple[str, str, tuple[int, int, int], str, str]]] = {
    "Women": [
        ("Dresses", "dress", (196, 30, 58), "Summer Dress", "apparel"),
        ("Shoes", "shoe", (181, 134, 84), "Ballet Flats", "shoe"),
        ("Handbags", "bag", (120, 66, 40), "Tote Handbag", "accessory"),
        ("Jewelry", "ring", (212, 175, 55), "Pendant Necklace", "jewelry"),
        ("Tops & Tees", "tee", (255, 127, 80), "Blouse Top", "apparel"),
        ("Swimsuits", "swim", (64, 224, 208), "One-Piece Swimsuit", "apparel"),
    ],
    "Men": [
        ("Shirts", "shirt", (25, 42, 110), "Button-Down Shirt", "apparel"),
        ("Pants", "pants", (195, 176, 145), "Chino Pants", "apparel"),
        ("Shoes", "shoe", (80, 50, 30), "Leather Oxford Shoes", "shoe"),
        ("Watches", "watch", (150, 150, 160), "Analog Watch", "jewelry"),
        ("Jackets & Coats", "jacket", (85, 107, 47), "Field Jacket", "apparel"),
    ],
    "Girls": [
        ("Dresses", "dress", (255, 105, 180), "Party Dress", "apparel"),
        ("Shoes", "shoe", (180, 140, 220), "Sparkle Sneakers", "shoe"),
        ("Backpacks", "backpack", (128, 0, 128), "School Backpack", "accessory"),
        ("Hats & Caps", "hat", (240, 200, 40), "Sun Hat", "accessory"),
    ],
    "Boys": [
        ("T-Shirts", "tee", (30, 100, 220), "Graphic T-Shirt", "apparel"),
        ("Shoes", "shoe", (40, 140, 60), "Running Shoes", "shoe"),
        ("Jackets & Coats", "jacket", (230, 80, 20), "Puffer Jacket", "apparel"),
        ("Backpacks", "backpack", (0, 128, 128), "Sports Backpack", "accessory"),
    ],
}
GENDER_WEIGHTS = {"Women": 0.4, "Men": 0.3, "Girls": 0.15, "Boys": 0.15}
POSSESSIVE = {"Women": "Women's", "Men": "Men's", "Girls": "Girls'", "Boys": "Boys'"}
PATTERNS = ["Solid", "Striped", "Polka Dot", "Plaid"]  # item j has pattern j % 4, in title and image
ADJECTIVES = ["Classic", "Floral", "Vintage", "Casual", "Elegant", "Sporty"]  # collection line j // 3
MATERIALS = {
    "apparel": ["Cotton", "Linen", "Polyester", "Rayon", "Wool Blend", "Jersey Knit"],
    "shoe": ["Leather", "Suede", "Canvas", "Mesh", "Faux Leather", "Rubber"],
    "accessory": ["Canvas", "Nylon", "Faux Leather", "Straw", "Polyester", "Leather"],
    "jewelry": ["Sterling Silver", "Stainless Steel", "Gold Plated", "Rose Gold", "Titanium", "Brass"],
}
BRANDS = [
    "Aurora Lane", "Northwind", "Kestrel & Co", "Maple Row", "Bluefin", "Cedar Peak", "Lumen", "Tidewater",
    "Harbor Thread", "Little Sprout", "Puddle Jumpers", "Ironbark", "Velvet Fox", "Summit Trail",
    "Copper Kettle", "Willow & Wren", "Granite", "Sunny Days",
]  # fmt: skip
SIZES = {
    "apparel": [" X-Small", " Small", " Medium", " Large", " X-Large", " XX-Large"],
    "shoe": [" 6", " 7", " 7.5", " 8", " 8.5", " 9", " 10", " 11", " 12"],
    "accessory": [" One Size"],
    "jewelry": [' 18"', ' 20"', " One Size"],
}
COLOURS = [" Black", " Navy", " Red", " White", " Heather Grey", " Blush", " Olive", " Multi"]
METALS = [" Sterling Silver", " Yellow Gold", " Rose Gold", " Stainless Steel"]
FIRST_NAMES = [
    "Tonya", "John", "Maria", "Denise", "Kevin", "Aisha", "Luis", "Mei", "Sarah", "David", "Priya", "Tom",
    "Grace", "Omar", "Linda", "Chris", "Nina", "Paul", "Emma", "Jorge",
]  # fmt: skip
OPINIONS = [
    ("Five Stars", "Love it! Fits perfectly and looks exactly like the picture."),
    ("Great quality", "Great quality for the price. The {noun} is well made and the {material} feels nice."),
    ("Perfect", "Perfect {noun}. I bought it to go with my last purchase and it matches well."),
    ("Runs small", "Runs a little small, order a size up. Otherwise a cute {noun}."),
    ("Four Stars", "Nice {noun}, color is slightly darker than shown."),
    ("Not as pictured", "The {material} is thinner than expected and the stitching came loose."),
    ("Returned it", "Did not fit well, returned it."),
]
RATINGS = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
RATING_P = np.array([0.6, 0.2, 0.1, 0.05, 0.05])


@dataclass(frozen=True)
class Item:
    """One product: its leaf (gender, label, shape, colour, noun, style kind) and its collection position."""

    asin: str
    gender: str
    leaf: int  # index into TREE[gender]
    pos: int  # position j in the leaf's collection; -1 for never-reviewed extras

    @property
    def spec(self) -> tuple[str, str, tuple[int, int, int], str, str]:
        return TREE[self.gender][self.leaf]


User = tuple[str, str, list[tuple[Item, int]]]  # (reviewerID, gender, [(item, day number)])

# ----------------------------------------------------------------------------------------------- ids


def _rng(seed: int, part: int) -> np.random.Generator:
    """An independent generator per component, so changing one part does not reshuffle the others."""
    return np.random.default_rng([seed, part])


def _asins(rng: np.random.Generator, n: int, n_digit: int) -> list[str]:
    """Distinct ASINs: mostly ``B0`` + 8 alphanumerics, ``n_digit`` of them all-digit with leading zeros."""
    alphabet = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        if len(out) < n_digit:
            asin = "00" + "".join(rng.choice(alphabet[:10], 8))  # ISBN-like, e.g. 0000031887
        else:
            asin = "B0" + "".join(rng.choice(alphabet, 8))
        if asin not in seen:
            seen.add(asin)
            out.append(asin)
    return out


def _reviewer_ids(rng: np.random.Generator, n: int) -> list[str]:
    """Distinct reviewer ids shaped like ``A1RPTVW5VEOSI`` (A + 12-13 uppercase alphanumerics)."""
    alphabet = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        rid = "A" + "".join(rng.choice(alphabet, int(rng.integers(12, 14))))
        if rid not in seen:
            seen.add(rid)
            out.append(rid)
    return out


def _image_urls(rng: np.random.Generator, k: int) -> list[str]:
    """Thumbnail URLs with the ``._SX38_SY50_CR,0,0,38,50_`` size suffix, as in the 2018 metadata."""
    alphabet = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))
    urls = []
    for _ in range(k):
        body = "".join(rng.choice(alphabet, 8))
        if rng.random() < 0.15:
            body = body[:4] + "%2B" + body[4:]
        image_id = f"{rng.choice(list('4567'))}1{body}L"
        urls.append(
            f"https://images-na.ssl-images-amazon.com/images/I/{image_id}._SX38_SY50_CR,0,0,38,50_.jpg"
        )
    return urls


# ------------------------------------------------------------------------------------------ catalogue


def make_items(seed: int) -> tuple[list[Item], list[Item]]:
    """The reviewed catalogue (every leaf x collection position) and the never-reviewed extras."""
    rng = _rng(seed, 1)
    slots = [
        (g, li, j) for g, leaves in TREE.items() for li in range(len(leaves)) for j in range(ITEMS_PER_LEAF)
    ]
    asins = _asins(rng, len(slots) + N_UNREVIEWED, n_digit=6)
    order = rng.permutation(len(slots))  # so all-digit asins land on random leaves
    items = [Item(asins[k], *slots[o]) for k, o in enumerate(order)]
    items.sort(key=lambda it: (list(TREE).index(it.gender), it.leaf, it.pos))
    extras = []
    for k in range(N_UNREVIEWED):
        g = list(TREE)[k % len(TREE)]
        extras.append(Item(asins[len(slots) + k], g, int(rng.integers(len(TREE[g]))), -1))
    return items, extras


def _title(item: Item) -> str:
    """A title with gender, collection line, pattern, leaf noun and material (the text modality's signal)."""
    _, _, _, noun, kind = item.spec
    pos = max(item.pos, 0)
    adj, pattern = ADJECTIVES[(pos // 3) % len(ADJECTIVES)], PATTERNS[pos % len(PATTERNS)]
    material = MATERIALS[kind][(pos + item.leaf) % len(MATERIALS[kind])]
    return f"{POSSESSIVE[item.gender]} {adj} {pattern} {noun}, {material}"


def _brand(item: Item) -> str:
    """A brand that depends on the leaf and the collection line."""
    return BRANDS[(sum(map(ord, item.gender)) + 3 * item.leaf + max(item.pos, 0) // 6) % len(BRANDS)]


def _description(rng: np.random.Generator, item: Item) -> list[str]:
    """A list of strings with some HTML and entities, like the 2018 dumps."""
    label, _, _, _, kind = item.spec
    material = MATERIALS[kind][(max(item.pos, 0) + item.leaf) % len(MATERIALS[kind])].lower()
    lead = f"<b>{_title(item)}</b><br>From {_brand(item)}: {label.lower()} for every day, in soft {material}."
    care = {
        "apparel": "Machine wash cold &amp; tumble dry low.",
        "shoe": "Cushioned insole &amp; non-slip rubber sole.",
        "accessory": "Zip closure &amp; interior pocket.",
        "jewelry": "Hypoallergenic &amp; nickel free; comes in a gift box.",
    }[kind]
    extra = [
        f"Pairs well with the rest of the {ADJECTIVES[(max(item.pos, 0) // 3) % 6].lower()} collection.",
        f"<ul><li>{material}</li><li>Imported</li></ul>",
        "",
    ]
    return [lead, care, *extra[: int(rng.integers(1, 4))]]


def _draw_image(rng: np.random.Generator, item: Item) -> bytes:
    """A small JPEG: the leaf's shape in its base colour (jittered), the item's pattern, plus pixel noise."""
    _, shape, rgb, _, _ = item.spec
    s = IMAGE_SIZE
    mask = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(mask)
    dx, dy = (int(v) for v in rng.integers(-3, 4, 2))
    sc = float(rng.uniform(0.9, 1.1))

    def p(x: float, y: float) -> tuple[float, float]:
        return (s / 2 + (x - 32) * sc + dx, s / 2 + (y - 32) * sc + dy)

    if shape == "dress":
        d.polygon([p(26, 8), p(38, 8), p(40, 24), p(52, 56), p(12, 56), p(24, 24)], fill=255)
    elif shape in ("tee", "shirt", "jacket"):
        d.polygon([p(22, 10), p(42, 10), p(56, 20), p(50, 28), p(44, 24), p(44, 56), p(20, 56), p(20, 24),
                   p(14, 28), p(8, 20)], fill=255)  # fmt: skip
        if shape != "tee":
            d.line([p(32, 10), p(32, 56)], fill=0, width=2)  # placket / zip
    elif shape == "pants":
        d.polygon([p(20, 8), p(44, 8), p(48, 58), p(36, 58), p(32, 26), p(28, 58), p(16, 58)], fill=255)
    elif shape == "shoe":
        d.polygon([p(8, 44), p(10, 30), p(24, 32), p(40, 40), p(56, 44), p(56, 52), p(8, 52)], fill=255)
    elif shape == "bag":
        d.rectangle([p(14, 26), p(50, 56)], fill=255)
        d.arc([p(22, 10), p(42, 40)], 180, 360, fill=255, width=4)
    elif shape == "backpack":
        d.rounded_rectangle([p(16, 10), p(48, 58)], radius=8, fill=255)
        d.rectangle([p(22, 38), p(42, 52)], fill=0)
        d.rectangle([p(24, 40), p(40, 50)], fill=255)
    elif shape == "ring":
        d.ellipse([p(14, 14), p(50, 50)], fill=255)
        d.ellipse([p(22, 22), p(42, 42)], fill=0)
        d.ellipse([p(28, 6), p(36, 16)], fill=255)
    elif shape == "watch":
        d.rectangle([p(26, 4), p(38, 60)], fill=255)
        d.ellipse([p(18, 20), p(46, 44)], fill=255)
    elif shape == "swim":
        d.polygon(
            [p(18, 12), p(30, 12), p(32, 30), p(46, 12), p(46, 24), p(40, 52), p(24, 52), p(18, 24)], fill=255
        )
    elif shape == "hat":
        d.pieslice([p(16, 14), p(48, 46)], 180, 360, fill=255)
        d.ellipse([p(6, 26), p(58, 38)], fill=255)
    yy, xx = np.mgrid[0:s, 0:s]
    pattern = max(item.pos, 0) % len(PATTERNS)
    shade = np.ones((s, s))
    if pattern == 1:
        shade = np.where((yy // 4) % 2 == 0, 1.0, 0.55)
    elif pattern == 2:
        shade = np.where(((xx % 8 - 4) ** 2 + (yy % 8 - 4) ** 2) < 5, 0.45, 1.0)
    elif pattern == 3:
        shade = np.where(((xx // 6) + (yy // 6)) % 2 == 0, 1.0, 0.65)
    colour = np.clip(np.array(rgb, float) + rng.normal(0, 14, 3), 0, 255)
    fg = shade[..., None] * colour[None, None, :]
    bg = np.full((s, s, 3), 245.0) - rng.uniform(0, 12, 3)
    m = (np.asarray(mask, float) / 255.0)[..., None]
    arr = np.clip(m * fg + (1 - m) * bg + rng.normal(0, 5, (s, s, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ sequences


def make_sequences(seed: int, items: list[Item]) -> list[User]:
    """Per user: (reviewerID, gender, [(item, day)]) driven by the hidden process in the module docstring."""
    rng = _rng(seed, 2)
    by_leaf = {(it.gender, it.leaf, it.pos): it for it in items}
    genders = list(TREE)
    weights = np.array([GENDER_WEIGHTS[g] for g in genders])
    ids = _reviewer_ids(rng, N_USERS)
    day0 = date(1970, 1, 1)
    start_lo, start_hi = (date(2015, 3, 1) - day0).days, (date(2017, 10, 31) - day0).days
    last = (LAST_DAY - day0).days
    users = []
    for rid in ids:
        g = genders[rng.choice(len(genders), p=weights)]
        n_leaves = len(TREE[g])
        length = int(rng.integers(7, 23))
        day = int(rng.integers(start_lo, start_hi))
        if rng.random() < 0.06:  # a few users live entirely outside the 2016-2017 window
            day = (date(2015, 1, 5) - day0).days if rng.random() < 0.5 else (date(2018, 1, 5) - day0).days
            day += int(rng.integers(0, 60))
            length = int(rng.integers(5, 9))
        leaf, pos = int(rng.integers(n_leaves)), int(rng.integers(ITEMS_PER_LEAF))
        seq = [(by_leaf[(g, leaf, pos)], day)]
        for _ in range(length - 1):
            day += 1 + int(rng.exponential(11.0))
            if day > last:
                break
            if rng.random() < P_GIFT:  # a gift from another gender's catalogue, outside the chain
                og = genders[(genders.index(g) + int(rng.integers(1, len(genders)))) % len(genders)]
                gift = by_leaf[(og, int(rng.integers(len(TREE[og]))), int(rng.integers(ITEMS_PER_LEAF)))]
                seq.append((gift, day))
                continue
            u = rng.random()  # next leaf: Markov chain over the gender's outfit cycle
            step = (
                1 if u < P_NEXT_LEAF else 2 if u < P_NEXT_LEAF + P_SKIP_LEAF else int(rng.integers(n_leaves))
            )
            leaf = (leaf + step) % n_leaves
            # next item: continue the collection, or any item of the leaf
            pos = (pos + 1) % ITEMS_PER_LEAF if rng.random() < P_FOLLOW else int(rng.integers(ITEMS_PER_LEAF))
            seq.append((by_leaf[(g, leaf, pos)], day))
        users.append((rid, g, seq))
    return users


# ------------------------------------------------------------------------------------------- reviews


def _review_time(day: int) -> tuple[str, int]:
    """``reviewTime`` ("01 5, 2016") and ``unixReviewTime`` (midnight UTC) for a day number."""
    ts = day * 86400
    d = datetime.fromtimestamp(ts, UTC)
    return f"{d.month:02d} {d.day}, {d.year}", ts


def _review(rng: np.random.Generator, rid: str, name: str, item: Item, day: int) -> dict[str, Any]:
    """One review record (2018 field names); ``style`` and ``vote`` are added later, by file position."""
    _, _, _, noun, kind = item.spec
    summary, text = OPINIONS[int(rng.choice(len(OPINIONS), p=[0.3, 0.2, 0.15, 0.1, 0.1, 0.1, 0.05]))]
    material = MATERIALS[kind][(max(item.pos, 0) + item.leaf) % len(MATERIALS[kind])].lower()
    review_time, unix = _review_time(day)
    return {
        "overall": float(rng.choice(RATINGS, p=RATING_P)),
        "verified": bool(rng.random() < 0.9),
        "reviewTime": review_time,
        "reviewerID": rid,
        "asin": item.asin,
        "reviewerName": name,
        "reviewText": text.format(noun=noun.lower(), material=material),
        "summary": summary,
        "unixReviewTime": unix,
    }


def _style(rng: np.random.Generator, item: Item, late: bool) -> dict[str, str]:
    """The product-variant dict; jewelry only gets ``Metal Type:`` / ``Length:`` sub-keys late in the file."""
    kind = item.spec[4]
    if kind == "jewelry" and late:
        return {"Metal Type:": str(rng.choice(METALS)), "Length:": str(rng.choice(SIZES["jewelry"]))}
    if kind in ("accessory", "jewelry"):
        return {"Color:": str(rng.choice(COLOURS))}
    return {"Size:": str(rng.choice(SIZES[kind])), "Color:": str(rng.choice(COLOURS))}


def _vote(rng: np.random.Generator) -> str:
    """Helpful votes as a string; large ones with a thousands separator ("1,234")."""
    if rng.random() < 0.08:
        return f"{int(rng.integers(1000, 4000)):,}"
    return str(int(rng.geometric(0.35)) + 1)


def _ordered(rec: dict[str, Any], *, alt_order: bool, photo: list[str] | None) -> dict[str, Any]:
    """Apply one of the key orders seen in the real dumps (some lines put reviewerID first, some an image)."""
    if alt_order:
        keys = ["reviewerID", "asin", "reviewerName", "verified", "reviewText", "overall", "reviewTime",
                "summary", "unixReviewTime"]  # fmt: skip
        return {k: rec[k] for k in keys if k in rec}
    keys = ["overall", "vote", "verified", "reviewTime", "reviewerID", "asin", "style", "reviewerName",
            "reviewText", "summary", "unixReviewTime"]  # fmt: skip
    out = {"image": photo} if photo else {}
    out.update({k: rec[k] for k in keys if k in rec})
    return out


def make_review_lines(seed: int, users: list[User], items: list[Item]) -> tuple[list[str], dict[str, int]]:
    """All review lines (grouped by product, newest first, as in the dumps) with dirt, and the dirt counts."""
    rng = _rng(seed, 3)
    names = {}
    for rid, _, _ in users:
        names[rid] = (
            "Amazon Customer"
            if rng.random() < 0.06
            else f"{rng.choice(FIRST_NAMES)} {chr(65 + int(rng.integers(26)))}."
        )
    kinds = ["duplicate_pairs_later", "duplicate_pairs_same_time", "missing_review_text"]
    counts = dict.fromkeys([*kinds, "vote_with_thousands_separator"], 0)
    recs: dict[str, list[dict[str, Any]]] = {it.asin: [] for it in items}
    by_asin = {it.asin: it for it in items}
    for rid, _, seq in users:
        for item, day in seq:
            recs[item.asin].append(_review(rng, rid, names[rid], item, day))
        # real-world duplicates: the same (user, item) reviewed again later, or twice the same day
        if rng.random() < 0.12:
            item, day = seq[int(rng.integers(len(seq)))]
            later = min(day + int(rng.integers(20, 300)), (LAST_DAY - date(1970, 1, 1)).days)
            recs[item.asin].append(_review(rng, rid, names[rid], item, later))
            counts["duplicate_pairs_later"] += 1
        if rng.random() < 0.04:
            item, day = seq[int(rng.integers(len(seq)))]
            recs[item.asin].append(_review(rng, rid, names[rid], item, day))
            counts["duplicate_pairs_same_time"] += 1
    group_order = [items[k].asin for k in rng.permutation(len(items))]
    flat = [r for a in group_order for r in sorted(recs[a], key=lambda r: -r["unixReviewTime"])]
    n = len(flat)
    lines: list[str] = []
    for i, rec in enumerate(flat):
        item = by_asin[rec["asin"]]
        if i >= 0.35 * n and rng.random() < 0.9:  # the style key first appears a third into the file
            rec["style"] = _style(rng, item, late=i >= 0.8 * n)
        if rng.random() < 0.1:
            rec["vote"] = _vote(rng)
            counts["vote_with_thousands_separator"] += "," in rec["vote"]
        if rng.random() < 0.005:
            del rec["reviewText"]
            counts["missing_review_text"] += 1
        photo = None
        if rng.random() < 0.015:
            photo = [u.replace("._SX38_SY50_CR,0,0,38,50_", "._SY88") for u in _image_urls(rng, 1)]
        lines.append(json.dumps(_ordered(rec, alt_order=rng.random() < 0.02, photo=photo)))
    # bad lines at fixed spots: truncated, garbage, and valid JSON lacking a required field (extra reviews,
    # so skipping them loses nothing the hidden process produced)
    bad: list[tuple[str, str]] = []
    for k in range(3):
        src = lines[int(rng.integers(n))]
        bad.append(("malformed", src[: int(len(src) * (0.3 + 0.2 * k))]))
    bad += [("malformed", "\x00\x00\x00 garbage \x7f"), ("malformed", "<!DOCTYPE html><body>503</body>")]
    for field in ("reviewerID", "asin", "unixReviewTime"):
        for _ in range(2):
            rid = users[int(rng.integers(len(users)))][0]
            item, day = items[int(rng.integers(len(items)))], 17000 + int(rng.integers(700))
            rec = _review(rng, rid, names[rid], item, day)
            del rec[field]
            bad.append((f"missing_{field}", json.dumps(_ordered(rec, alt_order=False, photo=None))))
    spots = sorted(rng.choice(np.arange(1, n), len(bad), replace=False).tolist(), reverse=True)
    for (kind, line), spot in zip(bad, spots, strict=True):
        lines.insert(spot, line)
        counts[kind] = counts.get(kind, 0) + 1
    return lines, counts


# ------------------------------------------------------------------------------------------ metadata


def _meta(rng: np.random.Generator, item: Item, all_asins: list[str]) -> dict[str, Any]:
    """One full metadata record with the 2018 key order (``image`` variant)."""
    label, _, _, _, kind = item.spec
    rank = int(rng.integers(1000, 900000))
    return {
        "category": [ROOT, item.gender, label],
        "tech1": "",
        "description": _description(rng, item),
        "fit": "",
        "title": _title(item),
        "also_buy": [str(a) for a in rng.choice(all_asins, int(rng.integers(0, 6)), replace=False)],
        "image": _image_urls(rng, int(rng.integers(1, 5))),
        "tech2": "",
        "brand": _brand(item),
        "feature": [MATERIALS[kind][(max(item.pos, 0) + item.leaf) % len(MATERIALS[kind])], "Imported"],
        "rank": f"#{rank:,} in Clothing, Shoes & Jewelry (" if rng.random() < 0.8 else [],
        "also_view": [str(a) for a in rng.choice(all_asins, int(rng.integers(0, 8)), replace=False)],
        "details": {"Shipping Weight:": f"{int(rng.integers(2, 40))} ounces", "ASIN: ": item.asin},
        "main_cat": "Amazon Fashion" if kind != "jewelry" else "All Beauty",
        "similar_item": "",
        "date": "",
        "price": f"${rng.uniform(8, 80):.2f}" if rng.random() < 0.85 else "",
        "asin": item.asin,
    }


def make_meta_lines(
    seed: int, items: list[Item], extras: list[Item]
) -> tuple[list[str], dict[str, int], set[str]]:
    """Metadata lines (one per product, plus duplicates) with dirt, the dirt counts, asins without image."""
    rng = _rng(seed, 4)
    everything = items + extras
    all_asins = [it.asin for it in everything]
    recs = [_meta(rng, it, all_asins) for it in everything]
    pick = iter(rng.permutation(len(items)).tolist())  # disjoint dirty subsets of the reviewed items
    counts: dict[str, int] = {"never_reviewed": len(extras)}
    for _ in range(8):
        recs[next(pick)]["category"] = []
    counts["empty_category"] = 8
    for _ in range(8):
        recs[next(pick)]["description"] = []
    for _ in range(2):
        del recs[next(pick)]["description"]
    counts["missing_description"] = 10
    no_image = set()
    for _ in range(8):
        k = next(pick)
        recs[k]["image"] = []
        no_image.add(recs[k]["asin"])
    counts["no_image"] = 8
    for _ in range(3):  # title wrapped in a span
        k = next(pick)
        recs[k]["title"] = f'<span class="a-size-medium a-color-base">{recs[k]["title"]}</span>'
    for _ in range(3):  # title lost: only the fragment survived scraping
        recs[next(pick)]["title"] = '<span class="a-size-medium a-color-secondary"'
    counts["html_title"] = 6
    lines = [json.dumps(recs[k]) for k in rng.permutation(len(recs))]
    # the same asin on several lines, as in the dumps (which repeat a whole block further down): exact repeats
    # and poorer copies (no description, image, rank or price) at the end, and poorer copies at the start
    head, tail = [], []
    for variant in ["exact"] * 6 + ["poorer_after"] * 6 + ["poorer_before"] * 3:
        rec = dict(recs[next(pick)])
        if variant != "exact":
            rec.update(description=[], image=[], also_buy=[], also_view=[], rank=[], price="")
        (head if variant == "poorer_before" else tail).append(json.dumps(rec))
    counts["duplicate_asin_lines"] = len(head) + len(tail)
    return head + lines + tail, counts, no_image


# -------------------------------------------------------------------------------------------- writing


def _write_gz(path: Path, lines: list[str]) -> None:
    """Gzip JSON lines deterministically: mtime 0, no file name in the header, fixed level."""
    raw = ("\n".join(lines) + "\n").encode("utf-8")
    with path.open("wb") as fh, gzip.GzipFile("", "wb", compresslevel=9, fileobj=fh, mtime=0) as gz:
        gz.write(raw)


def generate(out_dir: Path | str = DEFAULT_OUT, seed: int = SEED) -> dict[str, int]:
    """Write reviews, metadata and images into ``out_dir``; return counts of users, items, lines and dirt."""
    out = Path(out_dir)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    items, extras = make_items(seed)
    users = make_sequences(seed, items)
    review_lines, review_counts = make_review_lines(seed, users, items)
    meta_lines, meta_counts, no_image = make_meta_lines(seed, items, extras)
    _write_gz(out / REVIEWS_FILE, review_lines)
    _write_gz(out / META_FILE, meta_lines)

    rng = _rng(seed, 5)
    with_image = [it for it in items + extras if it.asin not in no_image]
    corrupt = with_image[int(rng.integers(len(with_image)))].asin
    for old in (out / IMAGES_DIR).glob("*.jpg"):  # stale images of another seed
        old.unlink()
    for it in tqdm(with_image, desc="images", disable=None):
        if it.asin == corrupt:  # a download that went wrong: a JPEG header followed by junk
            data = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + rng.bytes(300)
        else:
            data = _draw_image(rng, it)
        (out / IMAGES_DIR / f"{it.asin}.jpg").write_bytes(data)
    summary = {
        "users": len(users),
        "items": len(items) + len(extras),
        "interactions": sum(len(s) for _, _, s in users),
        "review_lines": len(review_lines),
        "meta_lines": len(meta_lines),
        "images": len(with_image),
        "corrupt_image": 1,
        **review_counts,
        **meta_counts,
    }
    logger.info("Wrote the sample to %s: %s", out, summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    generate(args.out, args.seed)


if __name__ == "__main__":
    main()
