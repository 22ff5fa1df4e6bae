"""The ridge posterior against closed forms, and the plain-Python update against numpy."""
import numpy as np
import pytest

from bandit.policies import ridge
from bandit.policies.exploration import epsilon_floor, sample
from bandit.policies.linucb import LinUCB
from bandit.policies.base import Action, ArmSpec
from bandit.policies.posterior import Posterior


def closed_form(X, r, lam):
    A = lam * np.eye(X.shape[1]) + X.T @ X
    b = X.T @ r
    return A, b, np.linalg.solve(A, b)


def test_posterior_matches_closed_form_on_random_data():
    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(6)]
    F = rng.uniform(-1, 1, (500, 6))
    r = F @ rng.normal(size=6) + 0.3 + rng.normal(0, 0.1, 500)
    post = Posterior.prior(lam=0.7)
    for row, y in zip(F, r):
        post.learn(dict(zip(names, row)), y)
    X = np.hstack([np.ones((500, 1)), F])
    A, b, theta = closed_form(X, r, 0.7)
    np.testing.assert_allclose(post.A, A, rtol=0, atol=1e-9)
    np.testing.assert_allclose(post.b, b, rtol=0, atol=1e-9)
    np.testing.assert_allclose(post.theta, theta, rtol=0, atol=1e-9)
    x = X[:3]
    mean, width = post.mean_and_width([dict(zip(names, row)) for row in F[:3]])
    np.testing.assert_allclose(mean, x @ theta, atol=1e-9)
    np.testing.assert_allclose(width, np.sqrt(np.einsum("ij,jk,ik->i", x, np.linalg.inv(A), x)), atol=1e-9)
    assert post.n == 500


def test_linucb_score_by_hand():
    # λ = 1, one feature, one observation x = (1, 0.5), r = 1:
    # A = [[2, .5], [.5, 1.25]], det 2.25, θ = A⁻¹b = (1/2.25, 0.5/2.25).
    pol = LinUCB(alpha=2.0, lam=1.0, epsilon=0.0)
    pol.add_arm(ArmSpec("a", "linear"))
    pol.learn_one("a", {"k": 0.5}, 1.0)
    means, bonuses = pol.scores([Action("a", {"k": 1.0})])
    theta = np.array([1 / 2.25, 0.5 / 2.25])
    A_inv = np.array([[1.25, -0.5], [-0.5, 2.0]]) / 2.25
    x = np.array([1.0, 1.0])
    assert means[0] == pytest.approx(theta @ x, abs=1e-12)
    assert bonuses[0] == pytest.approx(2.0 * np.sqrt(x @ A_inv @ x), abs=1e-12)
    # an unseen feature adds x²/λ to the variance and nothing to the mean
    m2, b2 = pol.scores([Action("a", {"k": 1.0, "new": 0.5})])
    assert m2[0] == pytest.approx(means[0], abs=1e-12)
    assert b2[0] == pytest.approx(2.0 * np.sqrt(x @ A_inv @ x + 0.25), abs=1e-12)


@pytest.mark.parametrize("refactor_every", [10**9, 256])
def test_sherman_morrison_tracks_direct_inverse_over_10k_updates(refactor_every):
    rng = np.random.default_rng(1)
    names = [f"f{i}" for i in range(8)]
    post = Posterior.prior(lam=1.0, refactor_every=refactor_every)
    for _ in range(10_000):
        post.learn(dict(zip(names, rng.uniform(-1, 1, 8))), float(rng.normal()))
    direct = np.linalg.inv(post.A)
    assert np.max(np.abs(post.A_inv - direct)) < 1e-9
    np.testing.assert_allclose(post.theta, np.linalg.solve(post.A, post.b), atol=1e-9)


def test_plain_python_update_is_bit_identical_to_numpy():
    rng = np.random.default_rng(2)
    post = Posterior.prior(lam=1.0)
    schema, A, b = [], *ridge.prior(1.0, 1)
    for step in range(300):
        # features appear over time, some are zero, some negative
        ctx = {f"f{i}": float(v) for i, v in enumerate(rng.uniform(-1, 1, 1 + step % 5)) if i != 2}
        if step % 7 == 0:
            ctx["f0"] = 0.0
        y = float(rng.normal())
        post.learn(ctx, y)
        schema, A, b = ridge.extend(schema, A, b, 1.0, ridge.new_names(schema, ctx))
        ridge.update(A, b, ridge.vector(schema, ctx), y)
    assert schema == post.schema
    a_np, b_np = post.blobs()
    assert ridge.dump(A) == a_np and ridge.dump(b) == b_np


def test_new_feature_extension_equals_closed_form_with_zeros():
    post = Posterior.prior(lam=2.0)
    rows = [({"a": 0.5}, 1.0), ({"a": -0.2, "b": 0.9}, 0.0), ({"b": 0.3}, 0.5)]
    for ctx, y in rows:
        post.learn(ctx, y)
    X = np.array([[1, 0.5, 0.0], [1, -0.2, 0.9], [1, 0.0, 0.3]])
    A, b, theta = closed_form(X, np.array([1.0, 0.0, 0.5]), 2.0)
    np.testing.assert_allclose(post.A, A, atol=1e-12)
    np.testing.assert_allclose(post.A_inv, np.linalg.inv(A), atol=1e-12)
    np.testing.assert_allclose(post.theta, theta, atol=1e-12)


def test_warm_start_shrinks_donor():
    donor = Posterior.prior(lam=1.0)
    for v, y in [(0.1, 1.0), (0.9, 0.0), (0.4, 0.3)]:
        donor.learn({"k": v}, y)
    s = 0.1
    child = donor.shrunk_copy(s)
    np.testing.assert_allclose(child.A, np.eye(2) + s * (donor.A - np.eye(2)), atol=1e-15)
    np.testing.assert_allclose(child.b, s * donor.b, atol=1e-15)
    assert child.n == 0


def test_epsilon_floor_pmf():
    rng = np.random.default_rng(0)
    for k in (1, 2, 8, 20):
        scores = rng.normal(size=k)
        pmf = epsilon_floor(scores, 0.05, rng)
        assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
        assert pmf.min() >= 0.05 / k - 1e-15
        assert pmf[np.argmax(scores)] == pytest.approx(0.95 + 0.05 / k)


def test_ties_broken_by_seeded_rng():
    scores = np.array([1.0, 3.0, 3.0, 3.0, 0.0])
    winners = {int(np.argmax(epsilon_floor(scores, 0.1, np.random.default_rng(s)))) for s in range(60)}
    assert winners == {1, 2, 3}
    a = epsilon_floor(scores, 0.1, np.random.default_rng(7))
    b = epsilon_floor(scores, 0.1, np.random.default_rng(7))
    assert np.array_equal(a, b)


def test_sample_follows_pmf():
    rng = np.random.default_rng(3)
    pmf = np.array([0.7, 0.2, 0.1])
    draws = np.bincount([sample(pmf, rng) for _ in range(20_000)], minlength=3) / 20_000
    np.testing.assert_allclose(draws, pmf, atol=0.015)
