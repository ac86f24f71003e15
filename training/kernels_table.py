#!/usr/bin/env python3
"""Turns `bench kernels --json-out FILE` reports (one or more runs) into the Markdown table of
docs/kernels.md: per case, the median over runs of each run's median rate, for every device and
PyTorch, and the ratios. With several runs it also prints each run's ratios, to show the spread.

    python training/kernels_table.py run1.json [run2.json ...]
"""
import json
import statistics
import sys

runs = [json.load(open(p)) for p in sys.argv[1:]]
if not runs:
    sys.exit(__doc__)
cases = [c["name"] for c in runs[0]["devices"][0]["cases"]]
devices = [d["device"] for d in runs[0]["devices"]]


def rate(run, dev, case):
    src = run["torch"] if dev is None else run["devices"][dev]
    c = next(c for c in src["cases"] if c["name"] == case)
    # Rates are named by unit (gflops, gbps); reports before 2026-12-02 call both "rate".
    return {**c, "rate": c.get("gflops", c.get("gbps", c.get("rate")))}


def med(values):
    return statistics.median(values)


has_torch = all(r.get("torch") for r in runs)
head = ["case"] + [f"{d} rate (ms)" for d in devices]
if has_torch:
    head += ["PyTorch rate (ms)"] + [f"{d} / PyTorch" for d in devices]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for case in cases:
    row = [f"`{case}`"]
    for i, _ in enumerate(devices):
        r = med([rate(run, i, case)["rate"] for run in runs])
        ms = med([rate(run, i, case)["median_ms"] for run in runs])
        row.append(f"{r:.1f} ({ms:.1f})")
    if has_torch:
        r = med([rate(run, None, case)["rate"] for run in runs])
        ms = med([rate(run, None, case)["median_ms"] for run in runs])
        row.append(f"{r:.1f} ({ms:.1f})")
        for i, _ in enumerate(devices):
            ratios = [rate(run, i, case)["rate"] / rate(run, None, case)["rate"] for run in runs]
            spread = f" [{min(ratios):.2f}–{max(ratios):.2f}]" if len(runs) > 1 else ""
            row.append(f"{med(ratios):.2f}×{spread}")
    print("| " + " | ".join(row) + " |")
t = runs[0].get("torch")
if t:
    print(f"\nPyTorch {t['torch_version']} on {t['device']}, {t['threads']} threads; "
          f"{len(runs)} run(s); CPU backend {runs[0]['cpu_threads']} threads.")
