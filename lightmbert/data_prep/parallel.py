"""Translation pairs → pair shards (`input.parallel`), tokenised exactly like the text shards.

Input: a JSONL file of translation items, one per line:
    {"en": "English text", "translations": {"de": "...", "zh": "...", ...}}   (e.g. the demo's
    parallel.jsonl); other fields are ignored.
Each text is normalised (`input.normalize`), stripped, and becomes one sequence
`[CLS] prefix text [SEP]` of at most `seq_len` tokens (a longer text is cut and counted: a
pair must stay one sequence per side). Only translations into the run's languages are kept.

Output: OUT/parallel/parallel-NNNNNN.tar, one webdataset sample per kept item:
    <key>.en.input_ids.npy       the English side
    <key>.<lang>.input_ids.npy   each translation (the same dtype as the text shards)
and a `parallel` entry in manifest.json (items, translations per language, tokens, shard
hashes, counts). The trainer (`data.parallel: true`) reads these shards: it never tokenises.
"""
from __future__ import annotations

import json
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from . import PrepError

DIR = "parallel"
ROWS_PER_JOB = 2048  # items tokenised per pool job (amortises the process round trip)

Row = tuple[str, list[tuple[str, str]]]            # (English, [(lang, translation), ...])
Ids = tuple[np.ndarray, list[tuple[str, np.ndarray]]]


def read_rows(path: str, languages: set[str], normalize: str, counts: Counter) -> list[Row]:
    """Items of a pairs JSONL in file order, translations sorted by language and restricted to
    `languages` (English excluded). Rows without an English text or without a translation
    into `languages` are counted and left out; a row that is not an item is an error."""
    def norm(s: str) -> str:
        s = s.strip()
        return unicodedata.normalize(normalize, s) if normalize != "none" else s

    rows: list[Row] = []
    try:
        f = open(Path(path).expanduser(), encoding="utf-8")
    except OSError as e:
        raise PrepError(f"input.parallel: cannot read {path}: {e}") from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                counts["pair_blank_lines"] += 1
                continue
            try:
                row = json.loads(line)
                en = row["en"]
                items = row["translations"].items()
                if not isinstance(en, str):
                    raise TypeError(f"en is {type(en).__name__}")
            except (ValueError, KeyError, AttributeError, TypeError) as e:
                raise PrepError(f"input.parallel: {path}:{n}: not a {{\"en\": text, \"translations\": "
                                f"{{lang: text}}}} row ({type(e).__name__}: {e})") from None
            trs = []
            for lang, text in sorted(items):
                if lang == "en" or lang not in languages:
                    counts["pair_translations_other_languages"] += 1
                elif isinstance(text, str) and text.strip():
                    trs.append((lang, norm(text)))
                else:
                    counts["pair_translations_empty"] += 1
            en = norm(en)
            if not en or not trs:
                counts["pair_rows_without_pair"] += 1
                continue
            rows.append((en, trs))
    return rows


def tokenize_rows(rows: list[Row], encode: Callable[[list[str]], list[list[int]]], head: list[int],
                  sep: int, seq_len: int, dtype: str) -> tuple[list[Ids], Counter]:
    """Each text → head + ids[:room] + [sep] (as the packer builds a one-segment sequence)."""
    texts = [t for en, trs in rows for t in [en, *(x for _, x in trs)]]
    ids = encode(texts)
    room = seq_len - len(head) - 1
    counts: Counter = Counter()

    def seq(content: list[int]) -> np.ndarray:
        if len(content) > room:
            counts["pair_texts_truncated"] += 1
            content = content[:room]
        return np.asarray([*head, *content, sep], dtype=dtype)

    out: list[Ids] = []
    i = 0
    for _, trs in rows:
        en = seq(ids[i])
        out.append((en, [(lang, seq(ids[i + 1 + j])) for j, (lang, _) in enumerate(trs)]))
        i += 1 + len(trs)
    counts["pair_texts"] += i
    return out, counts


def sample(index: int, item: Ids, npy_bytes) -> dict:
    """The webdataset sample of one item (fields sorted by the tar writer)."""
    en, trs = item
    s = {"__key__": f"pair-{index:09d}", "en.input_ids.npy": npy_bytes(en)}
    for lang, ids in trs:
        s[f"{lang}.input_ids.npy"] = npy_bytes(ids)
    return s
