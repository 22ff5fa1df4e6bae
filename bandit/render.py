"""Every command's output: the text a person reads, and the payload `--json` prints (the
same payload the HTTP server answers with).

`payload(x)` turns a record, a list of records or a dict into plain JSON data; `dumps(x)`
is the `--json` text; the other functions are one command's text each. Nothing here
computes or stores anything.
"""
from __future__ import annotations

import json
from typing import Any


def payload(obj: Any) -> Any:
    """Records (anything with `to_dict()`) and lists of them as plain JSON data."""
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (list, tuple)):
        return [payload(o) for o in obj]
    if isinstance(obj, dict):
        return {k: payload(v) for k, v in obj.items()}
    return obj


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "__dict__"):
        return vars(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(obj: Any) -> str:
    return json.dumps(payload(obj), indent=2, sort_keys=False, default=_json_default)


def params(p: dict) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in p.items()) or "(defaults)"


# -- the loop ----------------------------------------------------------------------------
def proposal(p, *, merging: bool = False) -> str:
    """`merging`: a merge follows (--merge-to), so no hint how to run one."""
    pair = f"  merge {p.model_a} + {p.model_b}" if p.model_a else ""
    lines = [f"event {p.event_id}: {p.arm}  ({p.operator} {params(p.params)}){pair}",
             f"  task {p.task}   policy {p.policy}   p={p.prob:.3f}",
             f"  predicted reward {p.predicted:.4f}   bonus {p.bonus:.4f}"]
    if p.trial is not None:
        lines.append(f"  trial merges: {p.trial['merges']} in {p.trial['seconds']:.1f} s"
                     + (f" (budget {p.trial['budget']})" if p.trial.get("budget") else ""))
    if p.model_a and not merging:
        lines.append(f"  merge it with: bandit merge --event {p.event_id} --out DIR")
    return "\n".join(lines)


def trial_setting(out: dict) -> str:
    return (f"trial merges {'on' if out['on'] else 'off'}"
            + (f", budget {out['budget']}" if out["on"] and out["budget"] else ""))


def proposal_footer(p) -> str:
    return f"  report the result with: bandit reward {p.event_id} VALUE"


def event_merge(result) -> str:
    return (f"merged {result.tensors} tensors with {result.operator} into {result.path} "
            f"({result.seconds:.1f} s on {result.device})")


def reward(out) -> str:
    if out.duplicate:
        return f"event {out.event_id}: reward {out.value:g} was recorded already; nothing changed"
    return f"event {out.event_id}: reward {out.value:g} recorded for {out.arm} ({out.pulls} rewards)"


# -- catalog -----------------------------------------------------------------------------
def arms(rows) -> str:
    lines = []
    for a in rows:
        extra = f"  (warm-started from {a.warm_start_from})" if a.warm_start_from else ""
        status = "" if a.status == "active" else f"  [{a.status}]"
        lines.append(f"{a.name:<20} {a.operator:<18} {params(a.params)}{extra}{status}")
    return "\n".join(lines)


def arm_added(arm, shrink: float) -> str:
    how = f"warm-started from {arm.warm_start_from} (shrink {shrink:g})" if arm.warm_start_from else "from the prior"
    return f"added arm {arm.name}: {arm.operator} {params(arm.params)}, {how}"


def arm_retired(arm) -> str:
    return f"retired arm {arm.name}"


def arm_retired_payload(arm) -> dict:
    return {"name": arm.name, "status": arm.status}


def task_added(task) -> str:
    what = "added" if task.new else "updated"
    return f"{what} task {task.name}" + (f" with {task.probes} probes" if task.probes else "")


def tasks(rows) -> str:
    return "\n".join(f"{t.name:<24} probes {t.n_probes:>4}   events {t.events:>5}" for t in rows)


def model_added(m) -> str:
    of = f" (fine-tune of {m.base})" if m.base else ""
    return (f"registered {m.name}{of}: {m.tensors} tensors, {m.bytes / 1e6:.1f} MB, "
            f"fingerprint {m.fingerprint[:12]}" + (f", {m.probes} probes" if m.probes is not None else ""))


def models(rows) -> str:
    return "\n".join(f"{r.name:<20} base {r.base or '-':<14} {r.path}" for r in rows)


def features(f) -> str:
    lines = [f"{f.model_a} vs {f.model_b} ({'cached' if f.cached else 'computed'}):"]
    lines += [f"  {k:<22} {v: .6f}" for k, v in f.features.items()]
    return "\n".join(lines)


