"""python -m lightmbert.deploy.trim STUDENT_DIR OUT --shards SHARDS [--languages de,fr] [--min-count 1]
                        [--budget PIECES] [--text FILE ...] [--heldout [NAME=]PAIRS.jsonl ...] [--overwrite]

Keep only the vocabulary a student needs. A multilingual encoder's embedding matrix is most of
its bytes (multilingual-E5-small: 96M of 118M parameters for 250k pieces), while the languages
one deploys use a fraction of the pieces. Kept: every piece that occurs ≥ min-count times in
the shards of the chosen languages (ids counted straight from the shards, which data_prep
tokenised with this very tokenizer) and in `--text` files, every special token, and the
single-character pieces of every character those pieces contain (`c`, `▁c` / `##c`), so text
of the kept scripts can always be segmented. `--budget N` then fills the vocabulary up to N
pieces with the Unigram model's most probable other pieces written in the kept pieces' scripts:
the shards are one domain, and words of the same languages outside it (other documentation,
news, names) would otherwise be cut into other, shorter pieces than the model was trained on
(lightmbert.benchmarks.bench_trim measures size against coverage and retrieval per budget). The tokenizer is rebuilt with only those pieces
(SentencePiece-Unigram: XLM-R, multilingual-E5; WordPiece: mBERT) and the embedding rows — and
an MLM head's, tied or not — are sliced and re-indexed consistently.

Exact where it can be: for text whose original segmentation uses only kept pieces the
trimmed tokenizer gives the same pieces (Unigram's best segmentation is still available and
nothing better was added; WordPiece's longest match at each step is still the longest), so
the trimmed model gives the same outputs. Other text still tokenises (falling back to kept
pieces, or unk for characters never seen); `--heldout` reports the coverage per language: the
share of the original pieces of held-out sentences that were kept.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from lightmbert.data_prep.manifest import read_manifest, shard_url
from lightmbert.data_prep.tarreader import load_shard, npy_array
from lightmbert.data_prep.tokenizer import describe_tokenizer, load_tokenizer
from lightmbert.evaluation.encoders import load_kwargs

from . import atomic_dir


class TrimError(ValueError):
    """Bad input to the trimmer (the message names the file, key or value)."""


def count_shard_ids(shards: str, languages: list[str], vocab_size: int) -> np.ndarray:
    """How often each token id occurs in the shards of `languages`."""
    manifest = read_manifest(shards)
    counts = np.zeros(vocab_size, dtype=np.int64)
    for lang in languages:
        for sh in manifest["languages"][lang]["shards"]:
            url = shard_url(shards, sh["path"])
            for _, fields in load_shard(url, sh["samples"]):
                counts += np.bincount(npy_array(fields["input_ids.npy"], url), minlength=vocab_size)[:vocab_size]
    return counts


def _pieces(tj: dict) -> list[str]:
    """The model's pieces in id order."""
    model = tj["model"]
    if model["type"] == "Unigram":
        return [p for p, _ in model["vocab"]]
    if model["type"] == "WordPiece":
        out = [""] * len(model["vocab"])
        for piece, i in model["vocab"].items():
            out[i] = piece
        return out
    raise TrimError(f"tokenizer model {model['type']!r} is not supported (SentencePiece-Unigram and WordPiece are)")


def script_of(ch: str) -> str:
    """A character's writing system, from its Unicode name ("LATIN", "CYRILLIC", "ARABIC",
    "DEVANAGARI", "CJK", "HANGUL", ...); digits, punctuation, symbols and spaces are "COMMON"
    (every script uses them). Python's unicodedata has no Script property; the name's first
    word is what it would say for the scripts a multilingual vocabulary holds."""
    import unicodedata
    if ch == "▁" or unicodedata.category(ch)[0] in "NPSZC":
        return "COMMON"
    name = unicodedata.name(ch, "")
    if not name:
        return "UNKNOWN"
    head = name.split()[0]
    # one script for Japanese kana and Han, as a tokenizer of ja/zh text needs all of them
    return "CJK" if head in ("HIRAGANA", "KATAKANA", "HALFWIDTH", "FULLWIDTH", "IDEOGRAPHIC") else head


