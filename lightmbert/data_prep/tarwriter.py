"""A fast writer for webdataset tar shards, byte-identical to `webdataset.TarWriter`.

webdataset writes each member through Python's `tarfile`, ~60 µs per member: for short
sequences that is a third of the tokenizer's own cost per sample. Our samples are always
the same simple case (regular files, short ASCII names, fixed owner/mode/mtime, USTAR
format), so the 512-byte header is built directly. `tests/test_tarwriter.py` checks the bytes
against webdataset's writer on random samples; readers cannot tell the difference.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

BLOCK = 512
RECORD = 20 * BLOCK  # tarfile pads the archive to a multiple of this


def _field(s: bytes, n: int) -> bytes:
    if len(s) > n:
        raise ValueError(f"tar field too long: {s!r}")
    return s + b"\0" * (n - len(s))


def _octal(v: int, n: int) -> bytes:
    return b"%0*o" % (n - 1, v) + b"\0"


class FastTarWriter:
    """Writes {name: bytes} members as USTAR entries with fixed metadata."""

    def __init__(self, path: str | os.PathLike, user: str = "lightmbert", group: str = "lightmbert",
                 mode: int = 0o444, mtime: int = 0):
        self.f = open(path, "wb")
        self.offset = 0
        # Everything but name, size and checksum is the same for every member (device
        # numbers stay empty for regular files, as tarfile writes them).
        self._mode, self._ids = _octal(mode & 0o7777, 8), _octal(0, 8) * 2
        self._mtime = _octal(mtime, 12)
        self._tail = (b"0" + b"\0" * 100 + b"ustar\x0000" + _field(user.encode(), 32)
                      + _field(group.encode(), 32) + b"\0" * 16 + b"\0" * 155 + b"\0" * 12)

    def add(self, name: str, data: bytes) -> None:
        head = (_field(name.encode("utf-8"), 100) + self._mode + self._ids + _octal(len(data), 12)
                + self._mtime)
        chk = 256 + sum(head) + sum(self._tail)  # checksum field counted as 8 spaces
        header = head + b"%06o\0 " % chk + self._tail
        pad = -len(data) % BLOCK
        self.f.write(header + data + b"\0" * pad)
        self.offset += BLOCK + len(data) + pad

    def write(self, sample: dict) -> None:
        """A webdataset sample: `__key__` plus already-encoded fields, in sorted order."""
        key = sample["__key__"]
        for k in sorted(sample):
            if k != "__key__":
                self.add(f"{key}.{k}", sample[k])

    def close(self) -> None:
        end = self.offset + 2 * BLOCK
        self.f.write(b"\0" * (2 * BLOCK + (-end % RECORD)))
        self.f.close()


_NPY_HEADERS: dict[tuple, bytes] = {}


def npy_bytes(a: np.ndarray) -> bytes:
    """`np.save` bytes of an array (the header is cached per dtype and shape)."""
    key = (a.dtype.str, a.shape)
    head = _NPY_HEADERS.get(key)
    if head is None:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, a, allow_pickle=False)
        head = _NPY_HEADERS[key] = buf.getvalue()[: buf.tell() - a.nbytes]
    return head + np.ascontiguousarray(a).tobytes()


class ShardStream:
    """ShardWriter semantics: `maxcount` samples per shard named `pattern % k`, each written
    as `<name>.tmp` and renamed when complete; numbering starts at `start_shard`."""

    def __init__(self, pattern: str, maxcount: int, start_shard: int = 0):
        self.pattern, self.maxcount, self.shard = pattern, maxcount, start_shard
        self.tar: FastTarWriter | None = None
        self.count = 0
        self.path = ""

    def _finish(self) -> None:
        if self.tar is not None:
            self.tar.close()
            os.replace(self.path + ".tmp", self.path)
            self.tar = None

    def write(self, sample: dict) -> None:
        if self.tar is None or self.count >= self.maxcount:
            self._finish()
            self.path = self.pattern % self.shard
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.tar = FastTarWriter(self.path + ".tmp")
            self.shard += 1
            self.count = 0
        self.tar.write(sample)
        self.count += 1

    def close(self) -> None:
        self._finish()
