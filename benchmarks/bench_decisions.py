"""How much of the gap between the best fixed arm and the per-request oracle each policy closes.

    python benchmarks/bench_decisions.py --table /tmp/zoo-outcomes.csv --zoo ~/.cache/simmerge/zoo/tiny
    python benchmarks/bench_decisions.py --synthetic

Gap closure = (policy − best fixed arm in hindsight) / (oracle − best fixed arm), on the mean
reward of the same requests, per seed; printed as the mean with a 95% Student-t interval.
- single pass: every row once, in a seeded random order;
- ×R recurrence, last half: the rows come back R times (R shuffled passes); the figure is
  over the second half of all requests.
Only the chosen arm's reward is revealed to the policy (replay of a full-information table).

Policies: any registered name, with `+trial` to give it the actions' trial-merge signals
(`pooled+trial`, `linucb+trial`, ...; `pooled-ts` = pooled with Thompson sampling), and
`signal` (zero-shot: the arm with the highest averaged trial agreement, no learning).
With `--zoo`, the trial features come from the zoo's per-action cache (computed when
missing, which takes minutes); `--synthetic` uses the package's synthetic generator and adds
a noisy "trial signal" = the noiseless reward + N(0, 0.05²) per action — a table no design
here was tuned on.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bandit.policies.base import Action, ArmSpec  # noqa: E402
from bandit.offline.replay import gap_closure, interval  # noqa: E402


def load_table(path: str, zoo_dir: str | None):
    from bandit.offline.outcomes import read_outcomes, table_records
    from zoo.trial_features import add_trial_columns

    rows = table_records(read_outcomes(path))
    arms = [k[2:] for k in rows[0] if k.startswith("r:")]
    if zoo_dir is not None and not any(k.startswith("a:") for k in rows[0]):
        from zoo.manifest import load_zoo

        rows = add_trial_columns(rows, load_zoo(zoo_dir), arms)
    contexts = [{k[2:]: float(v) for k, v in r.items() if k.startswith("f:")} for r in rows]
    features = [{arm: {k.split(":", 2)[2]: float(v) for k, v in r.items() if k.startswith(f"a:{arm}:")}
                 for arm in arms} for r in rows]
    R = np.array([[float(r[f"r:{a}"]) for a in arms] for r in rows])
    return arms, contexts, features, R


def synthetic_table(seed: int = 0, rows: int = 90, signal_noise: float = 0.05):
    from bandit.offline.outcomes import synthetic_outcomes

    t = synthetic_outcomes(n_rows=rows, seed=seed)
    rng = np.random.default_rng([seed, 7])
    signal = t.expected + rng.normal(0.0, signal_noise, size=t.expected.shape)
    features = [{arm: {"trial_exact": float(signal[i, j])} for j, arm in enumerate(t.arms)} for i in range(len(t))]
    return t.arms, t.contexts(), features, t.R


def classification_table(name: str, rows: int = 300, seed: int = 0):
    """A table from outside model merging: a scikit-learn toy classification dataset made a
    bandit the usual way (Dudík et al. 2011) — each class an arm, reward 1 for the true class,
    contexts the standardised features. No trial signals. Needs scikit-learn (not a
    dependency of simmerge; `pip install scikit-learn`)."""
    from sklearn import datasets

    data = getattr(datasets, f"load_{name}")()
    rng = np.random.default_rng([seed, 11])
    take = rng.permutation(len(data.target))[:rows]
    X, y = data.data[take].astype(np.float64), data.target[take]
    X = (X - X.mean(axis=0)) / np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
    classes = sorted(set(int(c) for c in data.target))
    arms = [f"class{c}" for c in classes]
    contexts = [{f"x{j}": float(v) for j, v in enumerate(row)} for row in X]
    R = (y[:, None] == np.array(classes)[None, :]).astype(np.float64)
    return arms, contexts, [{a: {} for a in arms} for _ in contexts], R


def make(name: str):
    """`NAME[+trial]`: a registered policy with its defaults; `pooled-ts` is pooled with
    Thompson sampling. `+trial` gives the policy the actions' trial signals."""
    from bandit.policies.registry import make_policy

    base = name.removesuffix("+trial")
    if base == "pooled-ts":
        return make_policy("pooled", {"exploration": "ts"})
    return make_policy(base)


