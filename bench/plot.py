"""Plots and a markdown table from a folder of benchmark results.

    python -m bench.plot results/2026-11-23T063000Z

Reads every ``*.json`` in the folder that is a benchmark result (``bench.common.envelope``;
``suite.json`` is read for skips and failures) and writes:

- ``lag.png``: p50 / p99 / max lag per system, one panel per expiration rate, log scale;
  delivered fractions below 100 % are printed over the bars;
- ``throughput.png``: every ``throughput`` entry, records per second;
- ``memory.png``: bytes per pending record at the largest count, and bytes against pending;
- ``drift.png``: lag p99 per tenth of the window at each rate, for every system that
  reports it (``extra.lag_windows``): whether a run's lag climbs as it goes on;
- ``RESULTS.md``: the same numbers as tables, with machine and date, to paste into
  docs/BENCHMARKS.md.

Only the envelope's fields are read, so stream-expiry's ``bench.e2e_*`` results appear next to
the peers' as soon as they exist. Uses matplotlib's Agg backend; without matplotlib only
RESULTS.md is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.common import human_count

LAG_STATS = ("p50", "p99", "max")
LAG_COLORS = {"p50": "#4C72B0", "p99": "#DD8452", "max": "#C44E52"}


def load_results(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    results: list[dict[str, Any]] = []
    suite: dict[str, Any] | None = None
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if path.name == "suite.json":
            suite = data
        elif isinstance(data, dict) and "benchmark" in data and "system" in data:
            data["_file"] = path.name
            results.append(data)
    results.sort(key=lambda r: (str(r.get("started_at_utc") or ""), r["_file"]))
    return results, suite


def system_order(results: list[dict[str, Any]]) -> list[str]:
    """stream-expiry (``e2e_*`` benchmarks) first, then the peers, each in first-seen order."""
    ours: list[str] = []
    peers: list[str] = []
    for r in results:
        bucket = ours if str(r["benchmark"]).startswith("e2e") else peers
        if r["system"] not in ours and r["system"] not in peers:
            bucket.append(r["system"])
    return ours + peers


def lag_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (system, rate); a later result for the same pair replaces an earlier one."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for r in results:
        lag = r.get("lag")
        if isinstance(lag, dict) and lag.get("rate"):
            rows[(r["system"], int(lag["rate"]))] = {"system": r["system"], **lag}
    order = {s: i for i, s in enumerate(system_order(results))}
    return sorted(rows.values(), key=lambda x: (int(x["rate"]), order.get(x["system"], 99)))


def throughput_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (system, name): the measurement over the most records."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        for t in r.get("throughput") or []:
            if t.get("value") is None:
                continue
            k = (r["system"], str(t.get("name")))
            if k not in rows or int(t.get("records") or 0) >= int(rows[k].get("records") or 0):
                rows[k] = {"system": r["system"], **t}
    order = {s: i for i, s in enumerate(system_order(results))}
    return sorted(rows.values(), key=lambda x: (order.get(x["system"], 99), str(x["name"])))


def memory_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every memory point, per system, sorted by pending count (later results replace)."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for r in results:
        for m in r.get("memory") or []:
            if m.get("pending"):
                rows[(r["system"], int(m["pending"]))] = {"system": r["system"], **m}
    order = {s: i for i, s in enumerate(system_order(results))}
    return sorted(rows.values(), key=lambda x: (order.get(x["system"], 99), int(x["pending"])))


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _short_ms(v: float) -> str:
    """A bar label: 0.4, 12, 950, 3.7k, 12k."""
    if v >= 9_950:
        return f"{v / 1000:.0f}k"
    if v >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def _machine_line(results: list[dict[str, Any]], suite: dict[str, Any] | None) -> str:
    m = (suite or {}).get("machine") or (results[0]["machine"] if results else {})
    mem = m.get("memory_bytes")
    mem_s = f"{mem / 2**30:.0f} GiB" if mem else "? GiB"
    return (
        f"{m.get('cores')} cores ({m.get('cpu_model')}), {mem_s}, Python {m.get('python')}, "
        f"{m.get('platform')}"
    )


def _date_line(results: list[dict[str, Any]], suite: dict[str, Any] | None) -> str:
    if suite and suite.get("started_at_utc"):
        return str(suite["started_at_utc"])
    dates = sorted(str(r.get("date_utc")) for r in results)
    return dates[0] if dates else "?"


# --------------------------------------------------------------------------- markdown


def write_markdown(
    folder: Path, results: list[dict[str, Any]], suite: dict[str, Any] | None
) -> Path:
    lines: list[str] = []
    date = _date_line(results, suite)
    lines += [
        f"## Benchmark results, {date}",
        "",
        f"Machine: {_machine_line(results, suite)}.",
    ]
    if suite:
        cfg = suite.get("config") or {}
        lines += [
            f"Command: `{suite.get('command')}`"
            + (" (quick sizes)" if suite.get("quick") else "")
            + f"; rates {', '.join(human_count(int(x)) for x in cfg.get('rates', []))}/s, "
            f"{_fmt(cfg.get('seconds'), 0)} s windows, {_fmt(cfg.get('grace'), 0)} s grace, "
            f"{human_count(int(cfg.get('pending', 0)))} pending for memory; "
            f"load average at start {(suite.get('machine') or {}).get('loadavg_1_5_15')}.",
        ]
    lines += [
        "Numbers are from one run on a shared 2-core machine where other work may run at the "
        "same time: treat differences under ~2x as noise.",
        "",
        "### Expiry lag (due time to delivery, ms)",
        "",
        "| system | rate/s | scheduled | delivered | missing | p50 | p99 | max | mean |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in lag_rows(results):
        lm = row.get("lag_ms") or {}
        frac = row.get("delivered_fraction")
        delivered = _fmt(row.get("delivered"))
        if frac is not None and frac < 1:
            delivered += f" ({frac * 100:.2f} %)"
        lines.append(
            f"| {row['system']} | {human_count(int(row['rate']))} | {_fmt(row.get('scheduled'))} "
            f"| {delivered} | {_fmt(row.get('missing'))} | {_fmt(lm.get('p50'))} "
            f"| {_fmt(lm.get('p99'))} | {_fmt(lm.get('max'))} | {_fmt(lm.get('mean'))} |"
        )
    grace = sorted({str(r.get("grace_s")) for r in lag_rows(results)})
    lines += [
        "",
        f"Missing = not delivered within the grace window ({', '.join(grace)} s) after the last "
        "due time. Percentiles are exact (nearest rank) over the delivered records only.",
        "",
        "### Throughput",
        "",
        "| system | what | records/s | records | method |",
        "|---|---|---:|---:|---|",
    ]
    for row in throughput_rows(results):
        lines.append(
            f"| {row['system']} | {row.get('name')} | {_fmt(row.get('value'), 0)} "
            f"| {_fmt(row.get('records'))} | {row.get('method', '')} |"
        )
    lines += [
        "",
        "### Memory per pending record",
        "",
        "| system | pending | bytes | bytes/record | measured as |",
        "|---|---:|---:|---:|---|",
    ]
    for row in memory_rows(results):
        lines.append(
            f"| {row['system']} | {human_count(int(row['pending']))} | {_fmt(row.get('bytes'))} "
            f"| {_fmt(row.get('bytes_per_record'))} | {row.get('what', '')} |"
        )
    lines += ["", "### Plots", ""]
    for name, title in (
        ("lag.png", "Expiry lag"),
        ("throughput.png", "Throughput"),
        ("memory.png", "Memory per pending record"),
    ):
        if (folder / name).exists():
            lines.append(f"![{title}]({name})")
    notes: dict[str, list[str]] = {}
    caveats: list[str] = []
    systems_of: dict[str, list[str]] = {}
    for r in results:
        bench = str(r["benchmark"])
        systems_of.setdefault(bench, [])
        if r["system"] not in systems_of[bench]:
            systems_of[bench].append(r["system"])
        for n in r.get("notes") or []:
            if "had not" in n:
                continue  # per-run counts are in the table already
            if "written at or after" in n:
                rate = (r.get("lag") or {}).get("rate")
                caveats.append(f"{r['system']} at {human_count(int(rate or 0))}/s: {n}")
                continue
            notes.setdefault(bench, [])
            if n not in notes[bench]:
                notes[bench].append(n)
    if notes:
        lines += ["", "### How each system was measured", ""]
        for bench, ns in notes.items():
            lines.append(f"- **{', '.join(systems_of[bench])}** (`{bench}`): " + " ".join(ns))
    if caveats:
        lines += ["", "### Caveats of single runs", ""]
        lines += [f"- {c}" for c in caveats]
    if suite:
        skipped = suite.get("skipped") or []
        failed = [r for r in suite.get("runs") or [] if r.get("status") != "ok"]
        if skipped or failed:
            lines += ["", "### Not measured in this run", ""]
            lines += [f"- skipped: {s['reason']}" for s in skipped]
            lines += [f"- failed: `{r['command']}`: {r.get('error')}" for r in failed]
    path = folder / "RESULTS.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lag(folder: Path, results: list[dict[str, Any]], subtitle: str) -> Path | None:
    rows = lag_rows(results)
    if not rows:
        return None
    plt = _pyplot()
    from matplotlib.ticker import ScalarFormatter

    rates = sorted({int(r["rate"]) for r in rows})
    systems = system_order(results)
    ours = {str(r["system"]) for r in results if str(r["benchmark"]).startswith("e2e")}
    per_rate = [len({r["system"] for r in rows if int(r["rate"]) == rate}) for rate in rates]
    fig, axes = plt.subplots(
        1,
        len(rates),
        figsize=(max(6.0, 1.05 * sum(per_rate) + 1.2 * len(rates) + 1.0), 5.6),
        sharey=True,
        squeeze=False,
        gridspec_kw={"width_ratios": [n + 0.6 for n in per_rate]},
    )
    width = 0.26
    for ax, rate in zip(axes[0], rates, strict=True):
        here = {r["system"]: r for r in rows if int(r["rate"]) == rate}
        names = [s for s in systems if s in here]
        for j, stat in enumerate(LAG_STATS):
            xs = [i + (j - 1) * width for i in range(len(names))]
            vals = [max(float(here[s]["lag_ms"].get(stat) or 0.0), 0.01) for s in names]
            ax.bar(xs, vals, width, label=stat, color=LAG_COLORS[stat])
        for i, s in enumerate(names):
            frac = here[s].get("delivered_fraction")
            if frac is not None and frac < 1:
                top = max(float(here[s]["lag_ms"].get("max") or 1.0), 1.0)
                ax.annotate(
                    f"{frac * 100:.1f}%\ndelivered",
                    (i, top),
                    textcoords="offset points",
                    xytext=(0, 10),
                    ha="center",
                    fontsize=7,
                    color="#C44E52",
                )
            for j, stat in enumerate(LAG_STATS):
                v = here[s]["lag_ms"].get(stat)
                if v is not None:
                    ax.annotate(
                        _short_ms(float(v)),
                        (i + (j - 1) * width, max(float(v), 0.01)),
                        textcoords="offset points",
                        xytext=(0, 1),
                        ha="center",
                        va="bottom",
                        fontsize=6,
                    )
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        for label, name in zip(ax.get_xticklabels(), names, strict=True):
            if name in ours:
                label.set_fontweight("bold")
        ax.set_title(f"{human_count(rate)} expirations/s")
        ax.grid(axis="y", which="both", alpha=0.3)
    top = max(float(r["lag_ms"].get("max") or 1.0) for r in rows)
    axes[0][0].set_ylim(top=top * 4)
    axes[0][0].set_ylabel("lag from due time to delivery (ms, log)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Expiry lag: p50 / p99 / max\n" + subtitle, fontsize=10)
    fig.tight_layout()
    path = folder / "lag.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(folder: Path, results: list[dict[str, Any]], subtitle: str) -> Path | None:
    rows = throughput_rows(results)
    if not rows:
        return None
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    labels = [f"{r['system']}: {r['name']}" for r in rows]
    vals = [float(r["value"]) for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 2.2))
    ys = list(range(len(rows)))[::-1]
    ax.barh(ys, vals, color="#4C72B0")
    for y, v in zip(ys, vals, strict=True):
        ax.annotate(
            f"{v:,.0f}", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8
        )
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("records per second")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:,.0f}"))
    ax.set_xlim(0, max(vals) * 1.2)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Write / ingest throughput\n" + subtitle, fontsize=10)
    fig.tight_layout()
    path = folder / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_memory(folder: Path, results: list[dict[str, Any]], subtitle: str) -> Path | None:
    rows = memory_rows(results)
    if not rows:
        return None
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    systems = [s for s in system_order(results) if any(r["system"] == s for r in rows)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.8))
    largest = {
        s: max((r for r in rows if r["system"] == s), key=lambda r: int(r["pending"]))
        for s in systems
    }
    bpr = [float(largest[s].get("bytes_per_record") or 0.0) for s in systems]
    ax1.bar(range(len(systems)), bpr, color="#55A868")
    for i, v in enumerate(bpr):
        ax1.annotate(
            f"{v:,.0f} B",
            (i, v),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    ax1.set_xticks(range(len(systems)))
    ax1.set_xticklabels(
        [f"{s}\n({human_count(int(largest[s]['pending']))} pending)" for s in systems], fontsize=8
    )
    ax1.set_ylabel("bytes per pending record")
    ax1.set_title("at the largest pending count", fontsize=9)
    ax1.grid(axis="y", alpha=0.3)
    for s in systems:
        pts = [r for r in rows if r["system"] == s]
        ax2.plot(
            [int(r["pending"]) for r in pts],
            [int(r["bytes"]) / 2**20 for r in pts],
            marker="o",
            label=s,
        )
    ax2.set_xlabel("pending records (far future)")
    ax2.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: human_count(int(x))))
    ax2.set_ylabel("MiB used")
    ax2.set_title("memory against pending records", fontsize=9)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle("Memory per pending record\n" + subtitle, fontsize=10)
    fig.tight_layout()
    path = folder / "memory.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_soak(folder: Path, results: list[dict[str, Any]], subtitle: str) -> Path | None:
    """RSS, store size on disk and tombstone lag over a ``bench.soak`` run: all three should
    be flat once the steady state is reached (issue 11)."""
    soak = next((r for r in results if r.get("benchmark") == "soak"), None)
    if soak is None:
        return None
    extra = soak.get("extra") or {}
    samples, windows = extra.get("samples") or [], extra.get("lag_windows") or []
    if not samples:
        return None
    plt = _pyplot()
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    minutes = [s["t_s"] / 60 for s in samples]
    ax1.plot(minutes, [s["rss_bytes"] / 2**20 for s in samples], color="#4C72B0")
    ax1.set_ylabel("service RSS, MiB")
    ax2.plot(minutes, [s["disk_bytes"] / 2**20 for s in samples], color="#55A868")
    ax2.set_ylabel("stores on disk, MiB")
    wins = [w for w in windows if w.get("count")]
    ax3.plot([w["t_s"] / 60 for w in wins], [w["p99"] for w in wins], label="p99", color="#C44E52")
    ax3.plot([w["t_s"] / 60 for w in wins], [w["p50"] for w in wins], label="p50", color="#8172B2")
    ax3.set_ylabel("tombstone lag, ms")
    ax3.set_yscale("log")
    ax3.legend(fontsize=8)
    ax3.set_xlabel("minutes since the first due time")
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
        ref = extra.get("reference_t_s")
        if ref is not None:
            ax.axvline(ref / 60, color="grey", linestyle=":", linewidth=1)
    params = soak.get("params") or {}
    fig.suptitle(
        f"Soak: {params.get('rate', '?'):,} events/s in and out for {params.get('minutes', '?')} "
        f"min (dotted: the reference sample)\n{subtitle}",
        fontsize=10,
    )
    fig.tight_layout()
    path = folder / "soak.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_drift(folder: Path, results: list[dict[str, Any]], subtitle: str) -> Path | None:
    """Lag p99 per tenth of the window, one line per system, a panel per rate: on the
    embedded broker even the floor's lag climbs within a run, so this shows how much of a
    p99 is the run's length (issue 11's fair comparison)."""
    series: dict[int, list[tuple[str, list[dict[str, Any]]]]] = {}
    for r in results:
        lag, extra = r.get("lag") or {}, r.get("extra") or {}
        # e2e_expiry nests its lag details under extra.lag; the others keep them in extra.
        windows = extra.get("lag_windows") or (extra.get("lag") or {}).get("lag_windows") or []
        if r.get("benchmark") == "soak" or len(windows) < 2 or not lag.get("rate"):
            continue
        series.setdefault(int(lag["rate"]), []).append((str(r.get("system", "?")), windows))
    if not series:
        return None
    plt = _pyplot()
    rates = sorted(series)
    fig, axes = plt.subplots(1, len(rates), figsize=(max(7, 5 * len(rates)), 4.6), squeeze=False)
    for ax, rate in zip(axes[0], rates, strict=True):
        for system, windows in sorted(series[rate]):
            wins = [w for w in windows[:10] if w.get("count")]  # tenths (older runs: + a stub)
            ax.plot([w["t_s"] for w in wins], [w["p99"] for w in wins], marker="o", label=system)
        ax.set_title(f"{rate:,} expirations/s", fontsize=10)
        ax.set_xlabel("seconds into the window (by due or send time)")
        ax.set_ylabel("lag p99 in that tenth, ms")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Lag p99 through the window\n{subtitle}", fontsize=10)
    fig.tight_layout()
    path = folder / "drift.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(folder: Path) -> list[Path]:
    """Write the plots (when matplotlib is there) and RESULTS.md; return the files written."""
    folder = Path(folder)
    results, suite = load_results(folder)
    subtitle = f"{_machine_line(results, suite)}\n{_date_line(results, suite)}"
    written: list[Path] = []
    try:
        for fn in (plot_lag, plot_throughput, plot_memory, plot_soak, plot_drift):
            p = fn(folder, results, subtitle)
            if p is not None:
                written.append(p)
    except ImportError as e:
        sys.stderr.write(f"plots skipped: {e}\n")
    written.append(write_markdown(folder, results, suite))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.plot",
        description="Plots (lag, throughput, memory, soak, drift) and RESULTS.md from a "
        "folder of benchmark results (python -m bench.run_suite writes one per run).",
    )
    parser.add_argument("folder", type=Path, help="e.g. results/2026-11-23T063000Z")
    folder = parser.parse_args(argv).folder
    if not folder.is_dir():
        parser.error(f"{folder} is not a folder of results")
    for p in render(folder):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
