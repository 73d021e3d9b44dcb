"""Synthetic inputs for tests, benchmarks and smoke runs: a tiny WordPiece tokenizer and a
four-language random corpus (en, de, ru, el), both made here — nothing is downloaded.

Shared by tests/ and benchmarks/ (benchmarks import no test code).
"""
from __future__ import annotations

import random
from pathlib import Path

WORDS = {
    "en": "the quick brown fox jumps over lazy dog and runs far away from home".split(),
    "de": "der schnelle braune fuchs springt über den faulen hund und läuft weit weg".split(),
    "ru": "быстрая коричневая лиса прыгает через ленивую собаку и бежит далеко".split(),
    "el": "η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο".split(),
}


def make_tokenizer(out_dir: Path, extra_text: list[str] = ()) -> Path:
    """A BERT-style WordPiece tokenizer over WORDS (+ extra_text); saved as an HF directory.

    The vocabulary is written out, not trained: tokenizers' WordPiece trainer breaks ties between
    equally frequent merges in hash-map order, so each process got a different vocabulary and the
    tiny models built on it gave different numbers from run to run (a teacher scoring 0 on one
    language in one CI run). Here it is fixed: the special tokens, every character alone and as a
    continuation (`##c`), then every word — each word is one piece, any other word is spelled out.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    text = [" ".join(ws) for ws in WORDS.values()] + list(extra_text)
    words = dict.fromkeys(w for t in text for w, _ in pre.pre_tokenize_str(norm.normalize_str(t)))
    chars = sorted({c for w in words for c in w})
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars),
              *(w for w in words if len(w) > 1)]
    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    tok.normalizer = norm
    tok.pre_tokenizer = pre
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                   ("[CLS]", tok.token_to_id("[CLS]")))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir


def random_documents(lang: str, n_docs: int, seed: int, max_segments: int = 6,
                     max_words: int = 40) -> list[list[str]]:
    rng = random.Random(seed)
    words = WORDS[lang]
    return [[" ".join(rng.choice(words) for _ in range(rng.randint(1, max_words)))
             for _ in range(rng.randint(1, max_segments))] for _ in range(n_docs)]


def write_text(path: Path, docs: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    return path
