"""The pooled ridge against a numpy reference built from its definition."""
import numpy as np
import pytest

from bandit.policies.base import Action, ArmSpec


def _data(seed=0, n=60):
    rng = np.random.default_rng(seed)
    arms = ["a", "b", "c"]
    rows = []
    for _ in range(n):
        x = {"k": float(rng.uniform(-1, 1)), "m": float(rng.normal(3.0, 0.5))}
        arm = arms[int(rng.integers(3))]
        g = {"trial_exact": float(rng.uniform()), "trial_kl": float(rng.uniform())}
        r = 0.3 + 0.5 * g["trial_exact"] + 0.1 * x["k"] * (arm == "b") + 0.05 * rng.normal()
        rows.append((arm, x, g, r))
    return arms, rows


def _reference(arms, rows, lam_b, lam_w, lam_g, beta0):
    """Standardise, centre and solve the joint ridge directly from its definition."""
    X = np.array([[x["k"], x["m"]] for _, x, _, _ in rows])
    G = np.array([[g["trial_exact"], g["trial_kl"]] for _, _, g, _ in rows])
    r = np.array([r for *_, r in rows])
    Z = (X - X.mean(0)) / X.std(0)
    H = G - G.mean(0)
    c = r.mean()
    per = 3
    P = len(arms) * per + 2
    D = np.zeros((len(rows), P))
    for i, (arm, *_rest) in enumerate(rows):
        k = arms.index(arm)
        D[i, k * per] = 1.0
        D[i, k * per + 1: k * per + 3] = Z[i]
        D[i, -2:] = H[i]
    prior = np.array(([lam_b] + [lam_w] * 2) * len(arms) + [lam_g] * 2)
    mean0 = np.zeros(P)
    mean0[-2:] = beta0
    theta = np.linalg.solve(D.T @ D + np.diag(prior), D.T @ (r - c) + prior * mean0)
    rss = float(((r - c - D @ theta) ** 2).sum())
    sigma = np.sqrt((2.0 * r.var() + rss) / (2.0 + len(r)))  # residual spread, 2 pseudo-obs at var(r)
    return theta, c, X.mean(0), X.std(0), G.mean(0), D.T @ D + np.diag(prior), sigma


def test_pooled_ridge_matches_the_numpy_reference():
    from bandit.policies.pooled import PooledRidge

    arms, rows = _data()
    pol = PooledRidge(alpha=1.0, lam_intercept=1.0, lam_context=10.0, lam_action=2.0, epsilon=0.0)
    for a in arms:
        pol.add_arm(ArmSpec(a, "linear"))
    for arm, x, g, r in rows:
        pol.learn_one(arm, x, r, g)
    theta, c, mu, sd, gbar, A, sigma = _reference(arms, rows, 1.0, 10.0, 2.0, [1.0, 0.0])
    coef = pol.coefficients()
    assert coef["c"] == pytest.approx(c, abs=1e-12)
    assert coef["beta"]["trial_exact"] == pytest.approx(theta[-2], abs=1e-9)
    assert coef["beta"]["trial_kl"] == pytest.approx(theta[-1], abs=1e-9)
    for k, arm in enumerate(arms):
        assert coef["intercepts"][arm] == pytest.approx(theta[3 * k], abs=1e-9)
        assert coef["context_weights"][arm]["k"] == pytest.approx(theta[3 * k + 1], abs=1e-9)

    # Scores of a new request: mean and UCB width from the same reference.
    x = {"k": 0.4, "m": 2.5}
    acts = [Action(a, x, features={"trial_exact": 0.2 + 0.3 * i, "trial_kl": 0.5}) for i, a in enumerate(arms)]
    means, bonuses = pol.scores(acts)
    for i, a in enumerate(acts):
        v = np.zeros(len(theta))
        k = arms.index(a.arm)
        v[3 * k] = 1.0
        v[3 * k + 1: 3 * k + 3] = (np.array([x["k"], x["m"]]) - mu) / sd
        v[-2:] = np.array([a.features["trial_exact"], 0.5]) - gbar
        assert means[i] == pytest.approx(c + v @ theta, abs=1e-9)
        assert bonuses[i] == pytest.approx(sigma * np.sqrt(v @ np.linalg.solve(A, v)), rel=1e-7)


def test_before_any_reward_the_trial_signal_ranks_the_actions():
    from bandit.policies.pooled import PooledRidge

    pol = PooledRidge(epsilon=0.05)
    for a in ["x", "y", "z"]:
        pol.add_arm(ArmSpec(a, "linear"))
    acts = [Action(a, {"s": 0.1}, features={"trial_exact": v}) for a, v in zip("xyz", [0.2, 0.9, 0.5])]
    d = pol.decide(acts, np.random.default_rng(0))
    assert d.means.argmax() == 1 and d.pmf[1] == pytest.approx(0.95 + 0.05 / 3)
    assert d.pmf.min() == pytest.approx(0.05 / 3)  # the floor keeps every action evaluable


