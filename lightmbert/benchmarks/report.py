"""Shared output of the benchmark scripts: an aligned table on stdout and a CSV file."""
from __future__ import annotations

import csv
from pathlib import Path


def write_csv(rows: list[dict], path: Path, extra: dict | None = None) -> Path:
    """Write `rows` (with `extra` columns first) to `path`, replacing it whole (a temporary file
    renamed over it): a reader — or a run killed mid-write — never sees half a file. Scripts
    call it after every row, so a run stopped at a time limit keeps the rows it finished."""
    cols = list(dict.fromkeys(c for r in rows for c in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*(extra or {}), *cols])
        w.writeheader()
        for r in rows:
            w.writerow({**(extra or {}), **r})
    tmp.replace(path)
    return path


def report(rows: list[dict], path: Path, extra: dict | None = None) -> Path:
    """Print `rows` as a table and write them (with `extra` columns first) to `path`."""
    cols = list(dict.fromkeys(c for r in rows for c in r))  # rows may differ (a failed variant)
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print(" | ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths)))
    write_csv(rows, path, extra)
    print(f"wrote {path}")
    return path
