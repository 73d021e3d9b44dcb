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
    """A BERT-style WordPiece tokenizer trained on WORDS; saved as an HF directory."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    text = [" ".join(ws) for ws in WORDS.values()] + list(extra_text)
    tok.train_from_iterator(text * 5, trainer)
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