def catalog_features(rows) -> str:
    """Every pair of a catalog: how many were computed, and a few telling features per pair."""
    computed = sum(not f.cached for f in rows)
    lines = [f"{len(rows)} ordered pairs: {computed} computed, {len(rows) - computed} from the cache"]
    if rows:
        shown = [n for n in ("kinship_cos", "kinship_pcc", "sign_agreement", "topk_overlap", "kl_mean", "top1_agreement")
                 if n in rows[0].features]
        width = max(len(f"{f.model_a} -> {f.model_b}") for f in rows)
        lines.append(f"  {'pair':<{width}}  " + "  ".join(f"{n:>14}" for n in shown))
        lines += [f"  {f.model_a + ' -> ' + f.model_b:<{width}}  " + "  ".join(f"{f.features[n]:>14.6f}" for n in shown)
                  for f in rows]
    return "\n".join(lines)


# -- policy, stats, rebuild -----------------------------------------------------------------
def policy(info) -> str:
    return f"live policy: {info.label}  ({params(info.effective)})"


def stats(rows) -> str:
    lines = [f"{'arm':<20} {'proposals':>9} {'pulls':>6} {'mean':>8} {'post.mean':>9} {'share':>6}"]
    for r in rows:
        mean = "-" if r.mean_reward is None else f"{r.mean_reward:.4f}"
        post = "-" if r.posterior_mean is None else f"{r.posterior_mean:.4f}"
        flag = "" if r.status == "active" else f"  [{r.status}]"
        lines.append(f"{r.arm:<20} {r.proposals:>9} {r.pulls:>6} {mean:>8} {post:>9} {r.share:>6.1%}{flag}")
    return "\n".join(lines)


def rebuild(rep) -> str:
    verdict = "match the live posteriors" if rep.clean else f"DIFFER for {', '.join(rep.mismatched)}"
    return (f"{rep.arms} arms from {rep.rewards} rewards: recomputed posteriors {verdict} "
            f"(max |diff| {rep.max_abs_diff:.3g})" + ("; written" if rep.written else ""))


# -- merging -----------------------------------------------------------------------------
def merge_result(result) -> str:
    return (f"merged {result.tensors} tensors with {result.operator} into {result.path} "
            f"({result.shards} shard(s), {result.bytes_written / 1e6:.1f} MB, "
            f"{result.seconds:.1f} s on {result.device})")


def operators(specs) -> str:
    lines = []
    for s in specs:
        most = "+" if s.max_models is None else ("" if s.max_models == s.min_models else f"-{s.max_models}")
        lines.append(f"{s.name}  (base: {s.base}; models: {s.min_models}{most})  {s.description}")
        for p in s.params:
            scope = "per model" if p.per_model else "global"
            lines.append(f"    {p.name}={json.dumps(p.default)}  {p.type}, {scope}" + (f"  {p.help}" if p.help else ""))
    return "\n".join(lines)


# -- offline evaluation --------------------------------------------------------------------
def _ci(x: dict, fmt: str = "{:.3f}") -> str:
    if x.get("mean", x.get("value")) is None:
        return "-"
    v = x.get("mean", x.get("value"))
    return f"{fmt.format(v)} [{fmt.format(x['low'])}, {fmt.format(x['high'])}]"


