"""python -m lightmbert.data_prep.shard --config configs/data/<name>.yaml [--section.key=value ...]

Multilingual text → tokenised, packed webdataset shards, one shard stream per language:

    OUT/<lang>/<lang>-000000.tar ...   samples: <key>.input_ids.npy, <key>.lang.txt
    OUT/parallel/parallel-000000.tar   translation pairs (input.parallel; see lightmbert.data_prep.parallel)
    OUT/manifest.json                  counts, hashes, tokenizer identity (written last)
    OUT/config.yaml                    the resolved config

Two phases, both over a process pool:
  1. tokenise + pack each work unit (a file, or a chunk of a big text file) into
     OUT/.work/<lang>/<unit>.npz (written under a temporary name, then renamed);
  2. per language, stream the units in order into tar shards of `shard_samples` sequences
     (each shard written as .tar.tmp and renamed when complete); translation pairs, if any,
     are tokenised in chunks by the same pool and written in file order.
Units and shard boundaries depend only on the config, never on the worker count, and the
tar headers carry fixed metadata, so the bytes are the same however the work was split or
interrupted. A re-run skips finished units and shards; kill -9 at any moment is safe.
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from lightmbert.configs import ConfigError, PrepConfig, dump, parse_cli

from . import PrepError
from . import parallel as pairs
from .manifest import FORMAT, IDENTITY, MANIFEST, read_manifest, sha256_file, write_json
from .packing import Packer
from .progress import Progress
from .tarwriter import ShardStream, npy_bytes
from .readers import Unit, check_encodings, fingerprint, plan_units, read_documents, resolve_inputs
from .tokenizer import backend_json, describe_tokenizer, load_tokenizer

_BATCH_SEGMENTS = 2048  # segments per encode_batch call: amortises the Python↔Rust crossing


def _log(msg: str) -> None:
    print(f"[data_prep] {msg}", file=sys.stderr, flush=True)


# ============================================================================ phase 1 (workers)
_TOK = None


def _init_worker(tok_json: str) -> None:
    global _TOK
    from tokenizers import Tokenizer
    _TOK = Tokenizer.from_str(tok_json)


def _encode(segments: list[str]) -> list[list[int]]:
    return [e.ids for e in _TOK.encode_batch_fast(segments, add_special_tokens=False)]


def _unit_path(work: Path, unit: Unit) -> Path:
    return work / unit.lang / f"{unit.uid}.npz"


def _tokenize_unit(job: tuple) -> tuple[Unit, int]:
    """Tokenise and pack one unit into its .npz; returns (unit, tokens)."""
    unit, work, p = job
    target = _unit_path(work, unit)
    if target.exists():  # finished by an earlier (interrupted) run
        with np.load(target) as z:
            return unit, int(z["lengths"].sum())
    packer = Packer(p["seq_len"], p["cls_id"], p["sep_id"], p["prefix_ids"], p["mode"])
    counts: Counter = Counter()
    docs: list[list[str]] = []
    pending = 0

    def flush() -> None:
        flat = [s for d in docs for s in d]
        ids = _encode(flat)
        i = 0
        for d in docs:
            packer.add_document(ids[i:i + len(d)])
            i += len(d)
        docs.clear()

    for doc in read_documents(unit, p["text_field"], p["normalize"], counts):
        docs.append(doc)
        pending += len(doc)
        if pending >= _BATCH_SEGMENTS:
            flush()
            pending = 0
    flush()
    ids, lengths = packer.arrays(p["dtype"])
    counts.update(packer.stats)
    counts["sequences"] = len(lengths)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, ids=ids, lengths=lengths,
                 counts=np.frombuffer(json.dumps(dict(counts)).encode(), dtype=np.uint8))
    os.replace(tmp, target)
    return unit, int(lengths.sum())


# ============================================================================ phase 2 (workers)
def _write_language(job: tuple) -> tuple[str, dict]:
    lang, unit_files, out, shard_samples = job
    lang_dir = out / lang
    lang_dir.mkdir(parents=True, exist_ok=True)
    zs = [np.load(f) for f in unit_files]
    lengths = np.concatenate([z["lengths"] for z in zs]) if zs else np.zeros(0, np.int64)
    counts: Counter = Counter()
    for z in zs:
        counts.update(json.loads(z["counts"].tobytes()))
    total = len(lengths)
    n_shards = math.ceil(total / shard_samples)

    def final(k: int) -> Path:
        return lang_dir / f"{lang}-{k:06d}.tar"

    done = 0
    while done < n_shards and final(done).exists():  # shards are written in order
        done += 1
    if done < n_shards:
        skip = done * shard_samples
        # fixed tar metadata (owner, mode, mtime 0) → byte-identical shards on every run
        writer = ShardStream(str(lang_dir / f"{lang}-%06d.tar"), shard_samples, start_shard=done)
        lang_bytes = lang.encode()
        g = 0
        for z in zs:
            lens = z["lengths"]
            if g + len(lens) <= skip:
                g += len(lens)
                continue
            ids = z["ids"]
            offs = np.concatenate([[0], np.cumsum(lens)])
            for j in range(len(lens)):
                if g >= skip:
                    writer.write({"__key__": f"{lang}-{g:09d}",
                                  "input_ids.npy": npy_bytes(ids[offs[j]:offs[j + 1]]),
                                  "lang.txt": lang_bytes})
                g += 1
        writer.close()
    for z in zs:
        z.close()
    for stale in lang_dir.glob("*.tmp"):
        stale.unlink()
    cum = np.concatenate([[0], np.cumsum(lengths)])
    shards = []
    for k in range(n_shards):
        a, b = k * shard_samples, min(total, (k + 1) * shard_samples)
        shards.append({"path": f"{lang}/{final(k).name}", "samples": b - a,
                       "tokens": int(cum[b] - cum[a]), "sha256": sha256_file(final(k))})
    return lang, {"samples": total, "tokens": int(cum[-1]), "shards": shards,
                  "counts": dict(sorted(counts.items()))}


def _tokenize_pairs(job: tuple) -> tuple[list, Counter]:
    chunk, p = job
    return pairs.tokenize_rows(chunk, _encode, [p["cls_id"], *p["prefix_ids"]], p["sep_id"], p["seq_len"],
                               p["dtype"])


def _write_parallel(pool, path: str, out: Path, p: dict, languages: set[str], shard_samples: int) -> dict:
    """input.parallel → OUT/parallel/*.tar (rewritten whole on a re-run: same bytes) + its
    manifest entry."""
    counts: Counter = Counter()
    rows = pairs.read_rows(path, languages, p["normalize"], counts)
    if not rows:
        raise PrepError(f"input.parallel: {path} has no item with English and a translation into "
                        f"{sorted(languages - {'en'})}")
    jobs = [(rows[a:a + pairs.ROWS_PER_JOB], p) for a in range(0, len(rows), pairs.ROWS_PER_JOB)]
    d = out / pairs.DIR
    d.mkdir(parents=True, exist_ok=True)
    writer = ShardStream(str(d / "parallel-%06d.tar"), shard_samples)
    per_lang: Counter = Counter()
    tokens: list[int] = []  # per item, for the shard entries
    with Progress(len(rows), "data_prep pairs", "items") as bar:
        for items, c in (map(_tokenize_pairs, jobs) if pool is None else pool.imap(_tokenize_pairs, jobs)):
            counts.update(c)
            for item in items:
                writer.write(pairs.sample(len(tokens), item, npy_bytes))
                per_lang.update(lang for lang, _ in item[1])
                tokens.append(len(item[0]) + sum(len(ids) for _, ids in item[1]))
            bar.update(len(items))
    writer.close()
    for stale in d.glob("*.tmp"):
        stale.unlink()
    shards = []
    for k in range(math.ceil(len(tokens) / shard_samples)):
        f = d / f"parallel-{k:06d}.tar"
        part = tokens[k * shard_samples:(k + 1) * shard_samples]
        shards.append({"path": f"{pairs.DIR}/{f.name}", "samples": len(part), "tokens": sum(part),
                       "sha256": sha256_file(f)})
    return {"source": path, "items": len(rows), "translations": dict(sorted(per_lang.items())),
            "tokens": sum(tokens), "shards": shards, "counts": dict(sorted(counts.items()))}


# ============================================================================ driver
def _identity(cfg: PrepConfig, tok_info, dtype: str) -> dict:
    return {"format": FORMAT, "tokenizer": tok_info.to_dict(), "seq_len": cfg.packing.seq_len,
            "packing_mode": cfg.packing.mode, "prefix": cfg.packing.prefix,
            "shard_samples": cfg.output.shard_samples, "chunk_mb": cfg.input.chunk_mb,
            "normalize": cfg.input.normalize, "text_field": cfg.input.text_field, "dtype": dtype}


def _check_identity(out: Path, identity: dict) -> None:
    """Refuse to mix outputs of different tokenizers / seq_len / inputs in one folder."""
    path = out / IDENTITY
    if not path.exists():
        if out.exists() and any(p for p in out.iterdir() if p.name not in ("config.yaml", ".work")
                                and not p.name.endswith(".tmp")):  # array tasks start together
            raise PrepError(f"output.dir {out} is not empty and was not made by data_prep; "
                            "choose an empty or new folder")
        out.mkdir(parents=True, exist_ok=True)
        write_json(path, identity)
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    diffs = []
    # inputs and parallel are fingerprinted after a first check (hashing takes time): a key
    # missing on either side was not recorded yet and is compared on the second call
    for key in sorted(set(old) & set(identity)):
        a, b = old[key], identity[key]
        if key == "tokenizer" and isinstance(a, dict) and isinstance(b, dict):
            if a.get("sha256") != b.get("sha256") or a.get("vocab_size") != b.get("vocab_size"):
                diffs.append(f"tokenizer: {a.get('name')!r} (sha256 {a.get('sha256', '')[:12]}) "
                             f"→ {b.get('name')!r} (sha256 {b.get('sha256', '')[:12]})")
        elif key == "inputs":
            if a is not None and b is not None and a != b:
                changed = sorted({f["path"] for lang in set(a) | set(b)
                                  for f in (a.get(lang, []) + b.get(lang, []))
                                  if f not in a.get(lang, []) or f not in b.get(lang, [])})
                diffs.append(f"inputs changed: {', '.join(changed[:5])}"
                             + (" ..." if len(changed) > 5 else ""))
        elif a != b:
            diffs.append(f"{key}: {a!r} → {b!r}")
    if diffs:
        raise PrepError(f"output.dir {out} was made with different settings; refusing to mix "
                        "them (use a new folder or delete it):\n  " + "\n  ".join(diffs))


def _pool(workers: int, tok):
    global _TOK
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # processes, not Rust threads, scale here
    tok_json = backend_json(tok)                    # also switches truncation/padding off
    if workers == 1:
        _TOK = tok.backend_tokenizer                # in-process: no need to rebuild it
        return None
    return mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(tok_json,))


def _map(pool, fn, jobs):
    if pool is None:
        return map(fn, jobs)
    return pool.imap_unordered(fn, jobs)


def _prefix_ids(tok, prefix: str) -> list[int]:
    """Token ids of the per-sequence prefix, such that prefix_ids + ids(text) equals
    ids(prefix + text): the teacher must see exactly the input format it was trained on.
    (A trailing space would otherwise become a stray "▁" token in sentencepiece vocabularies.)"""
    if not prefix:
        return []
    ids = tok(prefix.rstrip(), add_special_tokens=False)["input_ids"]
    probe = "Hello world"
    want = tok(prefix + probe, add_special_tokens=False)["input_ids"]
    if ids + tok(probe, add_special_tokens=False)["input_ids"] != want:
        raise PrepError(f"packing.prefix {prefix!r}: this tokenizer does not tokenise the prefix "
                        f"independently of the text that follows it; leave packing.prefix empty "
                        f"and put the prefix into the text instead")
    return ids


def run(cfg: PrepConfig, command: str = "") -> dict:
    """Run data_prep for `cfg`; returns the manifest."""
    t0 = time.time()
    out = Path(cfg.output.dir)
    # Everything that can be wrong with the input fails here, before any work.
    check_encodings(cfg.input)
    files = resolve_inputs(cfg.input)
    if cfg.input.parallel and not Path(cfg.input.parallel).expanduser().is_file():
        raise PrepError(f"input.parallel: {cfg.input.parallel} is not a file")
    tok = load_tokenizer(cfg.tokenizer.name_or_path)
    info = describe_tokenizer(tok, cfg.tokenizer.name_or_path)
    dtype = "uint16" if info.vocab_size <= 1 << 16 else "uint32"
    prefix_ids = _prefix_ids(tok, cfg.packing.prefix)
    params = {"seq_len": cfg.packing.seq_len, "cls_id": info.cls_id, "sep_id": info.sep_id,
              "prefix_ids": prefix_ids, "mode": cfg.packing.mode, "dtype": dtype,
              "text_field": cfg.input.text_field, "normalize": cfg.input.normalize}
    Packer(**{k: params[k] for k in ("seq_len", "cls_id", "sep_id", "prefix_ids", "mode")})
    identity = _identity(cfg, info, dtype)
    _check_identity(out, identity)
    workers = cfg.workers or os.cpu_count() or 1
    units = plan_units(files, cfg.input)
    pool = _pool(workers, tok)
    try:
        fps = {f["path"]: f for f in _map(pool, fingerprint, [p for ps in files.values() for p in ps])}
        identity["inputs"] = {lang: [fps[p] for p in ps] for lang, ps in files.items()}
        identity["parallel"] = fingerprint(str(Path(cfg.input.parallel).expanduser())) if cfg.input.parallel else None
        _check_identity(out, identity)
        write_json(out / IDENTITY, identity)
        if (out / MANIFEST).exists():
            m = read_manifest(out)
            shutil.rmtree(out / ".work", ignore_errors=True)  # killed just before its cleanup
            _log(f"{out} is already complete ({m['totals']['samples']} samples); nothing to do")
            return m
        _log(f"{len(files)} languages, {len(units)} work units, {workers} workers, "
             f"tokenizer {info.name} (vocab {info.vocab_size}), seq_len {cfg.packing.seq_len}")
        work = out / ".work"
        mine = units if cfg.num_tasks == 1 else \
            [u for i, u in enumerate(units) if i % cfg.num_tasks == cfg.task_index]
        jobs = sorted(((u, work, params) for u in mine),
                      key=lambda j: -(os.path.getsize(j[0].path) if j[0].end < 0 else j[0].end - j[0].start))
        tokens = 0
        with Progress(len(mine), "data_prep tokenise", "units") as bar:
            for _, n in _map(pool, _tokenize_unit, jobs):
                tokens += n
                bar.update(1, tokens=tokens)
        if cfg.num_tasks > 1:  # an array task: the final run writes the shards
            _log(f"task {cfg.task_index}/{cfg.num_tasks}: tokenised {len(mine)} of {len(units)} "
                 f"units ({tokens:,} tokens); shards are written by the final run")
            return {}
        by_lang: dict[str, list[Path]] = {lang: [] for lang in files}
        for u in sorted(units, key=lambda u: (u.lang, u.uid)):
            by_lang[u.lang].append(_unit_path(work, u))
        lang_jobs = [(lang, ps, out, cfg.output.shard_samples) for lang, ps in by_lang.items()]
        languages = {}
        with Progress(len(lang_jobs), "data_prep write", "languages") as bar:
            for lang, entry in _map(pool, _write_language, lang_jobs):
                languages[lang] = entry
                bar.update(1)
        parallel = None
        if cfg.input.parallel:
            parallel = _write_parallel(pool, identity["parallel"]["path"], out, params, set(files),
                                       cfg.output.shard_samples)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    languages = {lang: {**languages[lang], "inputs": identity["inputs"][lang]} for lang in sorted(languages)}
    totals: Counter = Counter()
    for v in languages.values():
        totals.update(v["counts"])
    manifest = {
        "format": FORMAT,
        "tokenizer": info.to_dict(),
        "seq_len": cfg.packing.seq_len,
        "packing": {"mode": cfg.packing.mode, "prefix": cfg.packing.prefix,
                    "prefix_ids": list(prefix_ids)},
        "dtype": dtype,
        "shard_samples": cfg.output.shard_samples,
        "sample_fields": {"input_ids.npy": f"token ids ({dtype}), [CLS]/<s> first, [SEP]/</s> last",
                          "lang.txt": "language key"},
        "totals": {"languages": len(languages),
                   "samples": sum(v["samples"] for v in languages.values()),
                   "tokens": sum(v["tokens"] for v in languages.values()),
                   "shards": sum(len(v["shards"]) for v in languages.values()),
                   "counts": dict(sorted(totals.items()))},
        "languages": languages,
    }
    if parallel is not None:
        manifest["parallel"] = parallel
    dump(cfg, out / "config.yaml", header=command or "python -m lightmbert.data_prep.shard")
    write_json(out / MANIFEST, manifest)  # last: its presence marks the folder complete
    shutil.rmtree(out / ".work", ignore_errors=True)
    dt = time.time() - t0
    t = manifest["totals"]
    _log(f"wrote {t['shards']} shards, {t['samples']} samples, {t['tokens']} tokens for "
         f"{t['languages']} languages in {dt:.1f}s ({t['tokens'] / max(dt, 1e-9):,.0f} tokens/s) → {out}")
    skipped = {k: v for k, v in t["counts"].items()
               if k in ("bad_json_records", "records_without_text", "invalid_bytes_replaced",
                        "empty_files", "empty_segments", "split_segments") and v}
    if skipped:
        _log("repaired/skipped (see manifest counts): "
             + ", ".join(f"{k}={v}" for k, v in skipped.items()))
    return manifest


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_cli(PrepConfig, argv, "python -m lightmbert.data_prep.shard", __doc__)
        if cfg is None:
            return 0
        run(cfg, command=" ".join(["python -m lightmbert.data_prep.shard", *argv]))
    except (ConfigError, PrepError) as e:
        print(f"lightmbert.data_prep.shard: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
