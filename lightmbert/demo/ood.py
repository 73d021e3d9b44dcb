"""An out-of-domain held-out set for the demo: LibreOffice's help, English ↔ 12 languages.

The demo distils on software UI strings, game dialogue, GNOME help and quotes; its in-domain
held-out pairs (demo/heldout.jsonl) are more of the same. This set comes from a source the demo
never trains on — the LibreOffice help (Debian's `libreoffice-help-<lang>` packages, MPL-2.0):
full sentences and paragraphs of documentation prose (8–60 English words) in another project's
vocabulary (spreadsheets, Basic, databases, charts). Each help page exists per language with the
same paragraph ids (`<p id="par_id…">`), so paragraphs align by id, not by order.

Kept: paragraphs whose English has 8–60 words, whose translation differs from the English
(untranslated paragraphs fall back to English), deduplicated on both sides within a language,
and never a string of the demo's training text or translation pairs (either side; counted).
Rows are sorted by a hash of the English text, so `load_pairs(max_per_language=N)` takes a
deterministic, source-mixed sample.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Iterator

from .corpus import clean

# our language key → the Debian package suffix (libreoffice-help-<suffix>) and help folder
LIBREOFFICE_LANGS = {"de": "de", "el": "el", "es": "es", "fr": "fr", "hi": "hi", "ru": "ru", "tr": "tr",
                     "vi": "vi", "zh": "zh-cn", "ja": "ja", "ko": "ko", "id": "id"}
LIBREOFFICE_PACKAGES = ["libreoffice-help-en-us"] + [f"libreoffice-help-{s}" for s in LIBREOFFICE_LANGS.values()]
LIBREOFFICE_PATTERNS = ["./usr/share/libreoffice/help/*/text/*"]
MIN_WORDS, MAX_WORDS = 8, 60

_PARA = re.compile(r"<p\b[^>]*?\bid=\"([^\"]+)\"[^>]*>(.*?)</p>", re.S)


def _folder(suffix: str) -> str:
    """Debian's package suffix → the help folder name (zh-cn → zh-CN, en-us → en-US)."""
    head, _, tail = suffix.partition("-")
    return f"{head}-{tail.upper()}" if tail else head


def page_paragraphs(path: Path) -> dict[str, str]:
    """paragraph id → cleaned text of one help page (empty if unreadable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    return {pid: clean(body) for pid, body in _PARA.findall(text)}


def libreoffice_items(root: Path, languages: dict[str, str] = LIBREOFFICE_LANGS) -> Iterator[tuple[str, str, dict]]:
    """(domain, English, {lang: translation}) per English help paragraph, aligned by page and id."""
    base = root / "usr/share/libreoffice/help"
    en_root = base / "en-US"
    for page in sorted(en_root.rglob("*.html")):
        rel = page.relative_to(en_root)
        en = page_paragraphs(page)
        if not en:
            continue
        per_lang = {lang: page_paragraphs(base / _folder(sfx) / rel) for lang, sfx in languages.items()}
        domain = "libreoffice/" + "/".join(rel.parts[1:2])
        for pid, en_text in en.items():
            trs = {lang: paras[pid] for lang, paras in per_lang.items() if paras.get(pid)}
            yield domain, en_text, trs


def training_strings(demo: Path) -> set[str]:
    """Every line of the demo's training text and both sides of its training pairs."""
    seen: set[str] = set()
    for f in sorted((demo / "text").glob("*.txt")):
        seen.update(line for line in f.read_text(encoding="utf-8").splitlines() if line)
    par = demo / "parallel.jsonl"
    if par.exists():
        for line in par.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            seen.add(row["en"])
            seen.update(row["translations"].values())
    return seen


def build_ood(root: Path, demo: Path, out_name: str = "heldout_ood.jsonl") -> dict:
    """Write demo/<out_name> from the extracted LibreOffice help under `root`; return counts."""
    banned = training_strings(demo)
    stats = {"source": "libreoffice-help (Debian), MPL-2.0", "english_paragraphs": 0, "length_filtered": 0,
             "untranslated": 0, "in_training_text": 0, "duplicates": 0, "items": 0, "per_language": {}}
    rows: dict[str, tuple[str, dict]] = {}
    seen_tr: dict[str, set[str]] = {lang: set() for lang in LIBREOFFICE_LANGS}
    for domain, en, trs in libreoffice_items(root):
        stats["english_paragraphs"] += 1
        if not MIN_WORDS <= len(en.split()) <= MAX_WORDS:
            stats["length_filtered"] += 1
            continue
        if en in rows:
            stats["duplicates"] += 1
            continue
        if en in banned:
            stats["in_training_text"] += 1
            continue
        kept = {}
        for lang, t in sorted(trs.items()):
            if t == en:
                stats["untranslated"] += 1
            elif t in banned:
                stats["in_training_text"] += 1
            elif t in seen_tr[lang]:
                stats["duplicates"] += 1
            else:
                seen_tr[lang].add(t)
                kept[lang] = t
        if kept:
            rows[en] = (domain, kept)
    order = sorted(rows, key=lambda e: hashlib.sha1(e.encode("utf-8")).hexdigest())
    tmp = demo / (out_name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for en in order:
            domain, trs = rows[en]
            for lang in trs:
                stats["per_language"][lang] = stats["per_language"].get(lang, 0) + 1
            f.write(json.dumps({"id": hashlib.sha1(en.encode()).hexdigest()[:12], "domain": domain,
                                "en": en, "translations": trs}, ensure_ascii=False) + "\n")
    tmp.replace(demo / out_name)
    stats["items"] = len(order)
    stats["per_language"] = dict(sorted(stats["per_language"].items()))
    return stats
