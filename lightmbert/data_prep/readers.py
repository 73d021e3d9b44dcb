"""Input side of data_prep: resolve the configured files, cut them into work units, and read
documents (lists of segments) from a unit, counting everything repaired or skipped.

All path/language errors are raised by `resolve_inputs` before any work starts.
"""
from __future__ import annotations

import codecs
import fnmatch
import glob
import gzip
import hashlib
import io
import json
import os
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lightmbert.configs import InputConfig, check_language_key

from . import PrepError

SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")


def _suffix(path: str) -> str | None:
    return next((s for s in SUFFIXES if path.endswith(s)), None)


# ----------------------------------------------------------------------------- resolution
def _files_in_dir(d: Path) -> list[str]:
    return sorted(str(p) for p in d.rglob("*") if p.is_file() and _suffix(p.name))


def resolve_inputs(cfg: InputConfig) -> dict[str, list[str]]:
    """Language → sorted list of existing files. Raises PrepError on anything unusable."""
    found: dict[str, list[str]] = {}
    if cfg.directory:
        root = Path(cfg.directory)
        if not root.is_dir():
            raise PrepError(f"input.directory: not a directory: {root}")
        for entry in sorted(root.iterdir()):
            suffix = _suffix(entry.name)
            if entry.is_dir():
                lang, files = entry.name, _files_in_dir(entry)
            elif entry.is_file() and suffix:
                lang, files = entry.name[: -len(suffix)], [str(entry)]
            else:
                continue
            try:
                check_language_key(lang)
            except ValueError as e:
                raise PrepError(f"input.directory: {root}/{entry.name}: {e}") from None
            if files:
                found.setdefault(lang, []).extend(files)
    for lang, patterns in cfg.languages.items():
        if not patterns:
            raise PrepError(f"input.languages.{lang}: no files given")
        for pat in patterns:
            if glob.has_magic(pat):
                hits = sorted(glob.glob(pat, recursive=True))
                hits = [h for h in hits if os.path.isfile(h)]
                if not hits:
                    raise PrepError(f"input.languages.{lang}: pattern {pat!r} matches no file")
            elif os.path.isdir(pat):
                hits = _files_in_dir(Path(pat))
                if not hits:
                    raise PrepError(f"input.languages.{lang}: folder {pat} holds no "
                                    f"{'/'.join(SUFFIXES)} file")
            elif os.path.isfile(pat):
                hits = [pat]
            else:
                raise PrepError(f"input.languages.{lang}: no such file: {pat}")
            for h in hits:
                if not _suffix(h):
                    raise PrepError(f"input.languages.{lang}: {h}: unsupported file type "
                                    f"(expected {', '.join(SUFFIXES)})")
            found.setdefault(lang, []).extend(hits)
    for lang in [*cfg.include, *cfg.exclude]:
        if lang not in found:
            raise PrepError(f"input.include/exclude: language {lang!r} has no input "
                            f"(found: {', '.join(sorted(found)) or 'none'})")
    langs = [k for k in sorted(found) if (not cfg.include or k in cfg.include)
             and k not in cfg.exclude]
    if not langs:
        raise PrepError("input: no language left to process")
    return {k: sorted(set(found[k])) for k in langs}


def encoding_for(path: str, cfg: InputConfig) -> str:
    for pattern, enc in cfg.encodings.items():
        if fnmatch.fnmatch(path, pattern):
            return enc
    return cfg.encoding


def check_encodings(cfg: InputConfig) -> None:
    for name in [cfg.encoding, *cfg.encodings.values()]:
        try:
            codecs.lookup(name)
        except LookupError:
            raise PrepError(f"input.encoding(s): unknown codec {name!r}") from None


# ----------------------------------------------------------------------------- work units
@dataclass(frozen=True)
class Unit:
    """A piece of one input file processed by one worker: a whole file, or a byte range
    [start, end) of an uncompressed text file cut at line boundaries."""
    lang: str
    path: str
    file_index: int
    chunk: int
    start: int
    end: int          # -1: to the end of the file
    encoding: str

    @property
    def uid(self) -> str:
        return f"{self.file_index:05d}-{self.chunk:04d}"


