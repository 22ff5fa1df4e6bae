"""`bandit serve` under load, over real HTTP on loopback, and through a kill -9.

    python benchmarks/bench_serve.py [--clients 16] [--cycles 500] [--features 8]

Phase 1: CLIENTS threads, each with its own keep-alive connection, run CYCLES
propose+reward cycles against a fresh server. Prints throughput (cycles/s), p50/p99 latency
of a request and of a cycle, then checks against the database: 0 lost (every acknowledged
reward stored with its value), 0 double-counted (each arm's posterior learned exactly its
rewards), and `bandit rebuild --check` exact.

Phase 2: the same load on a second database; the server is killed with SIGKILL while the
clients run, then restarted; clients whose request died retry it (a reward is idempotent:
the same value twice is a no-op). Checks: every reward acknowledged before the kill is
stored once with its value, no reward applied twice, rebuild exact.

Targets: ≥ 500 cycles/s on 2 cores, p99 < 100 ms.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: str, port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from cli import main; main()", "serve", "--db", db, "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/v1/health")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server did not start: {proc.stderr.read().decode()[-2000:]}")


class Load:
    """Client threads; each records the rewards the server acknowledged."""

    def __init__(self, port: int, clients: int, cycles: int, features: int, retry: bool):
        self.port, self.clients, self.cycles, self.features, self.retry = port, clients, cycles, features, retry
        self.acked: dict[int, float] = {}  # event id -> reward value, for every 200 to a reward
        self.proposed: set[int] = set()
        self.request_ms: list[float] = []
        self.cycle_ms: list[float] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def _post(self, conn_box: list, path: str, body: dict) -> tuple[int, dict]:
        payload = json.dumps(body)
        while True:
            try:
                if conn_box[0] is None:
                    conn_box[0] = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                t0 = time.perf_counter()
                conn_box[0].request("POST", path, payload, {"Content-Type": "application/json"})
                r = conn_box[0].getresponse()
                data = json.loads(r.read())
                with self.lock:
                    self.request_ms.append((time.perf_counter() - t0) * 1e3)
                return r.status, data
            except (OSError, http.client.HTTPException, json.JSONDecodeError):
                conn_box[0] = None
                if not self.retry:
                    raise
                time.sleep(0.2)  # the server is down: wait for it to come back

    def client(self, k: int) -> None:
        rng = random.Random(k)
        conn_box: list = [None]
        names = [f"f{i}" for i in range(self.features)]
        for i in range(self.cycles):
            t0 = time.perf_counter()
            ctx = {n: round(rng.uniform(-1, 1), 6) for n in names}
            try:
                status, p = self._post(conn_box, "/v1/propose", {"task": f"task{k % 4}", "context": ctx,
                                                                 "seed": k * 100000 + i})
                if status != 200:
                    self.errors.append(f"propose {status}: {p}")
                    continue
                value = round(rng.random(), 6)
                status, r = self._post(conn_box, f"/v1/events/{p['event_id']}/reward", {"value": value})
            except (OSError, http.client.HTTPException, json.JSONDecodeError) as e:
                self.errors.append(f"{type(e).__name__}: {e}")
                continue
            with self.lock:
                self.proposed.add(p["event_id"])
                if status == 200:
                    self.acked[p["event_id"]] = value
                    self.cycle_ms.append((time.perf_counter() - t0) * 1e3)
                else:
                    self.errors.append(f"reward {status}: {r}")

    def run(self) -> float:
        threads = [threading.Thread(target=self.client, args=(k,)) for k in range(self.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0


def check_database(db: str, acked: dict[int, float]) -> dict:
    """Lost, double-counted and rebuild, from the database itself."""
    from bandit.service import Service
    from store import Store

    with Store(db) as st:
        stored = {r["event_id"]: r["value"] for r in st.conn.execute("SELECT event_id, value FROM rewards")}
        per_arm: dict[str, int] = {}
        for r in st.rewards_in_order():
            per_arm[r["arm"]] = per_arm.get(r["arm"], 0) + 1
        learned = {p["arm"]: p["n"] for p in st.posteriors("ridge")}
        n_rewards = st.count_rewards()
    lost = [e for e, v in acked.items() if stored.get(e) != v]
    double = {a: (learned.get(a, 0), n) for a, n in per_arm.items() if learned.get(a, 0) != n}
    svc = Service(db)
    rep = svc.rebuild(check=True)
    svc.store.close()
    return {"acknowledged": len(acked), "stored": n_rewards, "lost": len(lost),
            "double_counted_arms": double, "rebuild_clean": rep.clean, "rebuild_max_abs_diff": rep.max_abs_diff}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc): the server's cost per cycle
    independent of what else the machine is running."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else float("nan")


def phase_load(args) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "load.db")
        port = free_port()
        server = start_server(db, port)
        try:
            warm = Load(port, 2, 20, args.features, retry=False)
            warm.run()
            load = Load(port, args.clients, args.cycles, args.features, retry=False)
            cpu0, client0 = cpu_seconds(server.pid), time.process_time()
            seconds = load.run()
            server_cpu, client_cpu = cpu_seconds(server.pid) - cpu0, time.process_time() - client0
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        acked = {**warm.acked, **load.acked}
        result = check_database(db, acked)
    cycles = len(load.cycle_ms)
    rate = cycles / seconds
    print(f"load: {args.clients} clients x {args.cycles} cycles, {args.features} features, "
          f"{cycles} cycles in {seconds:.1f} s = {rate:.0f} cycles/s (target >= 500)")
    print(f"  request latency p50 {pct(load.request_ms, 50):.1f} ms  p99 {pct(load.request_ms, 99):.1f} ms "
          f"(target p99 < 100 ms);  cycle p50 {pct(load.cycle_ms, 50):.1f} ms  p99 {pct(load.cycle_ms, 99):.1f} ms")
    per_cycle = 1e3 * server_cpu / max(cycles, 1)
    print(f"  server CPU {per_cycle:.2f} ms per cycle (= {1e3 / per_cycle:.0f} cycles/s on one free core); "
          f"clients' CPU {1e3 * client_cpu / max(cycles, 1):.2f} ms per cycle; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"  errors {len(load.errors)}  acknowledged {result['acknowledged']}  stored {result['stored']}  "
          f"lost {result['lost']}  double-counted {result['double_counted_arms'] or 0}  "
          f"rebuild --check {'exact' if result['rebuild_clean'] else 'DIFFERS'} "
          f"(max |diff| {result['rebuild_max_abs_diff']:.3g})")
    return (not load.errors and result["lost"] == 0 and not result["double_counted_arms"]
            and result["rebuild_clean"] and result["stored"] == result["acknowledged"])


def phase_kill(args) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "kill.db")
        port = free_port()
        server = start_server(db, port)
        load = Load(port, args.clients, args.kill_cycles, args.features, retry=True)
        runner = threading.Thread(target=load.run)
        runner.start()
        time.sleep(args.kill_after)
        with load.lock:
            acked_before = dict(load.acked)
        server.send_signal(signal.SIGKILL)
        server.wait()
        killed_at = len(acked_before)
        time.sleep(1.0)
        server = start_server(db, port)  # same port: the clients reconnect and retry
        runner.join()
        with load.lock:
            acked = dict(load.acked)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        result = check_database(db, acked)
        before = check_database(db, acked_before)
    print(f"kill -9: killed after {killed_at} acknowledged rewards, restarted; clients finished "
          f"{len(acked)} cycles")
    print(f"  acknowledged before the kill and stored: {killed_at - before['lost']}/{killed_at};  "
          f"all acknowledged {result['acknowledged']}  stored {result['stored']}  lost {result['lost']}  "
          f"double-counted {result['double_counted_arms'] or 0}  "
          f"rebuild --check {'exact' if result['rebuild_clean'] else 'DIFFERS'}")
    # Stored rewards may exceed the acknowledged ones: a reward committed just before the kill
    # whose answer never arrived (its client retried and got the no-op "duplicate").
    return (before["lost"] == 0 and result["lost"] == 0 and not result["double_counted_arms"]
            and result["rebuild_clean"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--cycles", type=int, default=500, help="cycles per client")
    ap.add_argument("--features", type=int, default=8)
    ap.add_argument("--kill-cycles", type=int, default=150, help="cycles per client in the kill -9 phase")
    ap.add_argument("--kill-after", type=float, default=3.0, help="seconds of load before the kill")
    ap.add_argument("--skip-kill", action="store_true")
    args = ap.parse_args()
    ok = phase_load(args)
    if not args.skip_kill:
        ok = phase_kill(args) and ok
    print("all checks passed" if ok else "CHECKS FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