def replay(rep: dict) -> str:
    several = rep.get("requests", rep["rows"]) != rep["rows"]
    passes = f", {rep['passes']} passes ({rep['rounds']} rounds)" if rep.get("passes", 1) > 1 else ""
    out = [f"{rep['rows']} rows" + (f" in {rep['requests']} requests" if several else "")
           + f", {len(rep['arms'])} arms, {rep['seeds']} seeds{passes}; "
           f"best fixed arm {rep['best_fixed_arm']} (mean {rep['best_fixed_mean']:.4f}"
           + (" on the first-listed candidate" if several else "") + f"), oracle mean {rep['oracle_mean']:.4f}"]
    if several:
        out.append(f"best fixed arm on each request's best candidate (hindsight): "
                   f"{rep['best_fixed_arm_best_candidate']} (mean {rep['best_fixed_best_candidate_mean']:.4f})")
    if rep.get("prior"):
        pr = rep["prior"]
        out.append(f"prior from {pr['source']}: strength {pr['strength']:.2f} pseudo-rewards per arm, centred on "
                   + ("the live mean once every arm has a reward" if pr.get("centre") == "live"
                      else f"the table's mean {pr['level']:.4f}"))
    out.append("mean [95 % interval over seeds]")
    head = f"{'policy':<26} {'mean reward':<26} {'regret':<28} {'gap closure':<26} {'gap closure, last half':<26}"
    if several:
        head += f" {'vs best-order fixed, last half':<26}"
    out.append(head)
    for p in rep["policies"]:
        line = (f"{p['policy']:<26} {_ci(p['mean_reward'], '{:.4f}'):<26} {_ci(p['regret'], '{:.1f}'):<28} "
                f"{_ci(p['gap_closure']):<26} {_ci(p['gap_closure_last_half']):<26}")
        if several:
            line += f" {_ci(p['gap_closure_vs_best_candidate_last_half']):<26}"
        out.append(line)
    if rep["policies"] and "add_arm" in rep["policies"][0]:
        a0 = rep["policies"][0]["add_arm"]
        out.append(f"\narm {a0['arm']} joins after round {a0['round']}; fair rate (share of later rows it is best on) "
                   f"{a0['fair_rate']['mean']:.3f}")
        out.append(f"{'policy':<26} {'rounds to fair rate':<22} {'share after':<26} {'regret/round before':<26} "
                   f"{'regret/round after':<26}")
        for p in rep["policies"]:
            a = p["add_arm"]
            r = a["rounds_to_fair_rate"]
            reach = "never" if r["median"] is None else f"{r['median']:.0f} ({r['reached']}/{r['seeds']} seeds)"
            out.append(f"{p['policy']:<26} {reach:<22} {_ci(a['share_after']):<26} "
                       f"{_ci(a['regret_per_round_before'], '{:.4f}'):<26} "
                       f"{_ci(a['regret_per_round_after'], '{:.4f}'):<26}")
    if rep["policies"] and "new_task" in rep["policies"][0]:
        t0 = rep["policies"][0]["new_task"]
        out.append(f"\ntask {t0['task']} starts at round {t0['round']}; regret per round on its first "
                   f"{t0['first_rows']} rows vs the other tasks' rows in the same rounds")
        out.append(f"{'policy':<26} {'new task, first rows':<26} {'other tasks, same rounds':<26} "
                   f"{'new task, later rows':<26}")
        for p in rep["policies"]:
            t = p["new_task"]
            out.append(f"{p['policy']:<26} {_ci(t['regret_per_round_first_rows'], '{:.4f}'):<26} "
                       f"{_ci(t['regret_per_round_other_tasks_same_rounds'], '{:.4f}'):<26} "
                       f"{_ci(t['regret_per_round_later_rows'], '{:.4f}'):<26}")
    if rep.get("plot"):
        out.append(f"\nregret curves written to {rep['plot']}")
    return "\n".join(out)


def logged(rep: dict) -> str:
    out = [f"decision log {rep['source']}"]
    defaults = rep.get("default_rewards") or {"count": 0}
    if defaults["count"] or rep.get("expired"):
        out.append(f"{defaults['count']} default reward(s) of the reward window "
                   f"({defaults.get('treatment', 'kept')}), {rep.get('expired', 0)} expired event(s) (never rewarded)")
    for t in rep["targets"]:
        out.append(f"\ntarget {t['policy']}: {t['rewarded']} rewarded of {t['events']} events, logged mean reward "
                   f"{t['logged_mean_reward']:.4f}, effective sample size {t['effective_sample_size']:.1f}")
        out.append(f"{'estimator':<10} {'value [95 % bootstrap interval]':<34} note")
        for name, e in t["estimators"].items():
            note = ""
            if name == "replay":
                note = f"{e['logging']}: {e['matched']} events matched of {e['kept']} kept"
            out.append(f"{name:<10} {_ci(e, '{:.4f}'):<34} {note}")
    return "\n".join(out)


def exported(n: int, output: str) -> str:
    return f"wrote {n} events to {output}"


# -- the embedded zoo ----------------------------------------------------------------------
def accuracy_table(accuracy: dict, task_names: list[str]) -> str:
    width = max(len(m) for m in accuracy)
    lines = [" " * width + "  " + " ".join(f"{t[:8]:>8}" for t in task_names)]
    for model, row in accuracy.items():
        lines.append(f"{model:<{width}}  " + " ".join(f"{row[t]:8.3f}" for t in task_names))
    return "\n".join(lines)


def zoo_built(built) -> str:
    m = built.manifest
    secs = m["build_seconds"]
    return "\n".join([
        f"zoo ({m['size']}, {m['parameters']:,} parameters per model) at {built.root}",
        f"build time {secs['total']:.1f} s (this run {secs['this_run']:.1f} s); reused: {', '.join(m['reused']) or 'nothing'}",
        accuracy_table(m["accuracy"], built.tasks),
    ])


def zoo_built_payload(built) -> dict:
    return {"root": str(built.root), **built.manifest}


def evaluation(accuracy: dict) -> str:
    return "\n".join(f"{task}\t{acc:.4f}" for task, acc in accuracy.items())


def outcome_summary(s) -> str:
    lines = [f"{s.rows} ordered expert pairs x {len(s.arms)} arms "
             f"({s.merges_run} merges run, {s.merges_cached} from the cache)",
             f"{'arm':<18} {'mean reward':>11} {'best on':>8}"]
    for arm in sorted(s.arms, key=lambda a: -s.arm_means[a]):
        lines.append(f"{arm:<18} {s.arm_means[arm]:>11.4f} {s.wins[arm]:>8}")
    lines.append(f"oracle (best arm per pair)  {s.oracle_mean:.4f}")
    lines.append(f"best fixed arm              {s.best_fixed_arm} {s.best_fixed_mean:.4f}")
    lines.append(f"gap a bandit can close      {s.gap:.4f}")
    return "\n".join(lines)


