"""Shared output of the benchmark scripts: an aligned table on stdout and a CSV file."""
from __future__ import annotations

import csv
from pathlib import Path


def report(rows: list[dict], path: Path, extra: dict | None = None) -> Path:
    """Print `rows` as a table and write them (with `extra` columns first) to `path`."""
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print(" | ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*(extra or {}), *cols])
        w.writeheader()
        for r in rows:
            w.writerow({**(extra or {}), **r})
    print(f"wrote {path}")
    return path
