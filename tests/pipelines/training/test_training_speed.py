"""Training speed paths (issue 10), importable without Kedro so that the GPU check runs them: no host sync
in the step, host-prepared batches, loss / precision / compile options through the trainer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from maf_pipeline.models import build_model
from maf_pipeline.parameters import filled
from maf_pipeline.training import (
    configure_training_loss,
    host_batch,
    to_device,
    training_windows,
)
from tests.models.synthetic import make_features, make_sequences, small_training, tiny_maf_params, train_tiny


def training_params(tmp_path: Path, **overrides: object) -> dict:
    return small_training(tmp_path / "checkpoints", **{"device": "auto", **overrides})


run = train_tiny


SYNC_OPS = {"nonzero", "_local_scalar_dense", "_unique2", "unique_dim", "unique_consecutive", "masked_select"}


class OpRecorder(TorchDispatchMode):
    """Records aten ops that force a device-to-host sync on CUDA (data-dependent shapes, .item())."""

    def __init__(self) -> None:
        super().__init__()
        self.syncing: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        bool_index = name.startswith("index") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for a in args
            if isinstance(a, list | tuple)
            for i in a
        )
        if name in SYNC_OPS or bool_index:
            self.syncing.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("arch", ["maf", "sasrec", "sasrecf", "fdsa", "bert4rec"])
@pytest.mark.parametrize("loss", ["full", "chunked", "sampled_softmax", "full_masked", "chunked_masked"])
def test_training_step_has_no_host_sync_ops(arch: str, loss: str) -> None:
    """Forward, loss, backward and clipping on a host-prepared batch run no op that syncs on CUDA. (Adam's
    step reads its step counter with .item(), but that counter lives on the host, also on CUDA; the CUDA
    test below checks the whole step with fused Adam.)"""
    data, features = make_sequences(), make_features(30)
    feats = {k: v["features"] for k, v in features.items()}
    params = tiny_maf_params() if arch == "maf" else {"architecture": arch, "d": 16, "n_heads": 2}
    torch.manual_seed(0)
    model = build_model(arch, 30, 6, params, feats)
    inputs, targets = training_windows(list(data["train_sequences"]["items"]), 6)
    masked = loss.endswith("_masked")
    if masked and arch == "bert4rec":
        pytest.skip("BERT4Rec has its own training step: loss_mask_history is refused (tested elsewhere)")
    kind, chunk = "sampled_softmax" if loss == "sampled_softmax" else "full", 8 if "chunked" in loss else None
    p = filled("training", {"loss": kind, "num_negatives": 7, "negative_sampling": "popularity",
                            "loss_mask_history": masked, "loss_chunk_size": chunk})  # fmt: skip
    configure_training_loss(model, targets, p)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    lengths = (inputs > 0).sum(axis=1)
    host = host_batch(
        inputs, targets, lengths, np.arange(8), 30, bool(getattr(model, "modalities", ())), masked
    )
    batch = to_device(model.prepare_batch(host), torch.device("cpu"))
    with OpRecorder() as rec:
        parts = model.training_step(batch)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    assert rec.syncing == []
    # and the host-prepared batch gives the loss of the device fallback (nonzero / torch.unique)
    model.eval()
    bare = {"item_seq": batch["item_seq"], "target_seq": batch["target_seq"]}
    if masked:  # the earlier items come from the host only
        with pytest.raises(ValueError, match="has no 'history'"):
            model.training_step(bare)
        return
    with torch.no_grad():
        fallback = model.training_step(bare)
        prepared = model.training_step(batch)
    if loss != "sampled_softmax" and arch != "bert4rec":  # BERT4Rec's fallback draws a new mask
        torch.testing.assert_close(prepared["loss"], fallback["loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not present: sync debug mode needs a GPU")
@pytest.mark.parametrize("arch", ["maf", "bert4rec"])
def test_training_epoch_has_no_host_sync_on_cuda(arch: str, tmp_path: Path) -> None:
    data, features = make_sequences(), make_features(30)
    feats = {k: v["features"] for k, v in features.items()}
    device = torch.device("cuda")
    params = tiny_maf_params() if arch == "maf" else {"architecture": arch, "d": 16, "n_heads": 2}
    model = build_model(arch, 30, 6, params, feats).to(device)
    inputs, targets = training_windows(list(data["train_sequences"]["items"]), 6)
    configure_training_loss(model, targets, filled("training", {"loss": "full", "loss_chunk_size": 8}))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    lengths = (inputs > 0).sum(axis=1)
    with_items = arch == "maf"
    batches = [
        model.prepare_batch(host_batch(inputs, targets, lengths, np.arange(i, i + 8), 30, with_items))
        for i in (0, 8)
    ]
    for b in batches:  # warm-up (lazy CUDA init, allocator)
        model.training_step(to_device(b, device))["loss"].backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for b in batches:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                parts = model.training_step(to_device(b, device))
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize(
    "options",
    [
        {"loss": "sampled_softmax", "num_negatives": 8, "negative_sampling": "uniform"},
        {"loss": "sampled_softmax", "num_negatives": 8, "negative_sampling": "popularity"},
        {"loss_chunk_size": 7, "bf16": True},
        {"compile": "eager", "batch_size": 5},
    ],
)
def test_loss_precision_and_compile_options_train_through_the_node(tmp_path: Path, options: dict) -> None:
    data, features = make_sequences(), make_features(30)
    params = training_params(tmp_path, epochs=3, **options)
    _, history = run(data, features, tiny_maf_params(), params)
    losses = [e["loss"]["id"] for e in history["epochs"]]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_chunked_loss_trains_like_the_plain_loss(tmp_path: Path) -> None:
    data, features = make_sequences(), make_features(30)
    model_params = tiny_maf_params(dropout=0.0, attn_dropout=0.0)
    plain, hist_plain = run(data, features, model_params, training_params(tmp_path / "a", epochs=2))
    chunked, hist_chunked = run(
        data, features, model_params, training_params(tmp_path / "b", epochs=2, loss_chunk_size=7)
    )
    for a, b in zip(hist_plain["epochs"], hist_chunked["epochs"], strict=True):
        assert a["loss"]["id"] == pytest.approx(b["loss"]["id"], rel=1e-4)
    for key, value in plain.items():
        if key != "__metadata__":
            torch.testing.assert_close(value, chunked[key], rtol=1e-3, atol=1e-4)


def _ddp_worker(rank: int, world: int, port: int, out: str, data: dict, features: dict, params: dict) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    try:
        artifact, history = run(data, features, tiny_maf_params(dropout=0.0, attn_dropout=0.0), params)
        torch.save({"artifact": artifact, "history": history}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_data_parallel_on_two_gloo_processes_matches_one_process(tmp_path: Path) -> None:
    """Two CPU ranks (gloo) split every batch and the validation users; rank 0 writes the checkpoints; the
    weights and validation metrics match one process on the same batches (dropout off), within tolerance."""
    import socket

    import torch.multiprocessing as mp

    data, features = make_sequences(num_users=20, seed=5), make_features(30)
    params = training_params(tmp_path, epochs=3, batch_size=6, device="cpu", keep_checkpoint=True,
                             checkpoint_every=1)  # fmt: skip
    single, hist_single = run(data, features, tiny_maf_params(dropout=0.0, attn_dropout=0.0), params)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ddp_params = {**params, "checkpoint_dir": str(tmp_path / "ddp_ckpt")}
    out = str(tmp_path / "ddp")
    mp.spawn(_ddp_worker, args=(2, port, out, data, features, ddp_params), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in (0, 1)]
    for key, value in single.items():
        if key != "__metadata__":
            torch.testing.assert_close(ranks[0]["artifact"][key], value, rtol=1e-4, atol=1e-5)
            assert torch.equal(ranks[0]["artifact"][key], ranks[1]["artifact"][key])  # replicas agree
    assert ranks[0]["history"]["world_size"] == 2
    for a, b in zip(hist_single["epochs"], ranks[0]["history"]["epochs"], strict=True):
        assert a["loss"]["id"] == pytest.approx(b["loss"]["id"], rel=0.05)  # per-rank means, averaged
        assert a["valid"]["ndcg@20"] == pytest.approx(b["valid"]["ndcg@20"], abs=1e-6)
        assert a["valid"]["num_users"] == b["valid"]["num_users"] == 20
    assert len(list((tmp_path / "ddp_ckpt").rglob("checkpoint.pt"))) == 1  # one writer