def by_score_within_scripts(tj: dict, keep: set[int], budget: int, min_share: float = 1e-4) -> set[int]:
    """Fill `keep` up to `budget` pieces with the most probable other pieces of the Unigram
    model (its log-probabilities come from the tokenizer's own, general training corpus), among
    pieces written only in the scripts of the kept pieces (a script counts when it makes up at
    least `min_share` of the kept pieces' characters, so a stray character does not bring in
    a whole script). Text of the kept languages outside the shards then keeps its segmentation
    far more often than with the shards' pieces alone (`coverage`)."""
    model = tj["model"]
    if model["type"] != "Unigram":
        raise TrimError(f"--budget ranks pieces by the Unigram model's scores; a {model['type']} "
                        f"tokenizer has none (use --text with general text of your languages instead)")
    vocab = model["vocab"]
    if budget <= len(keep):
        return keep
    from collections import Counter
    chars = Counter(ch for i in keep for ch in vocab[i][0])
    total = sum(chars.values()) or 1
    script_count = Counter()
    for ch, n in chars.items():
        script_count[script_of(ch)] += n
    scripts = {s for s, n in script_count.items() if n / total >= min_share} | {"COMMON"}
    ranked = sorted((i for i in range(len(vocab)) if i not in keep and vocab[i][0]
                     and all(script_of(ch) in scripts for ch in vocab[i][0])),
                    key=lambda i: (-vocab[i][1], i))
    return keep | set(ranked[:budget - len(keep)])


def kept_ids(tj: dict, counts: np.ndarray, min_count: int, budget: int = 0) -> list[int]:
    """Sorted ids to keep (see the module docstring); `budget` > 0: filled up to that many
    pieces by `by_score_within_scripts`."""
    pieces = _pieces(tj)
    keep = {t["id"] for t in tj.get("added_tokens", [])}
    model = tj["model"]
    if model["type"] == "Unigram":
        if model.get("unk_id") is not None:
            keep.add(model["unk_id"])
        marks = ("▁",)
    else:
        keep.add(model["vocab"][model["unk_token"]])
        marks = (model.get("continuing_subword_prefix", "##"),)
    used = {i for i in np.nonzero(counts[:len(pieces)] >= min_count)[0].tolist()}
    keep |= used
    chars = set()
    for i in used:
        p = pieces[i]
        for m in marks:
            p = p[len(m):] if p.startswith(m) else p
        chars.update(p)
    index = {p: i for i, p in enumerate(pieces)}
    for c in chars:
        for form in (c, *(m + c for m in marks)):
            if form in index:
                keep.add(index[form])
    for m in marks:  # the bare word-start piece (a lone "▁")
        if m in index and model["type"] == "Unigram":
            keep.add(index[m])
    if budget:
        keep = by_score_within_scripts(tj, keep, budget)
    return sorted(keep)


