"""Real multilingual text from Debian packages, for the offline demo.

Sources (extracted .deb trees):
  * Wesnoth gettext catalogs   msgid (English) → msgstr, human translations    GPL-2+
  * MediaWiki i18n JSON        message key → text, en.json is the source       GPL-2+
  * GNOME user docs (Mallard)  paragraphs aligned by order with the C pages     CC-BY-SA-3.0
  * fortunes                   monolingual quotes (the .u8 files are UTF-8)     various free
Parallel items are (domain, English, {lang: translation}). A deterministic ~10% of them,
chosen by a hash of the English string, is held out for evaluation, and every held-out
string (both sides) is removed from the training text.
"""
from __future__ import annotations

import gettext
import hashlib
import html
import json
import re
import unicodedata
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Iterator

from lightmbert.configs import check_language_key

# ----------------------------------------------------------------------------- languages
_SKIP_CODES = {"qqq", "qqx", "ang", "grc", "racv", "tlh", "tokipona", "simple"}


def normalize_lang(code: str) -> str | None:
    """Source locale code → our language key, or None to skip it.

    pt_BR → pt, es_419 → es, ca@valencia → ca, nb_NO → nb, zh_CN/zh-hans → zh,
    zh_TW/zh-hant → zh-hant, sr@latin/sr-el → sr-latn; English variants other than the
    source (en_GB, en@shaw, ...) are skipped so that English has one clean source."""
    c = code.strip().lower().replace("_", "-").replace("@", "-")
    if c == "c":
        return "en"
    primary, _, rest = c.partition("-")
    if primary in _SKIP_CODES or (primary == "en" and rest) or "x-" in c:
        return None
    if primary == "zh":
        return "zh-hant" if any(t in rest for t in ("tw", "hant", "hk", "mo")) else "zh"
    if primary == "sr":
        return "sr-latn" if any(t in rest for t in ("latin", "el", "latn")) else "sr"
    try:
        check_language_key(primary)
    except ValueError:
        return None
    return primary


# ----------------------------------------------------------------------------- cleaning
_TAG = re.compile(r"<[^<>]{0,200}>")
_WIKI_TPL = re.compile(r"\{\{\s*(PLURAL|GENDER|GRAMMAR):[^|{}]*\|([^|{}]*)[^{}]*\}\}", re.I)
_WIKI_ANY_TPL = re.compile(r"\{\{[^{}]*\}\}")
_WIKI_LINK = re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]")
_EXT_LINK = re.compile(r"\[(?:https?:)?//\S+\s+([^\]]*)\]")
_PLACEHOLDER = re.compile(r"\$\d+|\$[A-Za-z_][A-Za-z0-9_]*|%[sd]|\{[a-z_]+\}")
_WS = re.compile(r"\s+")


def clean(text: str) -> str:
    """Markup-free, NFC-normalised single line."""
    t = unicodedata.normalize("NFC", text)
    t = _WIKI_TPL.sub(r"\2", t)
    t = _WIKI_ANY_TPL.sub(" ", t)
    t = _WIKI_LINK.sub(r"\1", t)
    t = _EXT_LINK.sub(r"\1", t)
    t = t.replace("'''", "").replace("''", "")
    t = _TAG.sub(" ", t)
    t = html.unescape(t)
    t = _PLACEHOLDER.sub(" ", t)
    return _WS.sub(" ", t).strip()


def enough_words(en: str, n: int = 5) -> bool:
    return len(en.split()) >= n


def is_heldout(en: str, percent: int = 10) -> bool:
    return int(hashlib.sha1(en.encode("utf-8")).hexdigest(), 16) % 100 < percent


# ----------------------------------------------------------------------------- sources
Item = tuple[str, str, dict]  # (domain, English, {lang: text})


