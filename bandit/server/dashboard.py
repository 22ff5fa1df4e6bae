"""The dashboard at `/`: one server-rendered HTML page, plots as inline SVG, no scripts and
no build step; it reloads itself every few seconds."""
from __future__ import annotations

import html
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

router = APIRouter()
REFRESH_SECONDS = 5
CURVE_POINTS = 400  # a curve over 100k rewards is drawn from this many points


def collect(svc, curves=None, shares=None) -> dict[str, Any]:
    """Everything the page shows, from the facade (also served as JSON at /v1/dashboard).
    `curves` and `shares` (RewardCurves, ArmShares) are kept by the server between calls,
    so each refresh reads only what the log gained; without them, computed afresh."""
    from bandit.service.monitor import jobs_summary, pending, recent_events, reward_curves, share_over_time

    from bandit.render import payload

    return {
        "policy": payload(svc.show_policy()), "stats": payload(svc.stats()),
        "curves": curves.update(svc.store) if curves is not None else reward_curves(svc.store),
        "share": shares.update(svc.store) if shares is not None else share_over_time(svc.store),
        "recent": recent_events(svc.store, 15), "pending": pending(svc.store, 15), "jobs": jobs_summary(svc.store, 10),
    }


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def dashboard(request: Request) -> HTMLResponse:
    rt = request.app.state.runtime
    data = await rt.reader.call(collect, rt.curves, rt.shares)
    return HTMLResponse(render_page(data))


def _e(x: Any) -> str:
    return html.escape(str(x))


def _num(x: float | None, fmt: str = "{:.4f}") -> str:
    return "–" if x is None else fmt.format(x)


def _thin(values: list[float | None], points: int = CURVE_POINTS) -> list[tuple[int, float]]:
    """At most `points` (index, value) pairs, skipping the undefined start of a curve."""
    if len(values) <= points:
        idx = range(len(values))
    else:
        step = len(values) / points
        idx = sorted({int(i * step) for i in range(points)} | {len(values) - 1})
    return [(i + 1, values[i]) for i in idx if values[i] is not None]


