"""Per-arm statistics of one database."""
from __future__ import annotations

from bandit.policies.ridge import Posterior
from bandit.service.records import ArmStats
from bandit.service.reward import RIDGE, chosen_context


def arm_stats(store) -> list[ArmStats]:
    """Per arm: proposals, pulls (rewarded), mean reward, posterior mean at the average
    context of all proposals, and share of proposals."""
    total = store.count_events()
    sums: dict[str, float] = {}
    count = 0
    for ev in store.events():
        for k, v in chosen_context(ev).items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
    avg = {k: v / count for k, v in sums.items()} if count else {}
    out = []
    for r in store.arm_stats():
        row = store.posterior(RIDGE, r["arm"])
        post_mean = None
        if row is not None:
            post = Posterior.from_blobs(row["schema"], row["lam"], row["A"], row["b"], row["n"])
            post_mean = float(post.mean_and_width([avg])[0][0])
        out.append(ArmStats(arm=r["arm"], operator=r["operator"], status=r["status"], proposals=r["proposals"],
                            pulls=r["pulls"], mean_reward=r["mean_reward"], posterior_mean=post_mean,
                            share=r["proposals"] / total if total else 0.0))
    return out
