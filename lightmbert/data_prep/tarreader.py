"""A fast, validating reader for webdataset tar shards: the reading half of tarwriter.py.

Python's `tarfile` spends most of its time on generality (PAX/GNU headers, member objects,
seeking); `np.load` of a BytesIO per sample halves the rate again. Our shards are plain USTAR
members with short names, so the 512-byte headers are parsed straight from the byte stream
that `webdataset.gopen` opens (a local path, `pipe:cmd ...`, `http(s)://`, ...), and a `.npy`
payload becomes an array with `np.frombuffer` past its (cached) header.

Every shard is read whole or the reader says what is wrong, naming the shard: a header whose
checksum does not match (garbled bytes), a member cut short or an archive without its two
zero end blocks (truncated), fewer or more samples than the manifest records, and with
`sha256` a hash that differs from the manifest's.
"""
from __future__ import annotations

import ast
import hashlib
from typing import Iterator

import numpy as np

BLOCK = 512


class ShardError(IOError):
    """A shard that is missing, truncated, garbled or not what the manifest says."""


def _octal(field: bytes) -> int:
    field = bytes(field).strip(b"\0 ")
    try:
        return int(field, 8) if field else 0
    except ValueError:  # a garbled header: the caller names the shard
        raise ShardError(f"garbled tar header field {field[:20]!r}") from None


_ZERO = bytes(BLOCK)


def members(buf, where: str) -> Iterator[tuple[str, memoryview]]:
    """(name, data) of each regular member of a tar archive held in memory, checked; stops at
    the end blocks. `data` is a view into `buf` (no copy)."""
    view, pos, end = memoryview(buf), 0, len(buf)
    while True:
        if pos + BLOCK > end:
            raise ShardError(f"{where}: truncated: the archive ends without its end-of-archive blocks"
                             + (f" (a {end - pos}-byte partial header)" if end > pos else ""))
        head = view[pos:pos + BLOCK]
        if head == _ZERO:
            if view[pos + BLOCK:pos + 2 * BLOCK] != _ZERO:
                raise ShardError(f"{where}: truncated or garbled after the first end-of-archive block")
            return
        hb = bytes(head)
        if _octal(hb[148:156]) != 256 + sum(hb[:148]) + sum(hb[156:]):  # the checksum field counts as spaces
            raise ShardError(f"{where}: garbled: a tar header's checksum does not match at byte {pos} "
                             f"(near member {hb[:100].rstrip(bytes(1)).decode(errors='replace')!r})")
        name = hb[:100].rstrip(b"\0").decode("utf-8")
        if hb[257:262] == b"ustar" and hb[345] != 0:
            name = f"{hb[345:500].rstrip(bytes(1)).decode('utf-8')}/{name}"
        size, kind = _octal(hb[124:136]), hb[156:157]
        data_end = pos + BLOCK + size
        if data_end > end:
            raise ShardError(f"{where}: truncated: member {name!r} holds {end - pos - BLOCK} of {size} bytes")
        if kind in (b"0", b"\0"):
            yield name, view[pos + BLOCK:data_end]
        elif kind != b"5":  # directories are skipped; links, PAX and GNU headers are not ours
            raise ShardError(f"{where}: member {name!r} has tar type {kind!r}: not a data_prep shard")
        pos = data_end + (-size % BLOCK)


_NPY: dict[bytes, tuple[np.dtype, int, int]] = {}


def npy_array(b, where: str) -> np.ndarray:
    """A 1-D `.npy` payload as an array (a view of `b`), its header parsed once per shape."""
    b = memoryview(b)
    if b[:6] != b"\x93NUMPY":
        raise ShardError(f"{where}: not a .npy payload")
    hlen = int.from_bytes(b[8:10], "little") if b[6] == 1 else int.from_bytes(b[8:12], "little")
    start = (10 if b[6] == 1 else 12) + hlen
    head = bytes(b[:start])
    got = _NPY.get(head)
    if got is None:
        meta = ast.literal_eval(head[start - hlen:].decode("latin1"))
        if meta.get("fortran_order") or len(meta.get("shape", ())) != 1:
            raise ShardError(f"{where}: expected a 1-D array, got {meta}")
        got = _NPY[head] = (np.dtype(meta["descr"]), meta["shape"][0], start)
    dtype, n, start = got
    if len(b) - start != n * dtype.itemsize:
        raise ShardError(f"{where}: .npy payload holds {len(b) - start} bytes, its header says {n} × {dtype}")
    return np.frombuffer(b, dtype=dtype, count=n, offset=start)


def open_url(url: str):
    """A binary stream for a local path or any URL webdataset's gopen understands."""
    from webdataset import gopen
    try:
        return gopen(url, "rb")
    except OSError as e:
        raise ShardError(f"{url}: cannot open: {e}") from None


def fetch(url: str) -> bytes:
    """The whole shard (a local read, or a pipe/HTTP stream to its end); a failed opener
    (curl's 404, a failing `pipe:` command) is an error naming the URL."""
    f = open_url(url)
    try:
        data = f.read()
    except OSError as e:
        raise ShardError(f"{url}: read failed: {e}") from None
    finally:
        try:
            f.close()
        except Exception as e:
            raise ShardError(f"{url}: {type(e).__name__}: {e}") from None
    return data


def load_shard(url: str, expect_samples: int | None = None, sha256: str | None = None
               ) -> list[tuple[str, dict[str, memoryview]]]:
    """[(key, {field: bytes view})] of every sample of one shard, in order (fields grouped by
    key, the name up to its first dot), after checking the whole shard: its tar structure
    always, its sample count when `expect_samples` is given, its sha256 when given. Nothing
    of a bad shard is handed out."""
    buf = fetch(url)
    if sha256 is not None and hashlib.sha256(buf).hexdigest() != sha256:
        raise ShardError(f"{url}: sha256 {hashlib.sha256(buf).hexdigest()[:16]}… differs from the manifest's "
                         f"{sha256[:16]}…: the shard is not the one data_prep wrote")
    out: list[tuple[str, dict]] = []
    key = None
    for name, data in members(buf, url):
        k, _, field = name.rsplit("/", 1)[-1].partition(".")
        if k != key:
            out.append((k, {}))
            key = k
        out[-1][1][field] = data
    if expect_samples is not None and len(out) != expect_samples:
        raise ShardError(f"{url}: holds {len(out)} samples, the manifest says {expect_samples}: the shard was "
                         f"rewritten or cut short")
    return out
