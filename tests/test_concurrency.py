"""Several processes proposing and rewarding against one database lose nothing."""
import subprocess
import sys
from pathlib import Path

from bandit.service import Service

ROOT = Path(__file__).resolve().parents[1]

WORKER = """
import sys
sys.path.insert(0, {root!r})
from bandit.service import Service
svc = Service({db!r})
worker = int(sys.argv[1])
for i in range({cycles}):
    p = svc.propose("t%d" % (i % 3), {{"a": (i % 10) / 10, "w": worker / 4}})
    svc.reward(p.event_id, ((i * 7 + worker) % 11) / 10)
    if i % 10 == 0:  # a duplicate of the same value must be a no-op
        svc.reward(p.event_id, ((i * 7 + worker) % 11) / 10)
print("done", worker)
"""


def test_four_processes_lose_nothing(tmp_path):
    db = str(tmp_path / "conc.db")
    Service(db)  # create the schema once, so all workers race on data, not DDL
    workers, cycles = 4, 100
    code = WORKER.format(root=str(ROOT), db=db, cycles=cycles)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(w)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(workers)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    svc = Service(db)
    store = svc.store
    assert store.count_events() == workers * cycles
    assert store.count_rewards() == workers * cycles
    # every reward counted once: per arm, posterior n equals that arm's rewards
    pulls = {r["arm"]: r["pulls"] for r in store.arm_stats()}
    for row in store.posteriors("ridge"):
        assert row["n"] == pulls[row["arm"]]
    assert sum(pulls.values()) == workers * cycles
    rep = svc.rebuild(check=True)
    assert rep.clean and rep.max_abs_diff == 0.0, rep
    assert rep.rewards == workers * cycles
