"""core.ood: metrics (unit + property tests), scorers, the calibrated suite and its files."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saescope.core.ood import (
    SAE_COMBINED,
    ImageSummary,
    KNNDistance,
    Mahalanobis,
    OODSuite,
    RareFeatures,
    auroc,
    default_scorers,
    fpr_at_tpr,
    ledoit_wolf,
    percentile_of,
    score_tokens,
    summarize,
    tpr_threshold,
)
from saescope.core.sae import SAE, SAEConfig

# integer-valued scores make ties common, the hard case for rank statistics
tied = st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=40)


def brute_auroc(a, b) -> float:
    wins = sum((y > x) + 0.5 * (y == x) for x, y in itertools.product(a, b))
    return wins / (len(a) * len(b))


# ------------------------------------------------------------------------------ AUROC
def test_auroc_perfect_swapped_and_all_tied() -> None:
    assert auroc([0, 1, 2], [3, 4]) == 1.0
    assert auroc([3, 4], [0, 1, 2]) == 0.0
    assert auroc([1, 1, 1], [1, 1]) == 0.5
    assert auroc([0, 1], [1, 2]) == pytest.approx(brute_auroc([0, 1], [1, 2]))  # = 0.875


@settings(max_examples=150, deadline=None)
@given(tied, tied)
def test_auroc_equals_pairwise_count_with_ties(a, b) -> None:
    assert auroc(a, b) == pytest.approx(brute_auroc(a, b))
    assert auroc(a, b) + auroc(b, a) == pytest.approx(1.0)


@settings(max_examples=100, deadline=None)
@given(tied, tied, st.sampled_from(["exp", "cube", "affine"]))
def test_auroc_invariant_to_increasing_transforms(a, b, kind) -> None:
    # strictly increasing in floating point too on these values (no two collapse into one)
    f = {
        "exp": lambda x: np.exp(np.asarray(x) / 2),
        "cube": lambda x: np.asarray(x) ** 3,
        "affine": lambda x: 3 * np.asarray(x) - 7,
    }[kind]
    assert auroc(f(a), f(b)) == pytest.approx(auroc(a, b))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=1, max_size=20), st.floats(0.01, 50))
def test_separated_sets_give_one_and_zero(a, gap) -> None:
    b = [max(a) + gap + i for i in range(5)]
    assert auroc(a, b) == 1.0 and auroc(b, a) == 0.0
    assert fpr_at_tpr(a, b) == 0.0 and fpr_at_tpr(b, a) == 1.0


def test_auroc_rejects_empty_and_nan() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        auroc([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        auroc([1.0, float("nan")], [2.0])


# ------------------------------------------------------------------------------ FPR@95
def test_fpr95_edge_cases() -> None:
    ind = np.arange(100, dtype=float)  # threshold keeps 95 of them: t = 94
    assert tpr_threshold(ind) == 94.0
    assert fpr_at_tpr(ind, [94.0, 94.5, 200.0]) == pytest.approx(1 / 3)  # a tie counts as accepted
    assert fpr_at_tpr([1.0] * 10, [1.0] * 4) == 1.0  # all tied: nothing can be rejected
    assert fpr_at_tpr([5.0], [4.0, 6.0]) == 0.5  # a single in-dist image sets the threshold
    assert tpr_threshold([3.0, 1.0, 2.0], tpr=1.0) == 3.0
    with pytest.raises(ValueError):
        fpr_at_tpr([1.0], [])
    with pytest.raises(ValueError):
        tpr_threshold([], 0.95)
    with pytest.raises(ValueError):
        tpr_threshold([1.0], 0.0)


@settings(max_examples=150, deadline=None)
@given(tied, st.floats(0.05, 1.0))
def test_threshold_is_the_smallest_that_keeps_tpr(a, tpr) -> None:
    t = tpr_threshold(a, tpr)
    arr = np.asarray(a)
    assert (arr <= t).mean() >= tpr - 1e-9
    below = arr[arr < t]
    if len(below):  # any smaller candidate keeps too few
        assert (arr <= below.max()).mean() < tpr - 1e-9


@settings(max_examples=100, deadline=None)
@given(tied, tied)
def test_fpr95_in_unit_interval_and_invariant_to_increasing_transforms(a, b) -> None:
    v = fpr_at_tpr(a, b)
    assert 0.0 <= v <= 1.0
    assert fpr_at_tpr(np.exp(np.asarray(a)), np.exp(np.asarray(b))) == v


def test_percentile_of() -> None:
    cal = np.array([1.0, 2.0, 3.0, 4.0])
    assert percentile_of(cal, 0.0) == 0.0 and percentile_of(cal, 2.0) == 50.0
    assert percentile_of(cal, 10.0) == 100.0


# ------------------------------------------------------------------------------ estimators
def test_ledoit_wolf_matches_sklearn() -> None:
    from sklearn.covariance import ledoit_wolf as sk_lw

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 60)) @ rng.normal(size=(60, 60))  # n < d: singular sample covariance
    x -= x.mean(0)
    ours = ledoit_wolf(x)
    ref, _ = sk_lw(x, assume_centered=True)
    np.testing.assert_allclose(ours, ref, rtol=1e-8, atol=1e-8)
    assert np.linalg.eigvalsh(ours).min() > 0


def test_mahalanobis_class_conditional_is_the_distance_to_the_nearest_mean() -> None:
    rng = np.random.default_rng(1)
    means = np.array([[0.0, 0, 0], [10, 0, 0]])
    y = np.repeat([0, 1], 50)
    x = (means[y] + rng.normal(size=(100, 3))).astype(np.float32)
    train = ImageSummary(raw_mean=x, labels=y, label_names=["a", "b"])
    m = Mahalanobis("raw_mean", "maha").fit(train)
    q = np.array([[0.2, 0.1, 0.0], [9.0, 1.0, 0.5], [5.0, 8.0, 0.0]], np.float32)
    got = m.score(ImageSummary(raw_mean=q))
    want = [min((qi - mu) @ m.precision @ (qi - mu) for mu in m.means) for qi in q.astype(float)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert "class-conditional" in m.label and got[2] > got[0] and got[2] > got[1]
    unl = Mahalanobis("raw_mean", "maha").fit(ImageSummary(raw_mean=x))
    assert unl.means.shape == (1, 3) and "class-conditional" not in unl.label


def test_knn_scores_distance_to_kth_neighbour() -> None:
    x = np.eye(4, dtype=np.float32)[[0, 0, 0, 1, 1, 1]] + 0.01
    knn = KNNDistance("raw_mean", "knn", "raw", k=3).fit(ImageSummary(raw_mean=x))
    s = knn.score(ImageSummary(raw_mean=np.array([[1, 0, 0, 0], [0, 0, 1, 0]], np.float32)))
    assert s[0] < 0.01 and s[1] > 0.9  # cosine distance, near vs orthogonal to every training row
    with pytest.raises(ValueError, match="k=3"):
        KNNDistance("raw_mean", "knn", "raw", k=3).fit(ImageSummary(raw_mean=x[:2]))


def _codes_summary(code_mean: np.ndarray, fire: np.ndarray, n_patches: int = 4) -> ImageSummary:
    return ImageSummary(
        code_mean=code_mean.astype(np.float32),
        fire_count=fire.astype(np.uint16),
        n_patches=n_patches,
    )


def test_rare_features_score_and_explanation() -> None:
    # features 0-2 fire on every training patch, feature 3 never does
    train = _codes_summary(np.tile([1.0, 1.0, 1.0, 0.0], (50, 1)), np.tile([4, 4, 4, 0], (50, 1)))
    rare = RareFeatures().fit(train)
    assert rare.frequency[3] < 1e-2 < rare.frequency[0]
    s = rare.score(
        _codes_summary(
            np.array([[1.0, 1, 1, 0], [1.0, 0, 0, 2.0], [0, 0, 0, 0.0]]), np.zeros((3, 4))
        )
    )
    assert s[1] > s[0]  # activation on the never-seen feature is surprising
    assert s[2] == rare.surprisal.max()  # nothing active at all: maximally surprising
    suite = OODSuite([rare], calibration={"sae_rare": np.sort(s[:1].repeat(5))})
    typical = float(np.median(suite.calibration["sae_rare"]))
    contribs = suite.explain(np.array([1.0, 0, 0, 2.0]), top=4)
    assert [c.feature for c in contribs] == [3]  # only the rare one pushes the score up
    w = rare.weights(np.array([1.0, 0, 0, 2.0]))
    full = w * (rare.surprisal - typical)
    assert sum(full) == pytest.approx(s[1] - typical)  # contributions add up to score - typical
    assert contribs[0].contribution == pytest.approx(full[3])


# ------------------------------------------------------------------------------ summaries + suite
def small_sae(d: int = 8, w: int = 32, k: int = 4, seed: int = 0) -> SAE:
    sae = SAE(SAEConfig(d_in=d, d_sae=w, architecture="topk", k=k, layer=0), seed=seed)
    g = torch.Generator().manual_seed(seed)
    sae.set_normalization(torch.randn(500, d, generator=g))
    return sae.eval()


def test_summarize_matches_a_direct_computation() -> None:
    sae = small_sae()
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(1)) * 2 + 1
    s = summarize(
        sae,
        x,
        final_cls=torch.randn(3, 8),
        labels=[0, None, 2],
        label_names=list("abc"),
        chunk_images=2,
    )
    codes = sae.encode(x.reshape(-1, 8)).reshape(3, 5, -1)
    recon = sae.decode(codes)
    fvu = ((x - recon) ** 2).sum((1, 2)) / ((x - x.mean(1, keepdim=True)) ** 2).sum((1, 2))
    np.testing.assert_allclose(s.fvu, fvu.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(s.code_mean, codes.mean(1).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert (s.fire_count == (codes > 0).sum(1).numpy()).all() and (
        s.fire_count.sum(1) <= 5 * 4
    ).all()
    np.testing.assert_allclose(s.raw_mean, x.mean(1).numpy(), rtol=1e-5)
    assert s.labels.tolist() == [0, -1, 2] and s.n_patches == 5 and len(s) == 3
    sub = ImageSummary.concat([s.subset([2]), s.subset([0])])
    assert sub.labels.tolist() == [2, 0] and sub.cls_final.shape == (2, 8)


def synthetic_sets(seed: int = 0):
    """In-distribution: tokens near a few prototypes; OOD: tokens from elsewhere."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(3, 8, generator=g) * 3

    def make(n, ood=False):
        lab = torch.randint(0, 3, (n,), generator=g)
        base = torch.randn(n, 1, 8, generator=g) * 3 + 6 if ood else protos[lab][:, None]
        return base + 0.5 * torch.randn(n, 6, 8, generator=g), lab

    return make