def test_learning_order_gives_bit_identical_state_and_new_features_extend_exactly():
    from bandit.policies.pooled import PooledRidge

    arms, rows = _data(seed=3, n=30)

    def fit(rows):
        pol = PooledRidge()
        for a in arms:
            pol.add_arm(ArmSpec(a, "linear"))
        for arm, x, g, r in rows:
            pol.learn_one(arm, x, r, g)
        return pol

    one, two = fit(rows), fit(rows)
    for arm in arms:
        assert np.array_equal(one.S[arm], two.S[arm]) and np.array_equal(one.t[arm], two.t[arm])
    # A feature that first appears late: earlier observations count it as 0.
    late = fit(rows[:10] + [(arm, {**x, "new": 1.0}, g, r) for arm, x, g, r in rows[10:]])
    padded = fit([(arm, {**x, "new": 0.0}, g, r) for arm, x, g, r in rows[:10]]
                 + [(arm, {**x, "new": 1.0}, g, r) for arm, x, g, r in rows[10:]])
    assert late.context_names == padded.context_names
    for arm in arms:
        assert np.array_equal(late.S[arm], padded.S[arm])


def test_an_action_without_trial_signals_is_scored_at_the_mean_signal_not_at_zero():
    """A log that mixes proposals with and without trial merges: the second kind must not be
    read as `trial_exact = 0` (that predicted −0.47 for every arm after one reward of 0.40)."""
    from bandit.policies.base import Action, ArmSpec
    from bandit.policies.pooled import PooledRidge

    pol = PooledRidge()
    for name in ("ties", "linear"):
        pol.add_arm(ArmSpec(name, name, {}))
    pol.learn_one("ties", {"f": 0.2}, 0.40, {"trial_exact": 0.875})
    pol.learn_one("linear", {"f": 0.4}, 0.60, {"trial_exact": 0.625})
    mean_signal = (0.875 + 0.625) / 2
    bare, at_mean = pol.scores([Action("ties", {"f": 0.3}, 0, {}),
                                Action("ties", {"f": 0.3}, 0, {"trial_exact": mean_signal})])[0]
    assert bare == pytest.approx(at_mean, abs=1e-12)
    assert bare > 0.3  # near the rewards' mean (0.5), not shifted down by the anchor's 1 × 0.75


def test_the_floor_decays_with_the_evidence_and_never_reaches_zero():
    """ε_n = max(ε_min, ε·√(K/(K + n))): the pmf's smallest entry is ε_n / K exactly."""
    from bandit.policies.pooled import PooledRidge

    pol = PooledRidge(epsilon=0.05, epsilon_min=0.01)
    for a in ["x", "y", "z", "w"]:
        pol.add_arm(ArmSpec(a, "linear"))
    acts = [Action(a, {"s": 0.1}, features={"trial_exact": v}) for a, v in zip("xyzw", [0.2, 0.9, 0.5, 0.1])]
    rng = np.random.default_rng(0)
    expected = {0: 0.05, 4: 0.05 * np.sqrt(4 / 8), 12: 0.05 * np.sqrt(4 / 16), 96: 0.01, 1000: 0.01}
    seen = 0
    for n, eps in expected.items():
        while seen < n:
            pol.learn_one("xyzw"[seen % 4], {"s": 0.1 * (seen % 3)}, 0.5, {"trial_exact": 0.3})
            seen += 1
        d = pol.decide(acts, rng)
        assert d.pmf.min() == pytest.approx(eps / 4, rel=1e-12)
        assert d.pmf.sum() == pytest.approx(1.0)
    # epsilon=0 turns the floor off whatever epsilon_min says
    off = PooledRidge(epsilon=0.0)
    for a in "xyzw":
        off.add_arm(ArmSpec(a, "linear"))
    assert off.decide(acts, rng).pmf.min() == 0.0