def curve_svg(curves: dict[str, Any], width: int = 640, height: int = 260) -> str:
    """Running mean reward of the policy against the best fixed arm and random (SNIPS from the log)."""
    series = [("policy (observed)", curves["policy"], "#1f77b4"),
              (f"best fixed arm: {curves['best_fixed_arm']} (SNIPS)", curves["best_fixed"], "#2ca02c"),
              ("uniform random (SNIPS)", curves["random"], "#d62728")]
    n = curves["rewards"]
    if n == 0:
        return f'<svg id="curve" width="{width}" height="{height}" role="img"><text x="20" y="40">no rewards yet</text></svg>'
    pad_l, pad_r, pad_t, pad_b = 56, 12, 12, 36
    # The scale is that of the points drawn: thinned first, so a refresh costs the same at
    # 100 or 100,000 rewards.
    series = [(label, _thin(vals), colour) for label, vals, colour in series]
    values = [v for _, points, _ in series for _, v in points]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    margin = 0.05 * (hi - lo)
    lo, hi = lo - margin, hi + margin

    def xy(i: int, v: float) -> str:
        x = pad_l + (width - pad_l - pad_r) * ((i - 1) / max(1, n - 1))
        y = pad_t + (height - pad_t - pad_b) * (1 - (v - lo) / (hi - lo))
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg id="curve" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="running mean reward">',
             f'<rect x="{pad_l}" y="{pad_t}" width="{width - pad_l - pad_r}" height="{height - pad_t - pad_b}" '
             f'fill="none" stroke="#bbb"/>']
    for frac in (0.0, 0.5, 1.0):
        v = lo + frac * (hi - lo)
        y = pad_t + (height - pad_t - pad_b) * (1 - frac)
        parts.append(f'<text x="{pad_l - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{v:.3f}</text>')
    parts.append(f'<text x="{pad_l}" y="{height - 18}" font-size="11">1</text>')
    parts.append(f'<text x="{width - pad_r}" y="{height - 18}" font-size="11" text-anchor="end">{n} rewards</text>')
    for k, (label, points, colour) in enumerate(series):
        if not points:
            continue
        pts = " ".join(xy(i, v) for i, v in points)
        parts.append(f'<polyline class="series" data-name="{_e(label)}" fill="none" stroke="{colour}" '
                     f'stroke-width="2" points="{pts}"/>')
        parts.append(f'<text x="{pad_l + 8 + 210 * k}" y="{height - 4}" font-size="11" fill="{colour}">{_e(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _share_bar(share: float) -> str:
    w = max(0.0, min(1.0, share)) * 100
    return f'<svg width="100" height="10"><rect width="{w:.1f}" height="10" fill="#1f77b4"/></svg>'


def _share_sparkline(shares: list[float] | None, width: int = 120, height: int = 18) -> str:
    """An arm's share of proposals over the log, left to right (0 at the bottom, 1 at the top)."""
    if not shares:
        return ""
    n = len(shares)
    pts = " ".join(f"{(width - 2) * (i / max(1, n - 1)) + 1:.1f},{height - 1 - (height - 2) * v:.1f}"
                   for i, v in enumerate(shares))
    return (f'<svg class="share-over-time" width="{width}" height="{height}"><rect width="{width}" '
            f'height="{height}" fill="#f7f7f7"/><polyline fill="none" stroke="#1f77b4" stroke-width="1.5" '
            f'points="{pts}"/></svg>')


def render_page(data: dict[str, Any]) -> str:
    pol = data["policy"]
    rows = []
    for r in data["stats"]:
        flag = "" if r["status"] == "active" else f' <span class="muted">[{_e(r["status"])}]</span>'
        rows.append(
            f'<tr class="arm"><td>{_e(r["arm"])}{flag}</td><td>{_e(r["operator"])}</td><td>{r["proposals"]}</td>'
            f'<td>{r["pulls"]}</td><td>{_num(r["mean_reward"])}</td><td>{_num(r["posterior_mean"])}</td>'
            f'<td>{r["share"]:.1%} {_share_bar(r["share"])}</td>'
            f'<td>{_share_sparkline(data["share"]["shares"].get(r["arm"]))}</td></tr>')
    recent = []
    for ev in data["recent"]:
        top = sorted(ev["pmf"], key=lambda a: -a["p"])[:4]
        pmf = ", ".join(f'{_e(a["arm"])}{"" if a["candidate"] == 0 else "#" + str(a["candidate"])} {a["p"]:.2f}'
                        for a in top)
        if ev["reward"] is not None:
            fate = f'{ev["reward"]:.4f}' + (" (default)" if ev["reward_source"] == "default" else "")
        elif ev["expired_at"] is not None:
            fate = "expired"
        else:
            fate = "pending"
        pair = f'{_e(ev["model_a"])} + {_e(ev["model_b"])}' if ev["model_a"] else "–"
        recent.append(f'<tr class="event"><td>{ev["id"]}</td><td>{_e(ev["task"])}</td><td>{_e(ev["arm"])}</td>'
                      f'<td>{pair}</td><td>{ev["prob"]:.3f}</td><td>{pmf}</td><td>{fate}</td></tr>')
    pend = data["pending"]
    now = time.time()
    pending_rows = [f'<tr><td>{p["id"]}</td><td>{_e(p["task"])}</td><td>{_e(p["arm"])}</td>'
                    f'<td>{now - p["created_at"]:.0f} s</td></tr>' for p in pend["events"]]
    jobs = data["jobs"]
    job_rows = []
    for j in jobs["recent"]:
        prog = f'{j["done"]}/{j["total"]}' if j["total"] else str(j["done"])
        job_rows.append(f'<tr class="job"><td>{j["id"]}</td><td>{_e(j["kind"])}</td><td>{_e(j["state"])}</td>'
                        f'<td>{prog}</td><td>{_e(j["output"] or "")}</td><td>{_e(j["error"] or "")}</td></tr>')
    curves = data["curves"]
    fixed = ", ".join(f"{_e(a)} {v:.3f} ({curves['fixed_pulls'][a]})" for a, v in sorted(curves["fixed_final"].items(), key=lambda kv: -kv[1]))
    counts = ", ".join(f"{k} {v}" for k, v in jobs["counts"].items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>simmerge — {_e(pol["label"])}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 20px; }}
td, th {{ padding: 3px 10px; border-bottom: 1px solid #ddd; text-align: left; vertical-align: middle; }}
th {{ background: #f4f4f4; }} .muted {{ color: #888; }} h2 {{ margin-top: 28px; font-size: 16px; }}
</style></head><body>
<h1>simmerge</h1>
<p>policy <b>{_e(pol["label"])}</b> · {curves["rewards"]} rewards · {pend["count"]} pending ·
{pend["default_rewards"]} default rewards · {pend["expired"]} expired · refreshes every {REFRESH_SECONDS} s</p>
<h2>Arms</h2>
<table id="arms"><thead><tr><th>arm</th><th>operator</th><th>proposals</th><th>pulls</th><th>mean reward</th>
<th>posterior mean</th><th>share</th><th>share over time</th></tr></thead><tbody>{"".join(rows)}</tbody></table>
<h2>Running mean reward</h2>
{curve_svg(curves)}
<p class="muted">Fixed arms estimated from the log (SNIPS, with their pulls): {fixed or "–"}</p>
<h2>Recent events</h2>
<table id="events"><thead><tr><th>id</th><th>task</th><th>arm</th><th>pair</th><th>p</th><th>pmf (top 4)</th>
<th>reward</th></tr></thead><tbody>{"".join(recent)}</tbody></table>
<h2>Pending rewards ({pend["count"]})</h2>
<table id="pending"><thead><tr><th>event</th><th>task</th><th>arm</th><th>waiting</th></tr></thead>
<tbody>{"".join(pending_rows)}</tbody></table>
<h2>Merge jobs ({counts})</h2>
<table id="jobs"><thead><tr><th>id</th><th>kind</th><th>state</th><th>progress</th><th>output</th><th>error</th></tr>
</thead><tbody>{"".join(job_rows)}</tbody></table>
</body></html>"""
