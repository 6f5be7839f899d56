"""LinearProbe: a grid of heads trained in one pass, chosen on a validation split of train."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zoolens.analyses.probes import knn as knn_mod
from zoolens.analyses.probes import linear as linear_mod
from zoolens.analyses.probes.linear import DINOV2_LEARNING_RATES, LinearProbe, LinearProbeResult
from zoolens.errors import InputError, NotFittedError


def _blobs(n, seed, d=20, n_cls=4, sep=10.0):
    """Gaussian blobs with unit noise around means `sep` apart per coordinate: separable."""
    means = np.random.default_rng(123).choice([-sep, sep], size=(n_cls, d))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_cls, n)
    return (means[y] + rng.normal(size=(n, d))).astype(np.float32), y


def _feature_dict(x, seed):
    """Three feature choices: the blobs, a pure-noise array, and both concatenated."""
    noise = np.random.default_rng(seed + 1000).normal(size=(len(x), 12)).astype(np.float32)
    return {"cls": x, "noise": noise, "cls+noise": np.concatenate([x, noise], 1)}


@pytest.fixture
def fitted():
    x, y = _blobs(240, seed=0)
    probe = LinearProbe(epochs=4, batch_size=32, seed=0, device="cpu")
    return probe.fit(_feature_dict(x, 0), y), x, y


def test_separable_task_reaches_100_percent(fitted):
    probe, _, _ = fitted
    xt, yt = _blobs(200, seed=1)
    assert probe.score(_feature_dict(xt, 1), yt) == 1.0
    assert probe.best_["val_top1"] == 1.0
    assert probe.best_["feature"] in ("cls", "cls+noise")
    # 3 feature choices x 13 learning rates, grid order: features as given, rates ascending.
    assert len(probe.grid_results_) == 39 >= 8
    assert [g["feature"] for g in probe.grid_results_[::13]] == ["cls", "noise", "cls+noise"]
    lrs = [g["lr"] for g in probe.grid_results_[:13]]
    np.testing.assert_allclose(lrs, np.array(DINOV2_LEARNING_RATES) * 32 / 256)
    # Pure noise cannot beat guessing by much; the picked head is the best on validation.
    assert max(g["val_top1"] for g in probe.grid_results_ if g["feature"] == "noise") < 0.6
    assert probe.best_["val_top1"] == max(g["val_top1"] for g in probe.grid_results_)


def test_all_heads_trained_in_one_pass(monkeypatch):
    x, y = _blobs(200, seed=2)
    feats = _feature_dict(x, 2)
    calls, batches = [], []
    orig = LinearProbe._minibatches

    def counting(self, n, generator):
        calls.append(n)
        for b in orig(self, n, generator):
            batches.append(len(b))
            yield b

    steps = []
    orig_step = LinearProbe._sgd_step

    def counting_step(self, x, y, w, *args):
        steps.append(w.shape[1])
        return orig_step(self, x, y, w, *args)

    monkeypatch.setattr(LinearProbe, "_minibatches", counting)
    monkeypatch.setattr(LinearProbe, "_sgd_step", counting_step)
    probe = LinearProbe(epochs=3, batch_size=50, device="cpu").fit(feats, y)
    n_fit = len(probe.fit_indices_)
    # Features are iterated once per epoch, whatever the number of heads (39)...
    assert calls == [n_fit] * 3
    assert sum(batches) == 3 * n_fit and len(batches) == 3 * math.ceil(n_fit / 50)
    assert probe.n_steps_ == len(batches)
    # ...and every minibatch updates all 13 x C heads of each of the 3 feature choices.
    assert steps == [13 * 4] * (3 * len(batches))


def test_validation_split_is_from_train_only(fitted):
    probe, x, y = fitted
    fit_rows, val_rows = probe.fit_indices_, probe.val_indices_
    assert len(np.intersect1d(fit_rows, val_rows)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([fit_rows, val_rows])), np.arange(240))
    assert len(val_rows) == round(0.2 * 240)
    for c in range(4):  # stratified: each class gives ~20% of its rows
        n_c, v_c = np.sum(y == c), np.sum(y[val_rows] == c)
        assert abs(v_c - 0.2 * n_c) <= 1
    # The reported validation accuracy is the chosen head's accuracy on those train rows.
    feats = {k: v[val_rows] for k, v in _feature_dict(x, 0).items()}
    assert probe.score(feats, y[val_rows]) == pytest.approx(probe.best_["val_top1"])


def test_seeded_determinism():
    x, y = _blobs(160, seed=3, sep=0.6)  # overlapping: results depend on every detail
    feats = _feature_dict(x, 3)
    a = LinearProbe(epochs=2, batch_size=16, seed=7, device="cpu").fit(feats, y)
    b = LinearProbe(epochs=2, batch_size=16, seed=7, device="cpu").fit(feats, y)
    assert a.grid_results_ == b.grid_results_ and a.best_ == b.best_
    np.testing.assert_array_equal(a.predict_scores(feats), b.predict_scores(feats))
    c = LinearProbe(epochs=2, batch_size=16, seed=8, device="cpu").fit(feats, y)
    assert not np.array_equal(a.val_indices_, c.val_indices_)


def test_sgd_step_matches_autograd():
    """One step from zero momentum equals -lr * autograd gradient of each head's mean CE."""
    rng = np.random.default_rng(5)
    n_lr, n_cls, d, bsz = 3, 4, 6, 10
    x = torch.tensor(rng.normal(size=(bsz, d)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, n_cls, bsz))
    w = torch.tensor(rng.normal(size=(d, n_lr * n_cls)), dtype=torch.float32)
    b = torch.tensor(rng.normal(size=n_lr * n_cls), dtype=torch.float32)
    lr = torch.tensor([0.1, 0.2, 0.3]).repeat_interleave(n_cls)
    wd = 0.01

    wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
    logits = (x @ wr + br).view(bsz, n_lr, n_cls)
    loss = sum(torch.nn.functional.cross_entropy(logits[:, j], y) for j in range(n_lr))
    loss = loss + 0.5 * wd * (wr ** 2).sum()
    loss.backward()

    probe = LinearProbe(weight_decay=wd)
    w1, b1 = w.clone(), b.clone()
    wb, bb = torch.zeros_like(w), torch.zeros_like(b)
    probe._sgd_step(x, y, w1, b1, wb, bb, lr, n_lr, n_cls)
    torch.testing.assert_close(w1, w - lr * wr.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b1, b - lr * br.grad, rtol=1e-5, atol=1e-6)
    # Second step: momentum 0.9 on the buffer (PyTorch SGD convention, no dampening).
    w2 = w1.clone()
    probe._sgd_step(x, y, w2, b1.clone(), wb.clone(), bb.clone(), lr, n_lr, n_cls)
    wr2 = w1.clone().requires_grad_()
    logits = (x @ wr2 + b1).view(bsz, n_lr, n_cls)
    loss = sum(torch.nn.functional.cross_entropy(logits[:, j], y) for j in range(n_lr))
    (loss + 0.5 * wd * (wr2 ** 2).sum()).backward()
    torch.testing.assert_close(w2, w1 - lr * (0.9 * wr.grad + wr2.grad), rtol=1e-5, atol=1e-6)