def _remap_specials(node, remap: dict[int, int]):
    """Special-token ids inside a post-processor (TemplateProcessing, Bert/RobertaProcessing)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "ids" and isinstance(v, list):
                out[k] = [remap[i] for i in v]
            elif k in ("sep", "cls") and isinstance(v, list) and len(v) == 2 and isinstance(v[1], int):
                out[k] = [v[0], remap[v[1]]]
            else:
                out[k] = _remap_specials(v, remap)
        return out
    if isinstance(node, list):
        return [_remap_specials(v, remap) for v in node]
    return node


def trim_tokenizer_json(tj: dict, keep: list[int]) -> dict:
    """The tokenizer.json with only `keep` (old ids, sorted), renumbered 0 … len(keep)-1."""
    remap = {old: new for new, old in enumerate(keep)}
    out = json.loads(json.dumps(tj))
    model = out["model"]
    if model["type"] == "Unigram":
        model["vocab"] = [tj["model"]["vocab"][i] for i in keep]
        if model.get("unk_id") is not None:
            model["unk_id"] = remap[model["unk_id"]]
    else:
        pieces = _pieces(tj)
        model["vocab"] = {pieces[old]: new for new, old in enumerate(keep)}
    for t in out.get("added_tokens", []):
        t["id"] = remap[t["id"]]
    if out.get("post_processor"):
        out["post_processor"] = _remap_specials(out["post_processor"], remap)
    return out


def trim_model(model, keep: list[int]) -> None:
    """Slice the input embeddings (and an MLM head) to `keep`, in place: rows moved to the
    front in the new order, then the vocabulary resized — which HF does for tied and untied
    heads, biases included."""
    import torch
    n = model.get_input_embeddings().weight.shape[0]
    perm = torch.tensor(keep + sorted(set(range(n)) - set(keep)))
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb.copy_(emb[perm])
        head = model.get_output_embeddings()
        if head is not None:
            if head.weight is not emb:
                head.weight.copy_(head.weight[perm])
            if getattr(head, "bias", None) is not None:
                head.bias.copy_(head.bias[perm])
    model.resize_token_embeddings(len(keep))
    remap = {old: new for new, old in enumerate(keep)}
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        old = getattr(model.config, key, None)
        if isinstance(old, int) and old in remap:
            setattr(model.config, key, remap[old])


def _load_model(student: Path):
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM
    config = AutoConfig.from_pretrained(student)
    if any(a.endswith("ForMaskedLM") for a in config.architectures or []):
        return AutoModelForMaskedLM.from_pretrained(student, **load_kwargs())
    try:  # no pooler: a student has none, and AutoModel would add a randomly initialised one
        return AutoModel.from_pretrained(student, add_pooling_layer=False, **load_kwargs())
    except TypeError:
        return AutoModel.from_pretrained(student, **load_kwargs())


def coverage(backend, kept: set[int], sentences: dict[str, list[str]]) -> dict[str, float]:
    """Per language: the share of the original pieces of `sentences` (segmented by the
    original `tokenizers.Tokenizer`) that were kept."""
    out = {}
    for lang, texts in sentences.items():
        ids = [i for t in texts for i in backend.encode(t, add_special_tokens=False).ids]
        out[lang] = sum(i in kept for i in ids) / max(1, len(ids))
    return out


def heldout_sentences(path: Path, languages: list[str], max_per_language: int = 300) -> dict[str, list[str]]:
    """The held-out pairs' sentences of each kept language, the first `max_per_language` of
    each as the evaluations take them (0: all; English: each item's English side once, though it
    appears in the pairs of every language)."""
    from lightmbert.evaluation.retrieval import load_pairs  # names a bad row by file and line
    pairs = load_pairs(path, max_per_language=max_per_language)
    out = {lang: [x for _, x in pairs[lang]] for lang in languages if lang in pairs}
    if "en" in languages:
        out["en"] = list(dict.fromkeys(en for items in pairs.values() for en, _ in items))
    return {k: v for k, v in out.items() if v}


def trim(student: Path, out: Path, shards: str, languages: list[str] | None = None, min_count: int = 1,
         text: list[Path] = (), overwrite: bool = False, budget: int = 0) -> dict:
    """Write the trimmed student to `out` (atomically); returns a summary."""
    if not (student / "tokenizer.json").is_file():
        raise TrimError(f"{student}: no tokenizer.json (a student directory from lightmbert.trainer.export, or any HF "
                        f"encoder directory with a fast tokenizer)")
    if out.exists() and not overwrite:
        raise TrimError(f"{out} exists (pass --overwrite to replace it)")
    manifest = read_manifest(shards)
    tok = load_tokenizer(str(student))
    mine = describe_tokenizer(tok, str(student))
    theirs = manifest["tokenizer"]
    if mine.sha256 != theirs["sha256"]:
        raise TrimError(f"{shards} was tokenised with {theirs['name']!r} (sha256 {theirs['sha256'][:12]}), not "
                        f"with the student's tokenizer in {student} (sha256 {mine.sha256[:12]}): re-shard with it")
    available = sorted(manifest["languages"])
    languages = languages or available
    unknown = [lang for lang in languages if lang not in manifest["languages"]]
    if unknown:
        raise TrimError(f"--languages: {unknown} not in {shards} (available: {', '.join(available)})")
    tj = json.loads((student / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = len(_pieces(tj))
    counts = count_shard_ids(shards, languages, vocab)
    for f in text:
        for line in Path(f).read_text(encoding="utf-8").splitlines():
            for i in tok.backend_tokenizer.encode(line).ids:
                counts[i] += 1
    keep = kept_ids(tj, counts, min_count, budget)
    model = _load_model(student)
    trim_model(model, keep)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        for name in os.listdir(student):  # the tokenizer's other files, minus stale slow vocabularies
            if name in ("tokenizer_config.json", "special_tokens_map.json") or name.startswith("tokenizer."):
                shutil.copy2(student / name, tmp / name)
        (tmp / "tokenizer.json").write_text(json.dumps(trim_tokenizer_json(tj, keep), ensure_ascii=False),
                                            encoding="utf-8")
        conf_path = tmp / "tokenizer_config.json"
        if conf_path.is_file():
            conf = json.loads(conf_path.read_text(encoding="utf-8"))
            remap = {old: new for new, old in enumerate(keep)}
            if "added_tokens_decoder" in conf:
                conf["added_tokens_decoder"] = {str(remap[int(k)]): v for k, v in conf["added_tokens_decoder"].items()}
            conf_path.write_text(json.dumps(conf, indent=2, ensure_ascii=False), encoding="utf-8")
        (tmp / "trim.json").write_text(json.dumps({"from": str(student), "shards": shards, "languages": languages,
                                                   "min_count": min_count, "budget": budget,
                                                   "vocab": [vocab, len(keep)],
                                                   "kept_ids": keep}))
    return {"vocab_before": vocab, "vocab_after": len(keep), "languages": languages, "keep": keep}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("student", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--shards", required=True, help="data_prep output made with the student's tokenizer")
    ap.add_argument("--languages", default="", help="comma-separated (default: all in the shards)")
    ap.add_argument("--min-count", type=int, default=1)
    ap.add_argument("--budget", type=int, default=0,
                    help="fill the vocabulary up to this many pieces by the Unigram scores within the kept scripts (0: off)")
    ap.add_argument("--text", type=Path, nargs="*", default=[], help="more text whose pieces to keep")
    ap.add_argument("--heldout", action="append", default=[],
                    help="held-out pairs to report coverage on: [NAME=]PAIRS.jsonl (repeatable)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    langs = [x for x in args.languages.split(",") if x]
    try:
        res = trim(args.student, args.out, args.shards, langs, args.min_count, args.text, args.overwrite, args.budget)
    except (TrimError, FileNotFoundError) as e:
        print(f"lightmbert.deploy.trim: {e}", file=sys.stderr)
        return 2
    print(f"[trim] {args.student} → {args.out}: vocabulary {res['vocab_before']:,} → {res['vocab_after']:,} "
          f"pieces ({res['vocab_after'] / res['vocab_before']:.1%}) for {', '.join(res['languages'])}")
    backend = load_tokenizer(str(args.student)).backend_tokenizer if args.heldout else None
    for spec in args.heldout:
        name, _, path = spec.rpartition("=")
        cov = coverage(backend, set(res["keep"]), heldout_sentences(Path(path), res["languages"]))
        print(f"[trim] held-out coverage{f' ({name})' if name else ''} (share of pieces kept): "
              + ", ".join(f"{k} {v:.1%}" for k, v in sorted(cov.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