def fitted_sae(make) -> SAE:
    sae = small_sae()
    x, _ = make(200)
    flat = x.reshape(-1, 8)
    sae.set_normalization(flat)
    sae.init_decoder_bias(flat)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(150):
        loss = sae.train_forward(flat).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sae.normalize_decoder()
    return sae.eval()


def test_suite_separates_synthetic_ood_and_round_trips(tmp_path: Path) -> None:
    make = synthetic_sets()
    sae = fitted_sae(make)

    def summ(n, ood=False):
        x, lab = make(n, ood)
        return summarize(
            sae, x, final_cls=x.mean(1) + 0.1, labels=lab.tolist(), label_names=["p0", "p1", "p2"]
        )

    train, test_in, test_out = summ(120), summ(40), summ(40, ood=True)
    suite = OODSuite.fit(default_scorers(k=3), train, meta={"source": "synthetic"})
    assert suite.names[:4] == ["sae_recon", "sae_rare", "sae_knn", SAE_COMBINED]
    assert {"probe_msp", "probe_energy", "raw_maha_layer", "raw_knn_cls"} <= set(suite.names)
    assert suite.meta["n_fit"] == 96 and suite.meta["n_calibration"] == 24
    s_in, s_out = suite.scores(test_in), suite.scores(test_out)
    for name in ("sae_recon", "sae_knn", SAE_COMBINED, "raw_maha_layer", "raw_knn_layer"):
        assert auroc(s_in[name], s_out[name]) > 0.9, name
    reports = suite.report(test_out, 0)
    assert [r.name for r in reports] == suite.names
    comb = next(r for r in reports if r.name == SAE_COMBINED)
    assert comb.is_ood == (comb.score > comb.threshold) and 0 <= comb.percentile <= 100

    suite.save(tmp_path / "ood")
    files = sorted(p.name for p in (tmp_path / "ood").iterdir())
    assert "ood.json" in files and "ood.safetensors" in files and "sae_knn.faiss" in files
    assert not any(f.endswith((".pkl", ".pt", ".pickle")) for f in files)
    back = OODSuite.load(tmp_path / "ood")
    assert "probe_msp" not in back.names  # probes are not stored with the calibration
    again = back.scores(test_out)
    for name in back.names:
        np.testing.assert_allclose(again[name], s_out[name], rtol=1e-6, err_msg=name)
        assert back.threshold(name) == pytest.approx(suite.threshold(name))
    reports, one = score_tokens(back, sae, make(1, ood=True)[0][0])
    assert len(one) == 1  # without the final CLS only the layer-token scores apply
    assert {r.name for r in reports} == set(back.names) - {"raw_maha_cls", "raw_knn_cls"}