def plan_units(files: dict[str, list[str]], cfg: InputConfig) -> list[Unit]:
    chunk = cfg.chunk_mb << 20
    units = []
    for lang, paths in files.items():
        for fi, path in enumerate(paths):
            enc = encoding_for(path, cfg)
            size = os.path.getsize(path)
            if path.endswith(".gz") or size <= chunk:
                units.append(Unit(lang, path, fi, 0, 0, -1, enc))
                continue
            bounds = [0]
            with open(path, "rb") as f:
                while bounds[-1] + chunk < size:
                    f.seek(bounds[-1] + chunk)
                    f.readline()  # move to the start of the next line
                    if f.tell() >= size:
                        break
                    bounds.append(f.tell())
            bounds.append(size)
            for ci, (a, b) in enumerate(zip(bounds, bounds[1:])):
                units.append(Unit(lang, path, fi, ci, a, b, enc))
    return units


def fingerprint(path: str) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"path": path, "bytes": os.path.getsize(path), "sha256": h.hexdigest()}


# ----------------------------------------------------------------------------- reading
class _Decoder:
    """Counts undecodable byte sequences while replacing them with U+FFFD."""
    def __init__(self) -> None:
        self.invalid = 0
        self.name = f"lightmbert-count-{id(self)}"
        codecs.register_error(self.name, self._handle)

    def _handle(self, err: UnicodeDecodeError):
        self.invalid += 1
        return "\ufffd", err.end


def _open_lines(unit: Unit, errors: str) -> Iterator[str]:
    if unit.path.endswith(".gz"):
        raw: io.BufferedIOBase = gzip.open(unit.path, "rb")  # type: ignore[assignment]
    else:
        with open(unit.path, "rb") as f:
            f.seek(unit.start)
            data = f.read() if unit.end < 0 else f.read(unit.end - unit.start)
        raw = io.BytesIO(data)
    with io.TextIOWrapper(raw, encoding=unit.encoding, errors=errors, newline="") as text:
        for line in text:
            yield line.rstrip("\r\n")


def read_documents(unit: Unit, text_field: str, normalize: str,
                   counts: Counter) -> Iterator[list[str]]:
    """Documents of a unit as lists of non-empty, normalised segments."""
    dec = _Decoder()
    jsonl = ".jsonl" in unit.path
    lines = 0

    def norm(s: str) -> str:
        if normalize != "none" and not unicodedata.is_normalized(normalize, s):
            counts["normalized_segments"] += 1
            return unicodedata.normalize(normalize, s)
        return s

    try:
        doc: list[str] = []
        for line in _open_lines(unit, dec.name):
            lines += 1
            if jsonl:
                if not line.strip():
                    counts["blank_lines"] += 1
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    counts["bad_json_records"] += 1
                    continue
                text = rec.get(text_field) if isinstance(rec, dict) else None
                if not isinstance(text, str):
                    counts["records_without_text"] += 1
                    continue
                segs = [norm(s.strip()) for s in text.split("\n")]
                counts["blank_lines"] += sum(1 for s in segs if not s)
                segs = [s for s in segs if s]
                if segs:
                    counts["documents"] += 1
                    yield segs
                else:
                    counts["empty_documents"] += 1
                continue
            seg = line.strip()
            if not seg:
                counts["blank_lines"] += 1
                if doc:
                    counts["documents"] += 1
                    yield doc
                    doc = []
                continue
            doc.append(norm(seg))
        if doc:
            counts["documents"] += 1
            yield doc
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise PrepError(f"{unit.path}: corrupt or truncated gzip file "
                        f"({type(e).__name__}: {e})") from None
    except OSError as e:
        raise PrepError(f"{unit.path}: cannot read ({e})") from None
    finally:
        counts["lines"] += lines
        counts["invalid_bytes_replaced"] += dec.invalid
    if lines == 0 and unit.chunk == 0:
        counts["empty_files"] += 1