def run(name: str, arms, contexts, features, R, seed: int, passes: int) -> tuple[np.ndarray, np.ndarray]:
    """(rewards earned, rows in arrival order) of one seeded run."""
    rng = np.random.default_rng([seed, 1])
    order = np.concatenate([np.random.default_rng([seed, p]).permutation(len(R)) for p in range(passes)])
    use_trial = name.endswith("+trial") or name == "signal"
    earned = np.empty(len(order))
    if name == "signal":
        for t, row in enumerate(order):
            scores = np.array([features[row][a].get("trial_exact", 0.0) for a in arms])
            earned[t] = R[row, int(np.flatnonzero(scores == scores.max())[0])]
        return earned, order
    policy = make(name)
    for a in arms:
        policy.add_arm(ArmSpec(a, "linear"))
    for t, row in enumerate(order):
        acts = [Action(a, contexts[row], features=features[row][a] if use_trial else {}) for a in arms]
        d = policy.decide(acts, rng)
        r = float(R[row, d.chosen])
        policy.learn_decision(acts, d.chosen, r, d.prob)
        earned[t] = r
    return earned, order


def closure(earned, order, R, last_half: bool) -> float:
    fixed_arm = int(R.mean(axis=0).argmax())
    if last_half:
        earned, order = earned[len(earned) // 2:], order[len(order) // 2:]
    return gap_closure(earned, R[order, fixed_arm], R[order].max(axis=1))


def fmt(iv) -> str:
    return f"{iv['mean']:+.2f} [{iv['low']:+.2f}, {iv['high']:+.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", help="outcome table (CSV/JSONL) with r: and f: columns (a: optional)")
    ap.add_argument("--zoo", help="zoo folder whose per-action trial features fill the a: columns")
    ap.add_argument("--synthetic", action="store_true", help="the synthetic generator's table instead")
    ap.add_argument("--classification", metavar="NAME",
                    help="a scikit-learn toy dataset as a bandit table (iris, wine, breast_cancer, digits)")
    ap.add_argument("--synthetic-seed", type=int, default=0, help="which synthetic table (its generator seed)")
    ap.add_argument("--signal-noise", type=float, default=0.05, help="sd of the synthetic trial signal's noise")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--recurrence", type=int, default=10)
    ap.add_argument("--policies", default="pooled+trial,pooled,signal,linucb")
    args = ap.parse_args()
    if args.synthetic:
        arms, contexts, features, R = synthetic_table(args.synthetic_seed, signal_noise=args.signal_noise)
        label = (f"synthetic seed {args.synthetic_seed} (90 rows, signal = noiseless reward "
                 f"+ N(0, {args.signal_noise:g}²))")
    elif args.classification:
        arms, contexts, features, R = classification_table(args.classification)
        label = f"{args.classification} (scikit-learn) as a bandit: {len(arms)} classes, reward 1 for the true class"
    elif args.table:
        arms, contexts, features, R = load_table(args.table, args.zoo)
        label = args.table
    else:
        ap.error("give --table or --synthetic")
    fixed = R.mean(axis=0)
    print(f"{label}: {len(R)} rows × {len(arms)} arms; best fixed arm {arms[int(fixed.argmax())]} "
          f"{fixed.max():.4f}, oracle {R.max(axis=1).mean():.4f}")
    if features and features[0][arms[0]]:
        sig = np.array([[f[a].get("trial_exact", np.nan) for a in arms] for f in features])
        print(f"corr(trial_exact, reward) over all actions: {np.corrcoef(sig.ravel(), R.ravel())[0, 1]:.3f}")
    print(f"{'policy':<16} {'single pass':>22} {f'x{args.recurrence} last half':>22} {'seconds':>8}")
    for name in args.policies.split(","):
        t0 = time.perf_counter()
        single = [closure(*run(name, arms, contexts, features, R, s, 1), R, False) for s in range(args.seeds)]
        rec = [closure(*run(name, arms, contexts, features, R, s, args.recurrence), R, True)
               for s in range(args.seeds)]
        print(f"{name:<16} {fmt(interval(single)):>22} {fmt(interval(rec)):>22} {time.perf_counter() - t0:>8.1f}",
              flush=True)


if __name__ == "__main__":
    main()
