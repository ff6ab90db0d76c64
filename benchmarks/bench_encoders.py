"""Throughput of the default feature encoders on this machine: VGG16 fc7 images/s and BERT / MiniLM texts/s.

Runs the real ``encode_images`` / ``encode_texts`` nodes (cache off) on synthetic inputs: product-photo-sized
JPEGs and title + description texts of Amazon-like lengths. Weights do not change the speed, so missing
ImageNet / BERT weights are replaced by random ones (``weights: none``); MiniLM is the packaged fallback.

    .venv/bin/python benchmarks/bench_encoders.py [--images 64] [--texts 256] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

from maf_pipeline.parameters import filled
from maf_pipeline.pipelines.features.nodes import encode_images, encode_texts
from maf_pipeline.pipelines.features.stores import FeatureCache, ImageFolder

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = (
    "women men leather cotton soft comfortable fit size small medium large boots shoes dress shirt "
    "jacket sleeve waist casual running sole rubber heel zipper pocket wash machine imported brand "
    "quality color black white blue red gift jewelry silver gold necklace earrings ring watch band "
    "strap lightweight"
)
WORDS = VOCABULARY.split()


def _params() -> dict:
    features = yaml.safe_load((ROOT / "conf" / "base" / "parameters_features.yml").read_text())["features"]
    return filled("features", features)  # complete blocks, as nodes receive them


def _images(folder: ImageFolder, n: int, rng: np.random.Generator) -> list[str]:
    ids = [f"IMG{i:05d}" for i in range(n)]
    for item_id in ids:
        h, w = rng.integers(400, 900, size=2)
        pixels = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        img = Image.fromarray(pixels).resize((int(w), int(h)), Image.BILINEAR)  # smooth, photo-like
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        folder.put(item_id, buf.getvalue(), "jpg")
    return ids


def _texts(n: int, rng: np.random.Generator) -> pd.DataFrame:
    lengths = np.clip(rng.lognormal(mean=4.3, sigma=0.7, size=n), 8, 600).astype(int)  # median ~75 words
    texts = [" ".join(rng.choice(WORDS, size=k)) for k in lengths]
    return pd.DataFrame({"item_id": [f"T{i:05d}" for i in range(n)], "title": texts, "text": texts})


def _index(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"item_idx": range(1, len(ids) + 1), "item_id": ids})


def main() -> None:
    """Measure and print items/s for each default encoder (model load time excluded)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", help="fp32 | fp16 | bf16 (autocast)")
    parser.add_argument("--batch-size", type=int, help="default: the parameters' batch_size")
    parser.add_argument("--num-workers", type=int, help="image decoding workers (default: the parameters')")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rng = np.random.default_rng(0)
    base = _params()
    no_cache = filled("features.cache", {"enabled": False})
    results = {
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "load_average": os.getloadavg()[0],
        "precision": args.precision,
    }

    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(str(Path(tmp) / "cache"))
        if args.images:
            store = ImageFolder(str(Path(tmp) / "images"), writable=True)
            ids = _images(store, args.images, rng)
            availability = pd.DataFrame({"item_id": ids, "has_image": True})
            p = {**base["image_encoder"], "device": args.device, "precision": args.precision}
            if args.batch_size:
                p["batch_size"] = args.batch_size
            if args.num_workers is not None:
                p["num_workers"] = args.num_workers
            if p["weights"] == "auto":
                from maf_pipeline.pipelines.features.encoders import resolve_image_weights

                if resolve_image_weights(p).source == "random":
                    p["weights"] = "none"
            out = encode_images(_index(ids), availability, store, cache, p, no_cache, 0)["__metadata__"]
            results["vgg16_fc7"] = {
                "items_per_s": out["items_per_s"],
                "n": out["encoded"],
                "weights": out["weights"],
            }
        if args.texts:
            items = _texts(args.texts, rng)
            ids = items["item_id"].tolist()
            for label, weights in (("text_default", "auto"), ("bert_base_random", "none")):
                p = {**copy.deepcopy(base["text_encoder"]), "weights": weights}
                p.update(device=args.device, precision=args.precision)
                if args.batch_size:
                    p["batch_size"] = args.batch_size
                start = time.perf_counter()
                out = encode_texts(_index(ids), items, cache, p, no_cache, 0)["__metadata__"]
                results[label] = {
                    "encoder": out["encoder"],
                    "items_per_s": out["items_per_s"],
                    "n": out["encoded"],
                    "max_tokens": out["settings"]["max_tokens"],
                    "wall_s_incl_load": round(time.perf_counter() - start, 1),
                }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
