"""The bench's figures: the machine, the printed table, bench/results/latest.json."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.services import ROOT

RESULTS_DIR = ROOT / "bench" / "results"
LATEST = RESULTS_DIR / "latest.json"


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        # Other work on the machine makes the figures noisy: say how busy it was.
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    # The results file is the bench's own output, not a change to the code it measured.
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")
    return f"{commit}+dirty" if changed else commit


def now() -> str:
    return datetime.now(tz=UTC).isoformat(timespec="seconds")


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil
    return sorted_values[int(rank) - 1]


def latency_summary(latencies_s: list[float]) -> dict[str, float]:
    ordered = sorted(x * 1000 for x in latencies_s)
    if not ordered:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    return {
        "p50": round(percentile(ordered, 50), 1),
        "p95": round(percentile(ordered, 95), 1),
        "p99": round(percentile(ordered, 99), 1),
        "max": round(ordered[-1], 1),
        "mean": round(statistics.fmean(ordered), 1),
    }


def write(results: dict[str, Any], path: Path = LATEST) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} msg/s"


def table(r: dict[str, Any]) -> str:
    alert = r["alert_latency_ms"]
    rows = [
        ("Generator alone (QoS 1, acknowledged)", _rate(r["generator_msgs_per_s"]),
         f"{r['generator_processes']} publisher processes"),
        ("Limit: broker -> paho subscriber, parse only", _rate(r["limit_msgs_per_s"]),
         f"{r['limit_messages']:,} messages, median of "
         f"{len(r.get('limit_runs_msgs_per_s') or [1])} rounds"),
        ("Pipeline: publish -> stored -> NOC WebSocket", _rate(r["pipeline_msgs_per_s"]),
         f"{r['pipeline_messages']:,} msgs, {r['devices']:,} devices, {r['tenants']} tenants, "
         f"median of {len(r.get('pipeline_runs_msgs_per_s') or [1])}"),
        ("Baseline: one Celery task per message", _rate(r["baseline_msgs_per_s"]),
         f"{r['baseline_messages']:,} msgs, MQTT_BATCH_SIZE=1"),
        ("Pipeline / limit", f"{r['ratio_to_limit']:.3f}x", "target >= 0.6x"),
        ("Pipeline / baseline", f"{r['ratio_to_baseline']:.2f}x", "target >= 10x"),
        ("Alert publish -> critical_alert p50", f"{alert['p50']:.1f} ms", "target <= 10 ms"),
        ("Alert p95", f"{alert['p95']:.1f} ms", ""),
        ("Alert p99", f"{alert['p99']:.1f} ms", "target <= 50 ms"),
        *(
            (f"  the stored alert (with its id), {p}", f"{stored[p]:.1f} ms", "")
            for p in ("p50", "p99")
            if (stored := r.get("alert_stored_latency_ms"))
        ),
        ("  under background telemetry", _rate(alert["background_msgs_per_s"]),
         f"{alert['background_rate_source']}; {alert['samples']} samples"),
        *(
            (f"  {stage.split(' (')[0]}, p50", f"{figures['p50']:.1f} ms", "")
            for stage, figures in alert.get("stages", {}).items()
        ),
        ("Lost / duplicate effects", f"{r['lost']} / {r['duplicate_effects']}", "must be 0 / 0"),
    ]  # fmt: skip
    width = max(len(name) for name, _, _ in rows)
    lines = [f"  {name:<{width}}  {value:>14}  {note}" for name, value, note in rows]
    lines += ["", _process_table(r)]
    return "\n".join(lines)


def _process_table(r: dict[str, Any]) -> str:
    cpu: dict[str, dict[str, float]] = r["cpu_seconds"]
    per_msg: dict[str, dict[str, float]] = r["cpu_ms_per_message"]
    kinds = sorted({kind for phase in cpu.values() for kind in phase})
    phases = [p for p in ("pipeline", "baseline", "alerts") if p in cpu]
    header = f"  {'process kind':<22}" + "".join(f"{p + ' CPU s':>17}{'ms/msg':>8}" for p in phases)
    lines = [header + f"{'peak RSS MB':>13}"]
    for kind in kinds:
        line = f"  {kind:<22}"
        for p in phases:
            seconds = cpu[p].get(kind)
            ms = per_msg.get(p, {}).get(kind)
            line += f"{'-' if seconds is None else f'{seconds:.1f}':>17}"
            line += f"{'-' if ms is None else f'{ms:.2f}':>8}"
        rss = r["peak_rss_mb"].get(kind)  # the generator's is not sampled
        line += f"{'-' if rss is None else f'{rss:.1f}':>13}"
        lines.append(line)
    return "\n".join(lines)
