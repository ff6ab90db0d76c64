"""Next-item losses: chunked full softmax equals the plain one, sampled softmax with logQ, fused attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from maf_pipeline.models import MAF, BERT4Rec, SASRec
from maf_pipeline.models.layers import FusedSelfAttention, attention_mask
from maf_pipeline.models.losses import (
    chunked_cross_entropy,
    draw_negatives,
    sampled_softmax_loss,
    sampling_log_probs,
)
from tests.models.synthetic import make_features


def plain_ce(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, b: torch.Tensor | None = None):
    logits = h @ w.T + (0 if b is None else b)
    logits[:, 0] = float("-inf")
    return F.cross_entropy(logits, t)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_cross_entropy_equals_plain_in_loss_and_gradients(chunk: int, with_bias: bool) -> None:
    g = torch.Generator().manual_seed(0)
    M, V, d = 37, 101, 16
    h = torch.randn(M, d, generator=g, requires_grad=True)
    w = torch.randn(V, d, generator=g, requires_grad=True)
    b = torch.randn(V, generator=g, requires_grad=True) if with_bias else None
    t = torch.randint(1, V, (M,), generator=g)
    t[:3] = torch.tensor([1, V - 1, chunk % (V - 1) + 1])  # first, last and a chunk-boundary item
    inputs = [h, w] + ([b] if with_bias else [])
    want = plain_ce(h, w, t, b)
    want_grads = torch.autograd.grad(want, inputs)
    got = chunked_cross_entropy(h, w, t, b, chunk_size=chunk)
    got_grads = torch.autograd.grad(got, inputs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, e in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    assert got_grads[1][0].abs().max() == 0  # the padding row gets no gradient


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_excluded_items_leave_the_softmax_in_loss_and_gradients(chunk: int) -> None:
    """``exclude`` (each row's earlier items, 0-padded, with repeats and ids in other chunks) equals the plain
    CE with those logits at -inf, chunked or not; excluded items get no gradient from their row."""
    g = torch.Generator().manual_seed(2)
    M, V, d, K = 23, 61, 8, 6
    h = torch.randn(M, d, generator=g, requires_grad=True)
    w = torch.randn(V, d, generator=g, requires_grad=True)
    t = torch.randint(1, V, (M,), generator=g)
    exclude = torch.randint(0, V, (M, K), generator=g)
    exclude[:, 0] = exclude[:, 1]  # a repeated earlier item
    exclude[exclude == t[:, None]] = 0  # never the row's target
    exclude[0] = 0  # a row with nothing earlier
    logits = h @ w.T
    logits[:, 0] = float("-inf")
    hits = torch.zeros(M, V, dtype=torch.bool).scatter_(1, exclude, True)
    want = F.cross_entropy(logits.masked_fill(hits, float("-inf")), t)
    want_grads = torch.autograd.grad(want, [h, w])
    model = SASRec(V - 1, 4, d=d, n_heads=2)
    model.item_embeddings = lambda: w  # the table under test
    model.configure_loss("full", chunk_size=chunk if chunk < 1000 else None, mask_history=True)
    got = model.next_item_loss(h, t, exclude)
    got_grads = torch.autograd.grad(got, [h, w])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, e in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    assert want < plain_ce(h, w, t)  # fewer competitors: a lower loss, so the test can tell them apart
    one = slice(5, 6)
    item = int(exclude[one][exclude[one] > 0][0])
    grad_w = torch.autograd.grad(model.next_item_loss(h[one], t[one], exclude[one]), w)[0]
    assert grad_w[item].abs().max() == 0 and grad_w[int(t[5])].abs().max() > 0


def test_loss_mask_history_is_refused_where_it_cannot_apply() -> None:
    with pytest.raises(ValueError, match="loss: full"):
        SASRec(20, 4, d=8, n_heads=2).configure_loss("sampled_softmax", mask_history=True)
    with pytest.raises(ValueError, match="BERT4Rec has its own step"):
        BERT4Rec(20, 4, d=8, n_heads=2).configure_loss("full", mask_history=True)


def test_chunked_loss_in_the_model_equals_the_plain_loss_and_gradients() -> None:
    torch.manual_seed(0)
    feats = {k: v["features"] for k, v in make_features(40).items()}
    model = MAF(40, 8, feats, d=16, d_mm=8, n_heads=2, dropout=0.0, attn_dropout=0.0).eval()
    x = torch.randint(1, 41, (6, 8))
    x[3, 5:] = 0
    y = torch.roll(x, -1, 1) * (x > 0)
    y[:, -1] = 0
    batch = {"item_seq": x, "target_seq": y}
    plain = model.training_step(batch)["loss"]
    g_plain = torch.autograd.grad(plain, list(model.parameters()))
    model.configure_loss("full", chunk_size=9)
    chunked = model.training_step(batch)["loss"]
    g_chunked = torch.autograd.grad(chunked, list(model.parameters()))
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-5)
    for a, e in zip(g_chunked, g_plain, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_bert4rec_output_bias_enters_the_chunked_loss() -> None:
    torch.manual_seed(0)
    model = BERT4Rec(30, 6, d=16, n_heads=2).eval()
    with torch.no_grad():
        model.out_bias.normal_()
    h, t = torch.randn(9, 16), torch.randint(1, 31, (9,))
    plain = model.next_item_loss(h, t)
    model.configure_loss("full", chunk_size=4)
    torch.testing.assert_close(model.next_item_loss(h, t), plain, rtol=1e-5, atol=1e-5)


def test_chunked_loss_under_bf16_autocast_is_close_to_fp32() -> None:
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(20, 32, generator=g), torch.randn(50, 32, generator=g) * 0.3
    t = torch.randint(1, 50, (20,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = chunked_cross_entropy(h, w, t, chunk_size=16)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, plain_ce(h, w, t), rtol=2e-2, atol=2e-2)


def test_sampled_softmax_with_all_items_as_negatives_is_the_full_softmax() -> None:
    """Uniform logQ is a constant shift; with every item once as a negative the loss is the full CE over
    the other items plus the target (the accidental hit is masked)."""
    g = torch.Generator().manual_seed(2)
    V, d = 12, 8
    h, w = torch.randn(5, d, generator=g), torch.randn(V, d, generator=g)
    t = torch.randint(1, V, (5,), generator=g)
    log_q = sampling_log_probs(torch.zeros(V), "uniform")
    negatives = torch.arange(1, V)
    got = sampled_softmax_loss(h, w, t, negatives, log_q)
    torch.testing.assert_close(got, plain_ce(h, w, t))


def test_logq_correction_makes_popularity_sampling_estimate_the_full_softmax() -> None:
    """With scores that follow popularity, popularity-sampled negatives corrected by log(n q) give (on
    average) the full CE; treating the same draws as uniform overestimates it by far."""
    g = torch.Generator().manual_seed(3)
    V, d = 1000, 8
    counts = torch.zeros(V)
    counts[1:] = 1000.0 / torch.arange(1, V).float()
    h, w = torch.randn(64, d, generator=g), 0.3 * torch.randn(V, d, generator=g)
    bias = torch.log(counts + 1.0)
    t = torch.randint(1, V, (64,), generator=g)
    full = plain_ce(h, w, t, bias)
    pop, uni = sampling_log_probs(counts, "popularity"), sampling_log_probs(counts, "uniform")
    torch.manual_seed(0)
    draws = [draw_negatives(pop, 256, uniform=False) for _ in range(50)]
    corrected = torch.stack([sampled_softmax_loss(h, w, t, n, pop, bias) for n in draws]).mean()
    wrong = torch.stack([sampled_softmax_loss(h, w, t, n, uni, bias) for n in draws]).mean()
    assert abs(corrected - full) < 0.02 * full
    assert wrong - full > 0.2 * full


def test_negative_draws_follow_the_sampler() -> None:
    counts = torch.tensor([0.0, 0.0, 9.0, 99.0])  # (+1 smoothing) -> q = 1/112, 10/112, 100/112
    log_q = sampling_log_probs(counts, "popularity")
    assert log_q[0] == float("-inf")
    torch.manual_seed(0)
    draws = draw_negatives(log_q, 20000, uniform=False)
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert freq[0] == 0
    torch.testing.assert_close(freq[1:], torch.tensor([1.0, 10.0, 100.0]) / 111.0, atol=0.01, rtol=0)
    uni = draw_negatives(sampling_log_probs(counts, "uniform"), 3000, uniform=True)
    assert uni.min() >= 1 and uni.max() <= 3
    assert math.isclose(float(sampling_log_probs(counts, "uniform")[1].exp()), 1 / 3, rel_tol=1e-6)
    with pytest.raises(ValueError, match="negative_sampling"):
        sampling_log_probs(counts, "zipf")


def test_sampled_softmax_trains_only_in_training_mode() -> None:
    torch.manual_seed(0)
    model = SASRec(30, 6, d=16, n_heads=2)
    model.configure_loss("sampled_softmax", num_negatives=5, negative_sampling="popularity",
                         target_counts=torch.arange(31).float())  # fmt: skip
    h, t = torch.randn(4, 16), torch.randint(1, 31, (4,))
    model.train()
    sampled = model.next_item_loss(h, t)
    model.eval()
    torch.testing.assert_close(model.next_item_loss(h, t), F.cross_entropy(model.score(h), t))
    assert sampled.isfinite()
    with pytest.raises(ValueError, match=r"training\.loss"):
        model.configure_loss("bpr")


@pytest.mark.parametrize("scale", ["head", "model"])
@pytest.mark.parametrize("d_mm", [0, 8])
def test_fused_sum_attention_equals_the_explicit_scores(scale: str, d_mm: int) -> None:
    """One SDPA call on [Q, Q_m], [K, K_m] equals softmax((QK^T + Q_mK_m^T) / s) V at every real item."""
    torch.manual_seed(0)
    mm = {"d_mm": d_mm, "fusion": "sum", "max_len": 7} if d_mm else {}
    layer = FusedSelfAttention(16, 2, 0.0, 0.0, 1e-12, scale=scale, **mm).eval()
    x, e = torch.randn(4, 7, 16), torch.randn(4, 7, d_mm) if d_mm else None
    seq = torch.randint(1, 9, (4, 7))
    seq[1, 3:], seq[2, 1:] = 0, 0
    mask = attention_mask(seq)
    explicit, _ = layer.__class__.forward(_explicit(layer), x, mask, e)
    fused_causal, _ = layer(x, mask, e, causal=True)
    fused_mask, _ = layer(x, mask, e)
    real = seq > 0
    torch.testing.assert_close(fused_causal[real], explicit[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_mask, explicit, rtol=1e-5, atol=1e-5)
    # the explicit path (attention maps) agrees with its own fused probabilities
    _, maps = layer(x, mask, e, return_attention=True)
    assert maps is not None and maps["fused"].shape == (4, 2, 7, 7)


def _explicit(layer: FusedSelfAttention) -> FusedSelfAttention:
    layer.fused = False
    return layer


def test_models_give_the_same_scores_with_and_without_fused_attention() -> None:
    feats = {k: v["features"] for k, v in make_features(30).items()}
    seq = torch.randint(1, 31, (5, 6))
    seq[0, 2:] = 0
    for cls, kw in ((MAF, {"features": feats, "d_mm": 8}), (SASRec, {})):
        torch.manual_seed(0)
        a = cls(30, 6, d=16, n_heads=2, fused_attention=True, **kw).eval()
        torch.manual_seed(0)
        b = cls(30, 6, d=16, n_heads=2, fused_attention=False, **kw).eval()
        with torch.no_grad():
            torch.testing.assert_close(a.full_sort_scores(seq), b.full_sort_scores(seq), rtol=1e-5, atol=1e-5)
