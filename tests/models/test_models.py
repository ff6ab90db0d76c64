"""MAF / SASRec / popularity: shapes, gradients, causality, SASRec equivalence, padding and loss details."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maf_pipeline.models import MAF, MODELS, Popularity, SASRec, build_model, model_from_artifact

from .synthetic import make_features

N, MAX_LEN = 30, 10
FUSIONS = ("sum", "concat", "gate")


def features() -> dict[str, torch.Tensor]:
    return {k: v["features"] for k, v in make_features(N).items()}


def maf(**kw) -> MAF:
    params = {
        "d": 16,
        "d_mm": 8,
        "n_layers": 2,
        "n_heads": 2,
        "d_ff": 32,
        "dropout": 0.0,
        "attn_dropout": 0.0,
    }
    params.update(kw)
    torch.manual_seed(0)
    return MAF(N, MAX_LEN, features(), **params)


def scramble_fusion(model: MAF) -> MAF:
    """Large random fusion and query/key weights, so a leak of masked scores through F would show."""
    torch.manual_seed(2)
    for name, param in model.named_parameters():
        if any(part in name for part in (".fuse.", ".gate", ".q", ".k")) and name.endswith("weight"):
            torch.nn.init.normal_(param, 0.0, 0.5)
    return model


def batch() -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randint(1, N + 1, (4, 7))
    x[1, 5:] = 0  # right padding
    x[2, 2:] = 0
    return x


@pytest.mark.parametrize("fusion", FUSIONS)
def test_output_and_attention_shapes(fusion: str) -> None:
    model, x = maf(fusion=fusion), batch()
    hidden, maps = model(x, return_attention=True)
    assert hidden.shape == (4, 7, 16)
    assert len(maps) == 2 and set(maps[-1]) == {"id", "mm", "fused"}
    for probs in maps[-1].values():
        assert probs.shape == (4, 2, 7, 7)
        torch.testing.assert_close(probs.sum(-1), torch.ones(4, 2, 7))
        assert probs.triu(1).abs().max() == 0  # no weight on future keys
    scores = model.full_sort_scores(x)
    assert scores.shape == (4, N + 1) and torch.isinf(scores[:, 0]).all()
    assert torch.isfinite(scores[:, 1:]).all()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_gradients_reach_every_modality_projection(fusion: str) -> None:
    model, x = maf(fusion=fusion), batch()
    target = torch.roll(x, -1, dims=1) * (x > 0)
    model.training_step({"item_seq": x, "target_seq": target})["loss"].backward()
    names = [f"mm_proj.{m}.weight" for m in ("image", "text", "category")]
    names += [f"decoders.{m}.weight" for m in ("image", "text", "category")]
    for i in range(2):
        names += [f"blocks.{i}.attn.q_mm.weight", f"blocks.{i}.attn.k_mm.weight"]
        names += {
            "sum": [],
            "concat": [f"blocks.{i}.attn.fuse.weight"],
            "gate": [f"blocks.{i}.attn.gate1.weight"],
        }[fusion]
    params = dict(model.named_parameters())
    for name in names:
        grad = params[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize("fusion", FUSIONS)
def test_future_items_do_not_change_earlier_states(fusion: str) -> None:
    model, x = scramble_fusion(maf(fusion=fusion)), batch()
    model.eval()
    changed = x.clone()
    changed[0, 4:] = (changed[0, 4:] % N) + 1  # different future items
    with torch.no_grad():
        a, b = model(x), model(changed)
    torch.testing.assert_close(a[0, :4], b[0, :4])
    assert not torch.allclose(a[0, 4:], b[0, 4:])


@pytest.mark.parametrize("fusion", FUSIONS)
def test_short_batch_equals_padding_to_max_len(fusion: str) -> None:
    """Right padding makes a batch trimmed to its longest sequence equivalent to one padded to max_len."""
    model, x = scramble_fusion(maf(fusion=fusion)), batch()
    model.eval()
    padded = torch.cat([x, torch.zeros(4, MAX_LEN - 7, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[:, :7])
        torch.testing.assert_close(model.full_sort_scores(x), model.full_sort_scores(padded))


def test_no_modalities_is_sasrec() -> None:
    common = {"d": 16, "n_layers": 2, "n_heads": 2, "d_ff": 32, "dropout": 0.3, "attn_dropout": 0.3}
    torch.manual_seed(3)
    sasrec = SASRec(N, MAX_LEN, **common)
    plain = MAF(N, MAX_LEN, None, modalities=[], d_mm=64, **common)  # d_mm unused without modalities
    assert set(plain.state_dict()) == set(sasrec.state_dict())
    plain.load_state_dict(sasrec.state_dict(), strict=True)
    x = batch()
    target = torch.roll(x, -1, dims=1) * (x > 0)
    sasrec.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), sasrec(x), rtol=0, atol=0)
        torch.testing.assert_close(plain.full_sort_scores(x), sasrec.full_sort_scores(x), rtol=0, atol=0)
    sasrec.train(), plain.train()
    torch.manual_seed(5)
    loss_s = sasrec.training_step({"item_seq": x, "target_seq": target})
    torch.manual_seed(5)
    loss_p = plain.training_step({"item_seq": x, "target_seq": target})
    assert set(loss_p) == {"id", "loss"}
    torch.testing.assert_close(loss_p["loss"], loss_s["loss"], rtol=0, atol=0)


def test_multimodal_model_differs_from_sasrec_in_scores() -> None:
    """Sanity check for the equivalence test: with modalities the same ID weights give other outputs."""
    model, x = maf(), batch()
    plain = maf(modalities=[])
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in plain.state_dict()})
    model.eval(), plain.eval()
    with torch.no_grad():
        assert not torch.allclose(model(x), plain(x))


def test_invalid_configurations_raise() -> None:
    with pytest.raises(ValueError, match="d_mm=32 must be <= the hidden size d=16"):
        maf(d_mm=32)
    with pytest.raises(ValueError, match="unknown modalities"):
        maf(modalities=["audio"])
    with pytest.raises(ValueError, match="no text feature table"):
        MAF(N, MAX_LEN, {"image": features()["image"]}, modalities=["image", "text"], d=16, d_mm=8)
    with pytest.raises(ValueError, match=r"\(num_items \+ 1, dim\)"):
        MAF(N + 5, MAX_LEN, features(), d=16, d_mm=8)
    with pytest.raises(ValueError, match="fusion must be one of"):
        maf(fusion="product")
    with pytest.raises(ValueError, match="divisible"):
        maf(d_mm=7)


def test_loss_uses_only_target_positions_and_multitask_means() -> None:
    model, x = maf(mtl_lambda=7.0), batch()
    model.eval()  # no dropout, so the manual computation below sees the same hidden states
    target = torch.roll(x, -1, dims=1) * (x > 0)
    target[:, -1] = 0
    parts = model.training_step({"item_seq": x, "target_seq": target})
    with torch.no_grad():
        hidden = model(x)
        where = target > 0
        h, t = hidden[where], target[where]
        logits = h @ model.item_emb.weight.T
        logits[:, 0] = float("-inf")
        feats = features()
        rows = feats["image"][1:]
        image = F.mse_loss(model.decoders["image"](h), feats["image"][t]) / rows.var(0, unbiased=False).mean()
        p = feats["category"][1:].mean(0)
        entropy = -(p * p.log() + (1 - p) * (1 - p).log()).mean()
        cat = (
            F.binary_cross_entropy_with_logits(model.decoders["category"](h), feats["category"][t]) / entropy
        )
    torch.testing.assert_close(parts["id"], F.cross_entropy(logits, t))
    torch.testing.assert_close(parts["image"], image)
    torch.testing.assert_close(parts["category"], cat)
    expected = parts["id"] + 7.0 * (parts["image"] + parts["text"] + parts["category"])
    torch.testing.assert_close(parts["loss"], expected)
    no_mtl = maf(multitask=False)
    assert set(no_mtl.training_step({"item_seq": x, "target_seq": target})) == {"id", "loss"}


def test_multitask_losses_are_one_for_the_best_constant_predictor() -> None:
    """Decoders start as the best constant predictor (table mean / category log-odds): L_j = 1 for each."""
    model = maf()
    with torch.no_grad():
        losses = model.extra_losses(torch.randn(N, 16), torch.arange(1, N + 1))  # every item a target once
    for name, value in losses.items():
        assert value.item() == pytest.approx(1.0, rel=1e-4), name
    scaled = {k: v * 100 if k != "category" else v for k, v in features().items()}
    big = MAF(N, MAX_LEN, scaled, d=16, d_mm=8, n_heads=2)  # 100x features: 1e4x MSE, same normalised loss
    assert big.mtl_norm["image"] == pytest.approx(1e4 * model.mtl_norm["image"], rel=1e-5)


def test_last_hidden_takes_the_last_item() -> None:
    model, x = maf(), batch()
    model.eval()
    with torch.no_grad():
        hidden, last = model(x), model.last_hidden(x)
    torch.testing.assert_close(last[1], hidden[1, 4])
    torch.testing.assert_close(last[2], hidden[2, 1])
    torch.testing.assert_close(last[0], hidden[0, 6])


def test_feature_tables_stay_out_of_the_state_dict_and_artifact_roundtrip() -> None:
    feats = features()
    model = build_model("maf", N, MAX_LEN, {"architecture": "maf", "d": 16, "d_mm": 8, "n_heads": 2}, feats)
    assert not any(k.startswith("feat_") for k in model.state_dict())
    assert model.feature("image").data_ptr() == model.feat_image.data_ptr()
    meta = {
        "architecture": "maf",
        "num_items": N,
        "max_len": MAX_LEN,
        "config": {"d": 16, "d_mm": 8, "n_heads": 2},
    }
    restored = model_from_artifact({**model.state_dict(), "__metadata__": meta}, feats)
    model.eval(), restored.eval()
    x = batch()
    with torch.no_grad():
        torch.testing.assert_close(restored.full_sort_scores(x), model.full_sort_scores(x))
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("nope", N, MAX_LEN, {})
    with pytest.raises(ValueError, match="bad parameters for 'sasrec'"):
        build_model("sasrec", N, MAX_LEN, {"fusion": "sum"})
    assert {"maf", "sasrec"} <= set(MODELS)


def test_popularity_scores_are_training_counts() -> None:
    import numpy as np

    pop = Popularity.from_sequences([np.array([1, 2, 2]), np.array([2, 3])], num_items=4)
    scores = pop.full_sort_scores(torch.zeros(2, 3, dtype=torch.long))
    assert scores.shape == (2, 5)
    assert scores[0, 0] == float("-inf")
    assert scores[1, 1:].tolist() == [1.0, 3.0, 1.0, 0.0]


def test_side_values_lever_adds_the_side_embedding_to_the_values_only_when_asked() -> None:
    plain, x = maf(), batch()
    assert not any(".v_mm." in name for name, _ in plain.named_parameters())  # default: DIF-SR, no change
    model = maf(side_values=True)
    assert {f"blocks.{i}.attn.v_mm.weight" for i in range(2)} <= set(dict(model.named_parameters()))
    target = torch.roll(x, -1, dims=1) * (x > 0)
    model.training_step({"item_seq": x, "target_seq": target})["loss"].backward()
    assert model.blocks[0].attn.v_mm.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        before = model(x)
        model.blocks[0].attn.v_mm.weight.zero_()
        model.blocks[1].attn.v_mm.weight.zero_()
        after = model(x)
    assert not torch.allclose(before, after)  # the values carry side information
    state = {k: v for k, v in model.state_dict().items() if ".v_mm." not in k}
    plain.load_state_dict(state)  # with zero W_V^m the lever is the plain model
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), after)
    assert not maf(modalities=[], side_values=True).blocks[0].attn.v_mm  # no modality: SASRec exactly


def test_side_embedding_dropout_acts_in_training_only() -> None:
    x = batch()
    model, reference = maf(mm_dropout=0.9), maf()
    model.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))  # identity at evaluation, same parameters
        model.train()
        torch.manual_seed(3)
        assert not torch.allclose(model(x), reference(x))