def test_not_fitted_and_inputs(fitted):
    x, y = _blobs(40, seed=4)
    with pytest.raises(NotFittedError):
        LinearProbe().predict(x)
    probe = LinearProbe()
    assert not [a for a in vars(probe) if a.endswith("_")]  # __init__ stores params only
    fitted_probe = fitted[0]
    with pytest.raises(InputError, match="cls"):
        fitted_probe.predict({"other": x})
    with pytest.raises(InputError, match="features"):
        fitted_probe.predict(x)  # ambiguous: fit saw three feature choices
    with pytest.raises(InputError, match="val_fraction"):
        LinearProbe(val_fraction=0.0).fit(x, y)
    with pytest.raises(InputError, match="rows"):
        LinearProbe().fit({"a": x, "b": x[:10]}, y)
    with pytest.raises(InputError, match="too few"):
        LinearProbe().fit(x[:3], np.array([0, 1, 2]))


def test_single_array_string_labels_constant_column():
    x, y = _blobs(120, seed=6)
    x = np.concatenate([x, np.full((len(x), 1), 3.0, dtype=np.float32)], 1)
    names = np.array(["ant", "bee", "cow", "dog"])
    with pytest.warns(UserWarning, match="constant"):
        probe = LinearProbe(learning_rates=[1e-3, 1e-2, 1e-1], epochs=3, batch_size=16,
                            device="cpu").fit(x, names[y])
    assert len(probe.grid_results_) == 3 and probe.best_["feature"] == "features"
    xt, yt = _blobs(60, seed=7)
    xt = np.concatenate([xt, np.zeros((60, 1), dtype=np.float32)], 1)
    s = probe.predict_scores(xt)
    assert np.isfinite(s).all()
    np.testing.assert_array_equal(probe.predict(xt), names[yt])
    assert probe.score(xt, names[yt], top_k=2) == 1.0


def test_result_json_and_shared_metric(fitted):
    probe = fitted[0]
    back = LinearProbeResult.from_json(probe.result_.to_json())
    assert back == probe.result_ and back.best == probe.best_ and back.n_val == 48
    assert linear_mod.top_k_accuracy is knn_mod.top_k_accuracy


def test_logistic_probe_weight_decay_search():
    from zoolens.analyses.probes.linear import LogisticProbe

    x, y = _blobs(200, seed=8, sep=1.0)
    probe = LogisticProbe(weight_decays=[1e-4, 1e-2, 1.0, 100.0], seed=0)
    with pytest.raises(NotFittedError):
        probe.predict(x)
    probe.fit(x, y)
    assert [g["weight_decay"] for g in probe.grid_results_] == [1e-4, 1e-2, 1.0, 100.0]
    assert probe.best_["val_top1"] == max(g["val_top1"] for g in probe.grid_results_)
    # A huge decay shrinks the weights to ~0: it cannot win over a moderate one.
    assert probe.grid_results_[-1]["val_top1"] < probe.best_["val_top1"]
    assert probe.best_["weight_decay"] != 100.0
    xt, yt = _blobs(200, seed=9, sep=1.0)
    assert probe.score(xt, yt) > 0.95
    np.testing.assert_array_equal(probe.predict(xt), np.argmax(probe.predict_scores(xt), 1))
    # Binary task: two score columns ordered like classes_.
    b = LogisticProbe(weight_decays=[1e-3]).fit(x, np.where(y < 2, "lo", "hi"))
    s = b.predict_scores(xt)
    assert s.shape == (200, 2)
    assert b.score(xt, np.where(yt < 2, "lo", "hi")) > 0.95  # columns in classes_ order
