"""Progress without a terminal: long work (sharding, evaluation, XNLI, export) prints plain
lines when stderr is a file or a pipe, as under `make demo | tee` or Slurm."""
from __future__ import annotations

import io
import re
import subprocess
import sys

from lightmbert.data_prep.progress import Progress, track
from tests.helpers import REPO


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_line_every_ten_percent_without_a_terminal():
    out = io.StringIO()
    with Progress(1000, "encode", "texts", stream=out) as p:
        for _ in range(333):
            p.update(3, loss="0.5")
    lines = out.getvalue().splitlines()
    assert len(lines) == 10, lines                      # 10%, 20%, ..., 100% (999 of 1,000 → 100%)
    assert lines[0].startswith("[encode] 102/1,000 texts (10%") and "loss 0.5" in lines[0]
    assert re.match(r"\[encode\] 999/1,000 texts \(100%", lines[-1])
    big = io.StringIO()
    with Progress(10, "x", stream=big) as p:
        p.update(10)                                    # one jump past several marks: one line
    assert len(big.getvalue().splitlines()) == 1


def test_a_line_after_a_quiet_interval_even_between_marks(monkeypatch):
    import lightmbert.data_prep.progress as pr
    now = [0.0]
    monkeypatch.setattr(pr.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    p = Progress(10_000, "slow", stream=out, seconds=30)
    p.update(1)                    # 0.01%, t=0: nothing yet
    now[0] = 31.0
    p.update(1)                    # still < 10%, but 31 s since the last line
    assert out.getvalue().count("[slow]") == 1 and "(0%, 31 s" in out.getvalue()


def test_a_bar_on_a_terminal_and_nothing_when_disabled():
    tty = FakeTTY()
    assert list(track(range(5), 5, "bar", stream=tty)) == list(range(5))
    assert "bar" in tty.getvalue() and "[bar]" not in tty.getvalue()   # tqdm's bar, not lines
    quiet = io.StringIO()
    assert list(track(range(3), 3, "q", enabled=False, stream=quiet)) == [0, 1, 2] and not quiet.getvalue()


def test_sharding_cli_shows_progress_in_a_pipe(corpus, tiny_tokenizer, tmp_path):
    r = subprocess.run([sys.executable, "-m", "lightmbert.data_prep.shard", f"--input.directory={corpus}",
                        f"--tokenizer.name_or_path={tiny_tokenizer}", f"--output.dir={tmp_path}/out",
                        "--workers=1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[data_prep tokenise] 4/4 units (100%" in r.stderr
    assert "[data_prep write] 4/4 languages (100%" in r.stderr
