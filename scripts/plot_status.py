#!/usr/bin/env python3
"""Reads criterion's results for the `status` and `ingest` benches and
- prints the Markdown tables for BENCHMARKS.md (medians, ratios to SELECT 1 from the same run),
- writes an SVG plot of check latency against ledger size: tower-budget vs the seed's query.

No dependencies beyond the standard library.
usage: plot_status.py CRITERION_DIR OUT.svg
"""
import json
import math
import os
import sys


def median_ns(root, *parts):
    path = os.path.join(root, *parts, "new", "estimates.json")
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"]


def sizes(root):
    d = os.path.join(root, "status", "tower_budget")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def fmt_ms(ns):
    return f"{ns / 1e6:.3f} ms"


def table(root):
    base = median_ns(root, "status", "select_1")
    ns = sizes(root)
    rows = ["| ledger events (this workspace) | tower-budget `status()` | × SELECT 1 | seed query | × SELECT 1 |",
            "|---:|---:|---:|---:|---:|"]
    ours, seed = {}, {}
    for n in ns:
        ours[n] = median_ns(root, "status", "tower_budget", str(n))
        seed[n] = median_ns(root, "status", "seed_query", str(n))
        rows.append(f"| {n:,} | {fmt_ms(ours[n])} | {ours[n] / base:.2f}× | {fmt_ms(seed[n])} | {seed[n] / base:.1f}× |")
    rows.append(f"\n`SELECT 1` on the same pool: {fmt_ms(base)}.")
    rows.append(f"tower-budget at {ns[-1]:,} events / at {ns[0]:,} events: {ours[ns[-1]] / ours[ns[0]]:.2f}×; "
                f"seed query: {seed[ns[-1]] / seed[ns[0]]:.1f}×.")
    try:
        batch = 2000
        hb = median_ns(root, "ingest", "heartbeat")
        s1 = median_ns(root, "ingest", "select_1")
        rows.append(f"\nIngestion: {batch / (hb * 1e-9):,.0f} heartbeats/s "
                    f"(SELECT 1 at the same concurrency: {batch / (s1 * 1e-9):,.0f}/s; ratio {s1 / hb:.2f}).")
    except FileNotFoundError:
        pass
    return "\n".join(rows), base, ours, seed


def svg(base, ours, seed, out):
    w, h, left, right, top, bottom = 660, 400, 70, 45, 30, 50
    xs = sorted(ours)
    all_ms = [v / 1e6 for v in list(ours.values()) + list(seed.values()) + [base]]
    ymin = 10 ** math.floor(math.log10(min(all_ms)))
    ymax = 10 ** math.ceil(math.log10(max(all_ms)))
    xmin, xmax = math.log10(xs[0]), math.log10(xs[-1])

    def px(n):
        return left + (math.log10(n) - xmin) / (xmax - xmin) * (w - left - right)

    def py(ms):
        return top + (math.log10(ymax) - math.log10(ms)) / (math.log10(ymax) - math.log10(ymin)) * (h - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="14">Budget check latency vs ledger size (median, log–log)</text>']
    decade = ymin
    while decade <= ymax * 1.0001:
        y = py(decade)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - right}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{decade:g} ms</text>')
        decade *= 10
    for n in xs:
        x = px(n)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{h - bottom}" stroke="#eee"/>')
        parts.append(f'<text x="{x:.1f}" y="{h - bottom + 16}" text-anchor="middle">{n:,}</text>')
    parts.append(f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle">ledger events of the checked workspace</text>')
    series = [("seed query (raw ledger SUM … FILTER)", seed, "#d62728"),
              ("tower-budget status()", ours, "#1f77b4")]
    for i, (label, data, colour) in enumerate(series):
        pts = " ".join(f"{px(n):.1f},{py(data[n] / 1e6):.1f}" for n in xs)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for n in xs:
            parts.append(f'<circle cx="{px(n):.1f}" cy="{py(data[n] / 1e6):.1f}" r="3" fill="{colour}"/>')
        parts.append(f'<text x="{left + 10}" y="{top + 16 + 16 * i}" fill="{colour}">{label}</text>')
    yb = py(base / 1e6)
    parts.append(f'<line x1="{left}" y1="{yb:.1f}" x2="{w - right}" y2="{yb:.1f}" stroke="#555" stroke-dasharray="4 3"/>')
    parts.append(f'<text x="{left + 10}" y="{top + 48}" fill="#555">- - - SELECT 1 (one round trip, the floor)</text>')
    parts.append("</svg>")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(parts) + "\n")


def main():
    root, out = sys.argv[1], sys.argv[2]
    text, base, ours, seed = table(root)
    print(text)
    svg(base, ours, seed, out)
    print(f"\nplot written to {out}")


if __name__ == "__main__":
    main()
