"""Progress that shows whether or not stderr is a terminal.

On a terminal: a tqdm bar, as users expect. Otherwise (`make demo | tee log`, a Slurm
`.out` file, CI): one plain line every `every` percent of the work and at least every
`seconds` — so a five-minute evaluation never looks like a hang in a log. Shared by
sharding, evaluation and export (data_prep is the bottom layer every package may import).
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


class Progress:
    """`with Progress(total, "encode") as p: ... p.update(n)`; or `track(iterable, ...)`."""

    def __init__(self, total: int, desc: str, unit: str = "it", every: float = 10.0,
                 seconds: float = 30.0, stream=None, tty: bool | None = None):
        self.total, self.desc, self.unit = max(int(total), 0), desc, unit
        self.every, self.seconds = every, seconds
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.n = self._shown = 0
        self._t0 = self._last_t = time.monotonic()
        self._next_pct = every
        self._bar = None
        if self.tty:
            from tqdm import tqdm
            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream,
                             dynamic_ncols=True, leave=False)

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(**postfix)
            return
        now = time.monotonic()
        pct = 100.0 * self.n / self.total if self.total else 100.0
        if pct + 1e-9 >= self._next_pct or now - self._last_t >= self.seconds:
            while self._next_pct <= pct + 1e-9:
                self._next_pct += self.every
            self._line(now, postfix)

    def _line(self, now: float, postfix: dict) -> None:
        self._last_t, self._shown = now, self.n
        pct = 100.0 * self.n / self.total if self.total else 100.0
        extra = "".join(f", {k} {v:,}" if isinstance(v, int) else f", {k} {v}" for k, v in postfix.items())
        rate = self.n / max(now - self._t0, 1e-9)
        print(f"[{self.desc}] {self.n:,}/{self.total:,} {self.unit} ({pct:.0f}%, "
              f"{now - self._t0:.0f} s, {rate:,.1f} {self.unit}/s{extra})", file=self.stream, flush=True)

    def close(self) -> None:
        """Ends the bar; without a terminal, a last line if the end was not reported yet."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif not self.tty and self.n != self._shown:
            self._line(time.monotonic(), {})

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable[T], total: int, desc: str, unit: str = "it", enabled: bool = True,
          **kw) -> Iterator[T]:
    """Iterate `items`, reporting progress (nothing at all when not `enabled`)."""
    if not enabled:
        yield from items
        return
    with Progress(total, desc, unit, **kw) as p:
        for item in items:
            yield item
            p.update(1)