def test_probe_scorers_are_skipped_without_labels() -> None:
    make = synthetic_sets(1)
    x, _ = make(60)
    unl = summarize(None, x, final_cls=x.mean(1))
    suite = OODSuite.fit(default_scorers(("raw", "probe"), k=3), unl)
    assert set(suite.skipped) == {"probe_msp", "probe_energy"}
    assert "fewer than two class labels" in suite.skipped["probe_msp"]
    assert suite.names == ["raw_maha_layer", "raw_knn_layer", "raw_maha_cls", "raw_knn_cls"]


def test_probe_msp_and_energy_flag_ambiguous_images() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    x = np.where(y[:, None] == 0, -3.0, 3.0) + rng.normal(size=(120, 4))
    train = ImageSummary(cls_final=x.astype(np.float32), labels=y, label_names=["a", "b"])
    suite = OODSuite.fit(default_scorers(("probe",)), train)
    clear = ImageSummary(cls_final=np.array([[-3.0] * 4, [3.0] * 4], np.float32))
    between = ImageSummary(cls_final=np.zeros((2, 4), np.float32))  # on the decision boundary
    c, b = suite.scores(clear), suite.scores(between)
    assert (b["probe_msp"] > c["probe_msp"].max()).all() and (
        b["probe_energy"] > c["probe_energy"].max()
    ).all()
    assert (-1 <= c["probe_msp"]).all() and (c["probe_msp"] <= -0.5).all()


def test_load_rejects_foreign_or_newer_files(tmp_path: Path) -> None:
    (tmp_path / "ood.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not an OOD calibration"):
        OODSuite.load(tmp_path)
    (tmp_path / "ood.json").write_text('{"format": "saescope.ood", "format_version": 99}')
    with pytest.raises(ValueError, match="newer"):
        OODSuite.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        OODSuite.load(tmp_path / "missing")
