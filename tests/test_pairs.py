"""Translation pairs end to end: data_prep tokenises them into pair shards exactly like the
text (input.parallel → OUT/parallel/*.tar + a manifest entry); the trainer reads those shards
(data.parallel: true), never a tokenizer, and puts each pair next to its English row."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from lightmbert.configs import DataConfig, PrepConfig, load
from lightmbert.data_prep import PrepError
from lightmbert.data_prep.manifest import read_manifest, verify
from lightmbert.data_prep.synthetic import WORDS, make_tokenizer, random_documents, write_text

PAIRS = [{"en": "the quick brown fox", "translations": {"de": "der schnelle braune fuchs", "ru": "быстрая лиса"}},
         {"en": "the lazy dog runs far away", "translations": {"el": "τον τεμπέλη σκύλο", "xx": "ignored"}},
         {"en": "from home", "translations": {"fr": "not a shard language"}},
         {"en": "  the dog  ", "translations": {"de": "der hund " * 30, "ru": "   "}},
         {"en": "Ω the fox", "translations": {"el": "Ω αλεπού"}}]  # Ω: U+2126, NFC → U+03A9


def write_pairs(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def shard(d, pairs_file, *extra):
    from lightmbert.data_prep.shard import run
    tok = make_tokenizer(d / "tok")
    for i, lang in enumerate(WORDS):
        write_text(d / "text" / f"{lang}.txt", random_documents(lang, 60, seed=10 + i))
    return run(load(PrepConfig, None, [f"--input.directory={d}/text", f"--tokenizer.name_or_path={tok}",
                                       f"--output.dir={d}/shards", "--output.shard_samples=2", "--workers=1",
                                       "--packing.seq_len=24", "--packing.mode=segment",
                                       f"--input.parallel={pairs_file}", *extra])), tok


@pytest.fixture(scope="module")
def pair_shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    manifest, tok = shard(d, write_pairs(d / "pairs.jsonl", PAIRS))
    return d / "shards", manifest, tok


def test_pairs_are_tokenised_like_the_text(pair_shards):
    import unicodedata

    from lightmbert.data_prep.tarreader import load_shard
    from lightmbert.data_prep.tokenizer import load_tokenizer
    out, m, tok_dir = pair_shards
    tok = load_tokenizer(str(tok_dir))
    par = m["parallel"]
    # item 2 has no translation into a shard language (fr), item 4's "ru" is blank
    assert par["items"] == 4 and par["translations"] == {"de": 2, "el": 2, "ru": 1}
    assert par["counts"]["pair_rows_without_pair"] == 1
    assert par["counts"]["pair_translations_other_languages"] == 2  # xx, fr
    assert par["counts"]["pair_translations_empty"] == 1
    assert par["counts"]["pair_texts_truncated"] == 1               # "der hund " × 30 > 24 tokens
    assert [s["samples"] for s in par["shards"]] == [2, 2]          # shard_samples applies
    verify(out)
    samples = [{k: bytes(v) for k, v in f.items()} for sh in par["shards"]
               for _, f in load_shard(str(out / sh["path"]), sh["samples"], sh["sha256"])]
    kept = [r for i, r in enumerate(PAIRS) if i != 2]

    def want(text):  # the packer's one-segment sequence: [CLS] text [SEP], at most seq_len
        ids = tok(unicodedata.normalize("NFC", text.strip()))["input_ids"]
        return ids if len(ids) <= 24 else ids[:23] + ids[-1:]
    for row, fields in zip(kept, samples):
        got = {k.split(".")[0]: np.load(__import__("io").BytesIO(v)).tolist() for k, v in fields.items()}
        expect = {"en": want(row["en"])} | {k: want(v) for k, v in row["translations"].items()
                                            if k in WORDS and v.strip()}
        assert got == expect
    assert par["tokens"] == sum(len(v) for f in samples for v in
                                (np.load(__import__("io").BytesIO(b)) for b in f.values()))


def test_rerun_is_a_no_op_and_other_pairs_are_refused(pair_shards, tmp_path):
    from lightmbert.data_prep.shard import run
    out, m, tok = pair_shards
    cfg = read_manifest(out)
    assert cfg == m
    base = [f"--input.directory={out.parent}/text", f"--tokenizer.name_or_path={tok}", f"--output.dir={out}",
            "--output.shard_samples=2", "--workers=1", "--packing.seq_len=24", "--packing.mode=segment"]
    assert run(load(PrepConfig, None, base + [f"--input.parallel={out.parent}/pairs.jsonl"])) == m
    other = write_pairs(tmp_path / "other.jsonl", PAIRS[:1])
    with pytest.raises(PrepError, match="parallel:"):
        run(load(PrepConfig, None, base + [f"--input.parallel={other}"]))
    with pytest.raises(PrepError, match="parallel:"):
        run(load(PrepConfig, None, base))  # pairs → no pairs is a different output too


def test_bad_pair_files_are_named(tmp_path):
    with pytest.raises(PrepError, match="is not a file"):
        shard(tmp_path / "a", tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"en": "the fox", "translations": {"de": "der fuchs"}}\n\n{"en": "no translations"}\n')
    with pytest.raises(PrepError, match=r"bad.jsonl:3: not a"):
        shard(tmp_path / "b", bad)
    with pytest.raises(PrepError, match="no item with English and a translation"):
        shard(tmp_path / "c", write_pairs(tmp_path / "fr.jsonl", PAIRS[2:3]))


def parallel_stream(shards, pairs=3, group=0, languages=None):
    from lightmbert.trainer.data import MixedStream
    cfg = DataConfig(shards=str(shards), micro_batch_size=4, num_workers=0, shuffle_buffer=20,
                     parallel=True, parallel_pairs=pairs, group_by_length=group)
    manifest = read_manifest(shards)
    weights = {k: 1.0 for k in (languages or manifest["languages"])}
    return MixedStream(cfg, manifest, weights, pad_id=0, seed=3, rank=0, world=1)


def rows(batch):
    return [tuple(ids[:n].tolist()) for ids, n in zip(batch["input_ids"], batch["attention_mask"].sum(1))]


def test_pairs_ride_along_each_batch_next_to_their_english_row(pair_shards):
    from lightmbert.data_prep.tokenizer import load_tokenizer
    out, _, tok_dir = pair_shards
    tok = load_tokenizer(str(tok_dir))
    ds = parallel_stream(out)
    assert len(ds.parallel.items) == 4 and ds.parallel.unused == 0

    def ids(text):
        i = tok(text.strip())["input_ids"]
        return tuple(i if len(i) <= 24 else i[:23] + i[-1:])
    expected = {ids(r["en"]): {ids(t) for k, t in r["translations"].items() if k in WORDS and t.strip()}
                for i, r in enumerate(PAIRS) if i not in (2, 4)}
    langs = ds.languages
    for b in itertools.islice(iter(ds), 6):
        r = rows(b)
        assert len(r) == 4 + 2 * 3
        assert all(langs[i] == "en" for i in b["lang"][4:7].tolist())
        for e, x, li in zip(r[4:7], r[7:10], b["lang"][7:10].tolist()):
            if e in expected:  # (item 4's NFC text is checked above)
                assert x in expected[e], "a translation row must belong to its English row"
            assert langs[li] != "en"


def test_training_languages_filter_the_pairs(pair_shards):
    out, _, _ = pair_shards
    ds = parallel_stream(out, languages=["en", "ru"])
    assert len(ds.parallel.items) == 1 and ds.parallel.unused == 3  # only item 0 has ru


def test_parallel_stream_resumes_exactly(pair_shards):
    out, _, _ = pair_shards
    full = list(itertools.islice(iter(parallel_stream(out, group=2)), 9))
    from tests.test_data import resumed
    again = resumed(lambda: parallel_stream(out, group=2), 5, 4)
    assert len(again) == 4
    for a, b in zip(full[5:], again):
        assert a["input_ids"].equal(b["input_ids"]) and a["lang"].equal(b["lang"])


def test_trainer_errors_without_pairs_or_english(pair_shards, tmp_path):
    from lightmbert.data_prep.shard import run
    from lightmbert.trainer.data import DataError, MixedStream
    out, _, tok = pair_shards
    with pytest.raises(DataError, match="English"):
        parallel_stream(out, languages=["de", "ru"])
    run(load(PrepConfig, None, [f"--input.directory={out.parent}/text", f"--tokenizer.name_or_path={tok}",
                                f"--output.dir={tmp_path}/plain", "--workers=1", "--packing.seq_len=24"]))
    cfg = DataConfig(shards=str(tmp_path / "plain"), micro_batch_size=4, num_workers=0, parallel=True)
    with pytest.raises(DataError, match="no translation pairs.*input.parallel"):
        MixedStream(cfg, read_manifest(tmp_path / "plain"), {k: 1.0 for k in WORDS}, 0, 1, 0, 1)
