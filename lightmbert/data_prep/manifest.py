"""manifest.json: what a data_prep output folder holds, and how to check it.

Written last and atomically, so its presence means the folder is complete. It carries no
timestamps: an interrupted-and-resumed run produces the same bytes as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from . import PrepError

FORMAT = "lightmbert-shards/1"
MANIFEST = "manifest.json"
IDENTITY = ".identity.json"


def write_json(path: Path, obj) -> None:
    # a temporary name of this writer's own: Slurm array tasks write the same identity file
    # at once, and with one shared name one task's rename took the other's file away
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_url(root: str | os.PathLike) -> bool:
    """A shard location webdataset's gopen opens rather than a local folder: `http(s)://...`,
    `pipe:cmd ...`, or a template with `{}` for the relative path."""
    root = str(root)
    return "://" in root or root.startswith("pipe:") or "{}" in root


def shard_url(root: str | os.PathLike, rel: str) -> str:
    """Where a manifest path (`en/en-000000.tar`, `manifest.json`) lives under `root`: a local
    folder, a URL prefix (`https://host/shards`, `pipe:cat /data/shards`) or a template
    (`pipe:aws s3 cp s3://bucket/shards/{} -`)."""
    root = str(root)
    if "{}" in root:
        return root.replace("{}", rel)
    if is_url(root):
        return root.rstrip("/") + "/" + rel
    return str(Path(root) / rel)


def read_manifest(out_dir: str | os.PathLike) -> dict:
    if is_url(out_dir):
        from .tarreader import ShardError, fetch
        url = shard_url(out_dir, MANIFEST)
        try:
            text = fetch(url).decode("utf-8")
        except ShardError as e:
            raise PrepError(f"{url}: no manifest ({e})") from None
        return _parse_manifest(text, url)
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise PrepError(f"{path}: no manifest (is {out_dir} a finished data_prep output?)")
    return _parse_manifest(path.read_text(encoding="utf-8"), path)


def _parse_manifest(text: str, path) -> dict:
    try:
        m = json.loads(text)
    except json.JSONDecodeError as e:
        raise PrepError(f"{path}: invalid JSON ({e})") from None
    if m.get("format") != FORMAT:
        raise PrepError(f"{path}: unknown format {m.get('format')!r} (expected {FORMAT})")
    return m


def shard_paths(manifest: dict, out_dir: str | os.PathLike, lang: str) -> list[str]:
    return [str(Path(out_dir) / s["path"]) for s in manifest["languages"][lang]["shards"]]


def _check_files(out_dir, shards: list[dict], check_hashes: bool) -> None:
    for sh in shards:
        p = Path(out_dir) / sh["path"]
        if not p.is_file():
            raise PrepError(f"missing shard {p}")
        if check_hashes and sha256_file(p) != sh["sha256"]:
            raise PrepError(f"shard {p}: sha256 differs from the manifest")


def verify(out_dir: str | os.PathLike, check_hashes: bool = True) -> dict:
    """Check that every shard (text and translation pairs) exists with its recorded hash and
    that counts add up."""
    m = read_manifest(out_dir)
    total_samples = total_tokens = 0
    for lang, info in m["languages"].items():
        s = sum(sh["samples"] for sh in info["shards"])
        t = sum(sh["tokens"] for sh in info["shards"])
        if s != info["samples"] or t != info["tokens"]:
            raise PrepError(f"manifest {lang}: shard counts ({s} samples, {t} tokens) do not add "
                            f"up to the language totals ({info['samples']}, {info['tokens']})")
        _check_files(out_dir, info["shards"], check_hashes)
        total_samples += s
        total_tokens += t
    if (total_samples, total_tokens) != (m["totals"]["samples"], m["totals"]["tokens"]):
        raise PrepError("manifest totals do not match the per-language sums")
    par = m.get("parallel")
    if par:  # translation pairs (lightmbert.data_prep.parallel)
        if sum(sh["samples"] for sh in par["shards"]) != par["items"]:
            raise PrepError("manifest parallel: shard items do not add up to the item count")
        _check_files(out_dir, par["shards"], check_hashes)
    return m