def test_an_intercept_prior_is_a_shifted_ridge_prior_on_each_arm_intercept():
    """With offsets o_k worth m rewards, the intercepts solve the same ridge with prior
    N(o_k, 1/(λ_b + m))·… — i.e. precision λ_b + m and mean m·o_k/(λ_b + m) — checked
    against the numpy reference with that prior added."""
    from bandit.policies.pooled import PooledRidge

    arms, rows = _data(seed=5, n=40)
    offsets, m = {"a": -0.2, "b": 0.15}, 2.0  # "c" has no column in the table
    pol = PooledRidge(lam_intercept=1.0, lam_context=10.0, lam_action=2.0, epsilon=0.0)
    for a in arms:
        pol.add_arm(ArmSpec(a, "linear"))
    for arm, x, g, r in rows:
        pol.learn_one(arm, x, r, g)
    before = pol.coefficients()
    pol.set_intercept_prior(offsets, m)
    assert pol.prior_strength() == 0.0  # two of its arms: it waits for a third (next test)
    pol.prior_strength = lambda: m      # here: the solve at a given strength
    coef = pol.coefficients()

    X = np.array([[x["k"], x["m"]] for _, x, _, _ in rows])
    G = np.array([[g["trial_exact"], g["trial_kl"]] for _, _, g, _ in rows])
    r = np.array([r for *_, r in rows])
    Z, H, c = (X - X.mean(0)) / X.std(0), G - G.mean(0), r.mean()
    P = len(arms) * 3 + 2
    D = np.zeros((len(rows), P))
    for i, (arm, *_rest) in enumerate(rows):
        k = arms.index(arm)
        D[i, 3 * k], D[i, 3 * k + 1: 3 * k + 3], D[i, -2:] = 1.0, Z[i], H[i]
    prec = np.array([1.0, 10.0, 10.0] * len(arms) + [2.0, 2.0])
    shift = np.zeros(P)
    shift[-2] = 2.0 * 1.0  # λ_β·β₀ on trial_exact
    for arm, o in offsets.items():
        k = arms.index(arm)
        prec[3 * k] += m
        shift[3 * k] += m * o
    theta = np.linalg.solve(D.T @ D + np.diag(prec), D.T @ (r - c) + shift)
    for k, arm in enumerate(arms):
        assert coef["intercepts"][arm] == pytest.approx(theta[3 * k], abs=1e-9)
    assert coef["beta"]["trial_exact"] == pytest.approx(theta[-2], abs=1e-9)
    assert coef["intercepts"]["a"] < before["intercepts"]["a"] and coef["intercepts"]["b"] > before["intercepts"]["b"]
    # strength 0 takes it back out exactly
    del pol.prior_strength
    pol.set_intercept_prior(offsets, 0.0)
    assert pol.coefficients()["intercepts"] == before["intercepts"]
    with pytest.raises(Exception, match="finite"):
        pol.set_intercept_prior({"a": float("nan")}, 1.0)


def test_a_prior_the_live_rewards_contradict_fades_and_one_they_confirm_keeps_its_strength():
    """prior_strength() = min(m, σ²/τ̂²) once ≥ 3 of the prior's arms have rewards (0 before), τ̂² from the
    spread of (live arm mean − prior offset) less σ²/n_k — checked against numpy, both ways."""
    from bandit.policies.pooled import PooledRidge

    rng = np.random.default_rng(4)
    offsets = {"a": 0.0, "b": -0.1, "c": -0.2, "d": -0.3}
    truth_agree = {"a": 0.6, "b": 0.5, "c": 0.4, "d": 0.3}
    truth_clash = {"a": 0.3, "b": 0.6, "c": 0.5, "d": 0.6}

    def fed(truth, n=12):
        pol = PooledRidge()
        for a in offsets:
            pol.add_arm(ArmSpec(a, "linear"))
        pol.set_intercept_prior(offsets, 2.0)
        rewards = {a: truth[a] + 0.02 * rng.standard_normal(n) for a in offsets}
        for i in range(n):
            for a in offsets:
                pol.learn_one(a, {"s": float(i % 3)}, float(rewards[a][i]))
        return pol, rewards

    for truth, fades in ((truth_agree, False), (truth_clash, True)):
        pol, rewards = fed(truth)
        means = {a: r.mean() for a, r in rewards.items()}
        sigma2 = sum(((r - r.mean()) ** 2).sum() for r in rewards.values()) / (4 * 12 - 4)
        d = np.array([means[a] - offsets[a] for a in offsets])
        tau2 = d.var(ddof=1) - sigma2 / 12
        expected = 2.0 if tau2 <= 0 else min(2.0, sigma2 / tau2)
        assert pol.prior_strength() == pytest.approx(expected, rel=1e-9)
        assert (pol.prior_strength() < 0.1) == fades
    # two arms with rewards are too few to test the prior: it waits (strength 0)
    pol = PooledRidge()
    for a in offsets:
        pol.add_arm(ArmSpec(a, "linear"))
    pol.set_intercept_prior(offsets, 2.0)
    pol.learn_one("a", {}, 0.1)
    pol.learn_one("b", {}, 0.9)
    assert pol.prior_strength() == 0.0