def _mo_catalog(path: Path) -> dict[str, str]:
    with open(path, "rb") as f:
        cat = gettext.GNUTranslations(f)._catalog  # type: ignore[attr-defined]
    out = {}
    for k, v in cat.items():
        if isinstance(k, tuple):          # plural forms: keep the singular
            if k[1] != 0:
                continue
            k = k[0]
        if not k or not v:
            continue
        k = k.split("\x04")[-1]           # drop msgctxt
        k = re.sub(r"^[^\s^]{1,30}\^", "", k)  # wesnoth's "context^text"
        out[k] = v
    return out


def wesnoth_items(root: Path) -> Iterator[Item]:
    base = root / "usr/share/games/wesnoth"
    by_domain: dict[str, dict[str, dict]] = defaultdict(lambda: defaultdict(dict))
    for mo in sorted(base.glob("*/locale/*/LC_MESSAGES/*.mo")):
        lang = normalize_lang(mo.parts[-3])
        if lang is None or lang == "en":
            continue
        domain = "wesnoth/" + mo.stem
        for en, tr in _mo_catalog(mo).items():
            by_domain[domain][en].setdefault(lang, tr)
    for domain in sorted(by_domain):
        for en, trs in by_domain[domain].items():
            yield domain, en, trs


def mediawiki_items(root: Path) -> Iterator[Item]:
    base = root / "usr/share/mediawiki"
    for en_file in sorted(base.rglob("i18n/**/en.json")) + sorted(base.rglob("i18n/en.json")):
        d = en_file.parent
        try:
            en_msgs = json.loads(en_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        rel = d.relative_to(base).parts
        domain = "mediawiki/" + (rel[1] if rel[0].startswith("extensions") else "core")
        trs_by_key: dict[str, dict] = defaultdict(dict)
        for f in sorted(d.glob("*.json")):
            lang = normalize_lang(f.stem)
            if lang is None or lang == "en":
                continue
            try:
                msgs = json.loads(f.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            for k, v in msgs.items():
                if k in en_msgs and isinstance(v, str) and not k.startswith("@"):
                    trs_by_key[k].setdefault(lang, v)
        for k, en in en_msgs.items():
            if isinstance(en, str) and not k.startswith("@"):
                yield domain, en, trs_by_key.get(k, {})


def _page_paragraphs(path: Path) -> list[str]:
    try:
        tree = ET.parse(path)
    except ET.ParseError:
        return []
    return ["".join(p.itertext()) for p in tree.iter() if p.tag.endswith("}p") or p.tag == "p"]


def gnome_items(root: Path) -> Iterator[Item]:
    base = root / "usr/share/help"
    for page in sorted((base / "C").rglob("*.page")):
        rel = page.relative_to(base / "C")
        en_paras = _page_paragraphs(page)
        trs: list[dict] = [{} for _ in en_paras]
        for lang_dir in sorted(base.iterdir()):
            lang = normalize_lang(lang_dir.name)
            if lang in (None, "en") or not (lang_dir / rel).is_file():
                continue
            paras = _page_paragraphs(lang_dir / rel)
            if len(paras) != len(en_paras):  # cannot align by order
                continue
            for i, p in enumerate(paras):
                trs[i].setdefault(lang, p)
        for en, tr in zip(en_paras, trs):
            yield "gnome/" + rel.parts[0], en, tr


def fortune_documents(root: Path) -> Iterator[tuple[str, str, list[str]]]:
    """(language, source, [fortunes]) from the fortunes packages (UTF-8 .u8 files only:
    the plain files of ru/bg/cs/pl use legacy encodings, and each has a .u8 twin)."""
    base = root / "usr/share/games/fortunes"
    for f in sorted(base.rglob("*")):
        if not f.is_file() or f.suffix == ".dat" or "off" in f.relative_to(base).parts:
            continue
        sub = f.relative_to(base).parts
        lang = normalize_lang(sub[0]) if len(sub) > 1 else "en"
        if sub[0] == "cz":
            lang = "cs"
        if lang is None:
            continue
        if f.suffix != ".u8" and f.with_name(f.name + ".u8").exists():
            continue
        raw = f.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue  # a legacy-encoded file without a .u8 twin: counted by the caller
        quotes = [" ".join(q.split()) for q in re.split(r"^%\s*$", text, flags=re.M)]
        yield lang, "fortunes/" + "/".join(sub), [q for q in quotes if q]


# ----------------------------------------------------------------------------- corpus
def build_corpus(roots: dict[str, Path], out: Path, min_lines: int = 1000,
                 heldout_percent: int = 10) -> dict:
    """Write out/text/<lang>.txt (documents separated by blank lines), out/heldout.jsonl (the
    evaluation pairs) and out/parallel.jsonl (the other translation pairs, for training; no
    string of a held-out item on either side); return summary statistics."""
    items: dict[str, tuple[str, dict]] = {}  # English → (domain, translations)
    gens = []
    if "wesnoth" in roots:
        gens.append(wesnoth_items(roots["wesnoth"]))
    if "mediawiki" in roots:
        gens.append(mediawiki_items(roots["mediawiki"]))
    if "gnome" in roots:
        gens.append(gnome_items(roots["gnome"]))
    docs: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for gen in gens:
        for domain, en_raw, trs in gen:
            en = clean(en_raw)
            if not en:
                continue
            docs["en"][domain].append(en)
            ctrs = {}
            for lang, t in trs.items():
                c = clean(t)
                if c and c != en:  # untranslated strings are not translations
                    ctrs[lang] = c
                    docs[lang][domain].append(c)
            if en in items:
                items[en][1].update({k: v for k, v in ctrs.items() if k not in items[en][1]})
            else:
                items[en] = (domain, ctrs)
    if "fortunes" in roots:
        for lang, source, quotes in fortune_documents(roots["fortunes"]):
            docs[lang][source].extend(clean(q) for q in quotes)

    heldout = {en: v for en, v in items.items()
               if enough_words(en) and v[1] and is_heldout(en, heldout_percent)}
    banned = set(heldout)
    for _, trs in heldout.values():
        banned.update(trs.values())

    text_dir = out / "text"
    text_dir.mkdir(parents=True, exist_ok=True)
    stats = {"languages": {}, "heldout_items": len(heldout), "parallel_items": len(items),
             "removed_heldout_lines": 0, "skipped_small_languages": []}
    for lang in sorted(docs):
        seen: set[str] = set()
        blocks = []
        n = 0
        for source in sorted(docs[lang]):
            lines = []
            for line in docs[lang][source]:
                if line in banned:
                    stats["removed_heldout_lines"] += 1
                    continue
                if len(line) < 12 or line in seen:
                    continue
                seen.add(line)
                lines.append(line)
            if lines:
                blocks.append("\n".join(lines))
                n += len(lines)
        if n < min_lines:
            stats["skipped_small_languages"].append(lang)
            continue
        tmp = text_dir / f"{lang}.txt.tmp"
        tmp.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
        tmp.replace(text_dir / f"{lang}.txt")
        stats["languages"][lang] = n
    kept = set(stats["languages"])

    def write_items(name: str, chosen: dict, exclude: set[str]) -> int:
        tmp, n = out / f"{name}.tmp", 0
        with open(tmp, "w", encoding="utf-8") as f:
            for en in sorted(chosen):
                domain, trs = chosen[en]
                trs = {k: v for k, v in sorted(trs.items()) if k in kept and v not in exclude}
                if trs:
                    f.write(json.dumps({"id": hashlib.sha1(en.encode()).hexdigest()[:12],
                                        "domain": domain, "en": en, "translations": trs},
                                       ensure_ascii=False) + "\n")
                    n += 1
        tmp.replace(out / name)
        return n

    write_items("heldout.jsonl", heldout, exclude=set())
    stats["parallel_train_items"] = write_items(
        "parallel.jsonl", {en: v for en, v in items.items() if en not in banned and len(en) >= 12},
        exclude=banned)
    return stats
