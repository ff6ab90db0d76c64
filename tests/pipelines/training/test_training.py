"""Training nodes: windows, overfitting a tiny set, early stopping, and resume-after-kill determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from maf_pipeline.metrics import pessimistic_rank
from maf_pipeline.models import model_from_artifact
from maf_pipeline.pipelines.training.pipeline import create_model_pipeline, create_pipeline
from maf_pipeline.training import (
    checkpoint_interval,
    epoch_order,
    host_batch,
    training_windows,
)
from tests.models.synthetic import make_features, make_sequences, small_training, tiny_maf_params, train_tiny


def training_params(tmp_path: Path, **overrides: object) -> dict:
    return small_training(tmp_path / "checkpoints", **overrides)


run = train_tiny


@pytest.mark.parametrize("max_len", [1, 3, 50])
def test_all_positions_windows_cover_each_target_exactly_once(max_len: int) -> None:
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 1000, size=n) for n in (1, 2, 3, 7, 50, 51, 52, 101, 160)]
    inputs, targets = training_windows(seqs, max_len, "all_positions")
    assert inputs.shape == targets.shape == (len(inputs), max_len)
    # every (user's) target s_t, t >= 1, once: pair each target with its preceding input item
    got = sorted(
        (int(i), int(t)) for x, y in zip(inputs, targets, strict=True) for i, t in zip(x, y, strict=True) if t
    )
    want = sorted((int(s[t - 1]), int(s[t])) for s in seqs for t in range(1, len(s)))
    assert got == want
    assert ((inputs > 0) == (targets > 0)).all()  # a target exactly where there is an input
    for x in inputs:  # right padding: items first, then zeros
        n = int((x > 0).sum())
        assert (x[:n] > 0).all() and (x[n:] == 0).all()
    # the most recent window of the longest sequence has full context
    last = next(s for s in seqs if len(s) == 160)
    assert any((x == last[159 - max_len : 159]).all() for x in inputs)


def test_last_position_windows_are_prefixes() -> None:
    seqs = [np.arange(1, 8), np.array([5, 6])]
    inputs, targets = training_windows(seqs, 3, "last_position")
    assert len(inputs) == 6 + 1
    assert (targets > 0).sum(axis=1).tolist() == [1] * 7
    assert inputs[0].tolist() == [1, 0, 0] and targets[0].tolist() == [2, 0, 0]
    assert inputs[5].tolist() == [4, 5, 6] and targets[5].tolist() == [0, 0, 7]
    with pytest.raises(ValueError, match="objective"):
        training_windows(seqs, 3, "bogus")


def test_each_target_carries_its_earlier_items_for_the_masked_loss() -> None:
    """``host_batch(..., history=True)``: target ``t`` of a window gets the inputs at positions ``<= t`` (the
    items the user had before it), minus copies of the target, 0-padded; rows in ``targets`` order."""
    seqs = [np.array([3, 5, 3, 7, 9]), np.array([2, 4]), np.array([8, 6, 8, 1])]
    inputs, targets = training_windows(seqs, 3, "all_positions")
    lengths = (inputs > 0).sum(axis=1)
    batch = host_batch(inputs, targets, lengths, np.arange(len(inputs)), 9, False, True)
    width = batch["item_seq"].shape[1]
    want = []
    for x, y in zip(batch["item_seq"], batch["target_seq"], strict=True):
        for t in np.flatnonzero(y):
            earlier = [int(i) if i != y[t] else 0 for i in x[: t + 1]]
            want.append(earlier + [0] * (width - len(earlier)))
    np.testing.assert_array_equal(batch["history"], np.array(want))
    assert len(batch["history"]) == len(batch["targets"])
    # the window [3, 7] -> [7, 9] and [8, 6, 8] -> [6, 8, 1]: a repeat of the target is not masked
    row = int(np.flatnonzero(batch["targets"] == 8)[0])
    assert list(batch["history"][row]) == [0, 6, 0]
    assert "history" not in host_batch(inputs, targets, lengths, np.arange(2), 9, False)


def test_the_history_masked_loss_trains_through_the_node(tmp_path: Path) -> None:
    """``training.loss_mask_history``: fewer competitors per target, so a lower loss from the same start."""
    data, features = make_sequences(seed=4), make_features(30)
    params = {"architecture": "sasrec", "d": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16}
    losses = {}
    for masked in (False, True):
        training = training_params(tmp_path, epochs=2, loss_mask_history=masked)
        _, history = run(data, features, params, training)
        losses[masked] = [e["loss"]["id"] for e in history["epochs"]]
    assert all(m < f for m, f in zip(losses[True], losses[False], strict=True)), losses


def test_tiny_dataset_is_overfit(tmp_path: Path) -> None:
    """Training Recall@10 over every target of the training windows reaches 1.0 on learnable walks."""
    data = make_sequences(num_users=16, num_items=30, length=(6, 10), seed=1)
    features = make_features(30)
    params = tiny_maf_params(d=32, d_mm=16, dropout=0.0, attn_dropout=0.0)
    artifact, history = run(data, features, params, training_params(tmp_path, epochs=40, batch_size=16))
    model = model_from_artifact(artifact, {k: v["features"] for k, v in features.items()}).eval()
    inputs, targets = training_windows(list(data["train_sequences"]["items"]), 6)
    x, y = torch.from_numpy(inputs), torch.from_numpy(targets)
    with torch.no_grad():
        scores = model.score(model(x)[y > 0])
    ranks = pessimistic_rank(scores, y[y > 0])
    assert len(ranks) == sum(len(s) - 1 for s in data["train_sequences"]["items"])
    assert (ranks <= 10).float().mean().item() == 1.0
    losses = [e["loss"]["id"] for e in history["epochs"]]
    assert losses[-1] < 0.5 * losses[0]


def test_artifact_and_history_contract(tmp_path: Path) -> None:
    data, features = make_sequences(), make_features(30)
    artifact, history = run(data, features, tiny_maf_params(), training_params(tmp_path, epochs=2))
    meta = artifact["__metadata__"]
    assert meta["architecture"] == "maf" and meta["num_items"] == 30 and meta["max_len"] == 6
    assert meta["seed"] == 7 and meta["best_epoch"] in (1, 2)
    assert meta["feature_dims"] == {"image": 12, "text": 8, "category": 5}
    assert not any(k.startswith("feat_") for k in artifact)
    assert all(isinstance(v, torch.Tensor) for k, v in artifact.items() if k != "__metadata__")
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    first = history["epochs"][0]
    assert set(first["loss"]) == {"loss", "id", "image", "text", "category"}
    assert {"recall@10", "ndcg@20", "mrr"} <= set(first["valid"]) and first["seconds"] > 0
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").rglob("*.pt"))


def test_sasrec_trains_through_the_same_node(tmp_path: Path) -> None:
    data, features = make_sequences(), make_features(30)
    params = {"architecture": "sasrec", "d": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16}
    artifact, history = run(data, features, params, training_params(tmp_path, epochs=1))
    assert artifact["__metadata__"]["architecture"] == "sasrec"
    assert set(history["epochs"][0]["loss"]) == {"loss", "id"}


def test_last_position_objective_trains_one_sample_per_target(tmp_path: Path) -> None:
    data, features = make_sequences(), make_features(30)
    params = training_params(tmp_path, epochs=1, objective="last_position")
    _, history = run(data, features, tiny_maf_params(), params)
    assert history["num_windows"] == sum(len(s) - 1 for s in data["train_sequences"]["items"])
    assert history["epochs"][0]["loss"]["id"] > 0


def test_early_stopping_keeps_the_best_epoch(tmp_path: Path) -> None:
    data, features = make_sequences(), make_features(30)
    params = training_params(tmp_path, epochs=10, learning_rate=1e-12, early_stopping={"patience": 2})
    _, history = run(data, features, tiny_maf_params(), params)
    assert len(history["epochs"]) == 3 and history["stopped_early"] and history["best_epoch"] == 1


class KilledError(RuntimeError):
    pass


def test_resume_after_kill_gives_identical_weights(tmp_path: Path) -> None:
    data, features = make_sequences(seed=3), make_features(30)
    model_params = tiny_maf_params(fusion="gate", dropout=0.3, attn_dropout=0.3)
    params = training_params(tmp_path / "a", epochs=4, learning_rate=5e-3)
    uninterrupted, hist_a = run(data, features, model_params, params)

    params_b = training_params(
        tmp_path / "b", epochs=4, learning_rate=5e-3, keep_checkpoint=False, checkpoint_every=1
    )

    def kill_after_two(epoch: int) -> None:
        if epoch == 2:
            raise KilledError

    with pytest.raises(KilledError):
        run(data, features, model_params, params_b, on_epoch_end=kill_after_two)
    ckpts = list((tmp_path / "b").rglob("checkpoint.pt"))
    assert len(ckpts) == 1 and ckpts[0].parent.parent.name == "maf"
    resumed_epochs = []
    resumed, hist_b = run(data, features, model_params, params_b, on_epoch_end=resumed_epochs.append)
    assert resumed_epochs == [3, 4]  # only the missing epochs ran
    assert hist_b["resumed_epochs"] == 2 and hist_a["resumed_epochs"] == 0
    # the resumed run's wall time counts the killed process's two epochs as well
    assert hist_b["total_seconds"] >= sum(e["seconds"] for e in hist_b["epochs"])
    for key, value in uninterrupted.items():
        if key != "__metadata__":
            assert torch.equal(value, resumed[key]), key
    assert uninterrupted["__metadata__"] == resumed["__metadata__"]
    assert [e["valid"] for e in hist_a["epochs"]] == [e["valid"] for e in hist_b["epochs"]]
    assert not list((tmp_path / "b").rglob("checkpoint.pt"))  # removed after success

    # a different config never resumes a stale checkpoint
    with pytest.raises(KilledError):
        run(data, features, model_params, params_b, on_epoch_end=kill_after_two)
    changed = run(
        data, features, {**model_params, "mtl_lambda": 1.0}, params_b, on_epoch_end=resumed_epochs.append
    )
    assert resumed_epochs == [3, 4, 1, 2, 3, 4]
    assert len(changed[1]["epochs"]) == 4


@pytest.mark.parametrize("every", [2, "auto"])
def test_resume_from_the_last_sparse_checkpoint_is_bit_identical(tmp_path: Path, every: object) -> None:
    """Checkpoints every 2 epochs (or auto: after epoch 1, then as the measured cost allows): a kill after
    epoch 3 resumes from the last checkpoint and still ends with the uninterrupted weights."""
    data, features = make_sequences(seed=4), make_features(30)
    model_params = tiny_maf_params(dropout=0.3, attn_dropout=0.3)
    reference, hist_a = run(data, features, model_params, training_params(tmp_path / "a", epochs=5))
    params = training_params(tmp_path / "b", epochs=5, checkpoint_every=every)

    def kill_after_three(epoch: int) -> None:
        if epoch == 3:
            raise KilledError

    with pytest.raises(KilledError):
        run(data, features, model_params, params, on_epoch_end=kill_after_three)
    ran: list[int] = []
    resumed, hist_b = run(data, features, model_params, params, on_epoch_end=ran.append)
    assert ran[-1] == 5 and ran[0] in ((3,) if every == 2 else (2, 3, 4))
    for key, value in reference.items():
        if key != "__metadata__":
            assert torch.equal(value, resumed[key]), key
    assert [e["valid"] for e in hist_a["epochs"]] == [e["valid"] for e in hist_b["epochs"]]


def test_length_grouped_order_is_a_seeded_permutation_with_little_padding() -> None:
    rng = np.random.default_rng(0)
    lengths = np.minimum(5 + rng.lognormal(0, 1.2, size=1000).astype(int), 50)
    plain, grouped = epoch_order(lengths, 32, 0, 7), epoch_order(lengths, 32, 8, 7)
    assert sorted(grouped.tolist()) == list(range(1000))  # every window once
    assert np.array_equal(grouped, epoch_order(lengths, 32, 8, 7))  # seeded
    assert np.array_equal(plain, np.random.default_rng(7).permutation(1000))

    def padded(order: np.ndarray) -> int:
        return sum(len(b) * lengths[b].max() for b in np.array_split(order, range(32, 1000, 32)))

    assert padded(grouped) < 0.6 * padded(plain)
    assert not np.array_equal(grouped, epoch_order(lengths, 32, 8, 8))


def test_checkpoint_interval_keeps_saving_under_five_percent() -> None:
    assert checkpoint_interval(3, 10.0, 1.0) == 3
    assert checkpoint_interval("auto", 0.01, 10.0) == 1
    assert checkpoint_interval("auto", 1.0, 2.0) == 10  # 1 s save / (5% of 2 s)
    with pytest.raises(ValueError, match="checkpoint_every"):
        checkpoint_interval(0, 1.0, 1.0)


def test_pipeline_factory_namespaces_model_outputs_and_parameters() -> None:
    pipe = create_model_pipeline("sasrec", seed="params:seed_2")
    assert pipe.outputs() == {"sasrec.trained_model", "sasrec.training_history"}
    assert "params:sasrec.model" in pipe.inputs()
    assert {
        "params:training",
        "params:sequences.max_len",
        "params:seed_2",
        "train_sequences",
    } <= pipe.inputs()
    assert "image_features" in pipe.inputs()
    assert create_pipeline().outputs() == {"maf.trained_model", "maf.training_history"}


def test_ranks_above_zero_keep_outputs_in_memory(monkeypatch, tmp_path: Path) -> None:
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.pipeline import Node, Pipeline
    from kedro_datasets.pickle import PickleDataset

    from maf_pipeline.distributed import RankZeroWritesHook, launch_rank, rank_mlflow_dir

    pipe = Pipeline([Node(lambda x: x, "a", "b", name="copy")])

    def catalog() -> DataCatalog:
        return DataCatalog({"a": MemoryDataset(1), "b": PickleDataset(filepath=str(tmp_path / "b.pkl"))})

    on_zero = catalog()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    RankZeroWritesHook().before_pipeline_run({}, pipe, on_zero)
    assert isinstance(on_zero.get("b"), PickleDataset)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MAF_MLFLOW_DIR", raising=False)
    on_one = catalog()
    RankZeroWritesHook().before_pipeline_run({}, pipe, on_one)
    assert launch_rank() == 1 and isinstance(on_one.get("b"), MemoryDataset)
    assert isinstance(on_one.get("a"), MemoryDataset) and on_one.load("a") == 1  # inputs untouched
    import os
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rank_mlflow_dir()

    assert os.environ["MAF_MLFLOW_DIR"].startswith(str(tmp_path / "maf-rank1-mlflow-"))
    monkeypatch.delenv("MAF_MLFLOW_DIR")


def test_masked_validation_is_the_evaluation_protocol(tmp_path: Path) -> None:
    """training.mask_history: early stopping sees the metrics evaluation reports with mask_history (each
    user's earlier training items out of the ranking), not the all-items ones."""
    from maf_pipeline.pipelines.evaluation.nodes import evaluate_scorer

    data, features = make_sequences(seed=4), make_features(30)
    params = training_params(tmp_path, epochs=1, mask_history=True, ks=[10, 20])
    artifact, history = run(data, features, tiny_maf_params(), params)
    model = model_from_artifact(artifact, {k: v["features"] for k, v in features.items()})
    seqs = (data["train_sequences"], data["valid_sequences"], data["test_sequences"])
    masked, _ = evaluate_scorer(model, 30, 6, *seqs, {"mask_history": True, "device": "cpu"}, 0)
    full, _ = evaluate_scorer(model, 30, 6, *seqs, {"mask_history": False, "device": "cpu"}, 0)
    for name in ("recall@10", "ndcg@10", "ndcg@20", "mrr"):
        assert history["best_valid"][name] == pytest.approx(masked["valid"][name], abs=1e-12), name
    assert masked["valid"]["mrr"] > full["valid"]["mrr"]  # the earlier items did outrank some targets