def demo_header() -> str:
    return f"{'round':>5}  {'merge (A, B)':<28} {'arm':<17} {'reward':>6} {'mean':>6}"


def demo_round(r) -> str:
    pair = f"{r.model_a.removeprefix('expert-')}, {r.model_b.removeprefix('expert-')}"
    return f"{r.round:>5}  {pair:<28} {r.arm:<17} {r.reward:>6.3f} {r.running_mean:>6.3f}"


def demo_summary(s, db_path: str) -> str:
    lines = []
    if s.interrupted:
        lines.append(f"interrupted after {s.rounds} rounds; all of them are in {db_path}")
    n = max(s.rounds, 1)
    tier = f"{s.policy}, {'with' if s.trial_merges else 'without'} trial merges"
    lines += ["", f"cumulative reward over {s.rounds} rounds (mean per round):",
              f"  bandit          {s.bandit:8.3f}  ({s.bandit / n:.4f})  [{tier}, live]"]
    if s.other_tier is not None:
        lines.append(f"  other tier      {s.other_tier:8.3f}  ({s.other_tier / n:.4f})  [{s.other_tier_label}]")
    lines += [f"  best fixed arm  {s.best_fixed:8.3f}  ({s.best_fixed / n:.4f})  [{s.best_fixed_arm}, chosen in hindsight]",
              f"  random arm      {s.random:8.3f}  ({s.random / n:.4f})",
              f"  oracle          {s.oracle:8.3f}  ({s.oracle / n:.4f})"]
    gap = s.oracle - s.best_fixed
    if gap > 0:
        lines.append(f"  gap closed vs best fixed arm: {(s.bandit - s.best_fixed) / gap:+.1%} live"
                     + (f", {(s.other_tier - s.best_fixed) / gap:+.1%} {s.other_tier_label}"
                        if s.other_tier is not None else ""))
    if s.trial_merges:
        lines.append(f"  trial merges: {s.trial_merges_run} run in {s.trial_seconds:.1f} s (the rest from the zoo's cache)")
    lines.append(f"  first half mean {s.first_half_mean:.4f}, second half mean {s.second_half_mean:.4f}")
    lines.append("  arms chosen: " + ", ".join(f"{a} {c}" for a, c in s.arm_counts.items()))
    if s.plot:
        lines.append(f"learning curve: {s.plot}")
    return "\n".join(lines)


def outcome_table(summary: dict, merges_run: int, merges_cached: int) -> str:
    """What an outcome table allows (`bandit outcomes`): per arm, the oracle, both fixed baselines."""
    lines = [f"{summary['rows']} rows in {summary['requests']} requests x {len(summary['arms'])} arms "
             f"({merges_run} merges run, {merges_cached} from the cache)",
             f"{'arm':<18} {'mean reward (order as listed)':>30} {'best on':>8}"]
    for arm in sorted(summary["arms"], key=lambda a: -summary["arm_means"][a]):
        lines.append(f"{arm:<18} {summary['arm_means'][arm]:>30.4f} {summary['wins'][arm]:>8}")
    lines.append(f"oracle (best candidate and arm per request)   {summary['oracle_mean']:.4f}")
    lines.append(f"best fixed arm, order as listed                {summary['best_fixed_arm']} "
                 f"{summary['best_fixed_mean']:.4f}")
    lines.append(f"best fixed arm, best order in hindsight        {summary['best_fixed_arm_best_candidate']} "
                 f"{summary['best_fixed_best_candidate_mean']:.4f}")
    return "\n".join(lines)


def fitted_prior(record: dict) -> str:
    """`bandit fit`: the prior as loaded, per arm."""
    p = record["prior"]
    tau = "one task: default strength" if p["tau2"] is None else f"between-task variance {p['tau2']:.5f}"
    lines = [f"prior from {p['source']}: level {p['level']:.4f}, strength {p['strength']:.2f} pseudo-rewards "
             f"per arm (reward variance {p['sigma2']:.5f}, {tau})", f"{'arm':<18} {'prior mean':>10} {'offset':>8}"]
    for arm in record["applied"]:
        lines.append(f"{arm:<18} {p['level'] + p['offsets'][arm]:>10.4f} {p['offsets'][arm]:>+8.4f}")
    if record["arms_without_column"]:
        lines.append(f"no column in the table, left as they were: {', '.join(record['arms_without_column'])}")
    return "\n".join(lines)
