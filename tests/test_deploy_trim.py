"""lightmbert.deploy.trim on both tokenizer families (WordPiece like mBERT, SentencePiece-Unigram like
XLM-R / multilingual-E5), tiny models built from a config: exact pieces and outputs on
covered text, a fallback with reported coverage on other text, the MLM head sliced with the
embeddings, a normal HF directory, and bad inputs named."""
from __future__ import annotations

import json
import random

import pytest
import torch

from lightmbert.configs import PrepConfig, load
from lightmbert.data_prep.synthetic import WORDS, make_tokenizer, random_documents, write_text

SEED = random.randrange(1 << 30)
KEEP = ["de", "ru"]


def make_unigram_tokenizer(out_dir):
    """An XLM-R-style SentencePiece-Unigram tokenizer trained on WORDS (Metaspace, <s> … </s>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=specials, unk_token="<unk>")
    text = [" ".join(ws) for ws in WORDS.values()]
    tok.train_from_iterator(text * 5, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir


def build(family: str, d, mlm: bool = False):
    """(student dir, shards dir) of one tokenizer family."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertModel, XLMRobertaConfig, XLMRobertaModel

    from lightmbert.data_prep.shard import run
    student = d / f"student-{family}{'-mlm' if mlm else ''}"
    tok_dir = make_tokenizer(student) if family == "wordpiece" else make_unigram_tokenizer(student)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    if family == "wordpiece":
        cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, pad_token_id=tok.pad_token_id)
        model = (BertForMaskedLM if mlm else BertModel)(cfg)
    else:
        cfg = XLMRobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, max_position_embeddings=160)
        model = XLMRobertaModel(cfg)
    model.save_pretrained(student)
    shards = d / f"shards-{family}{'-mlm' if mlm else ''}"
    for i, lang in enumerate(WORDS):
        write_text(d / "text" / f"{lang}.txt", random_documents(lang, 60, seed=i))
    run(load(PrepConfig, None, [f"--input.directory={d}/text", f"--tokenizer.name_or_path={student}",
                                f"--output.dir={shards}", "--output.shard_samples=40", "--workers=1",
                                "--packing.seq_len=32", "--packing.mode=segment"]))
    return student, shards


@pytest.fixture(scope="module", params=["wordpiece", "unigram"])
def family(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    return request.param, d, *build(request.param, d)


def sentences(lang: str, n: int, seed: int) -> list[str]:
    return [" ".join(doc) for doc in random_documents(lang, n, seed=seed, max_segments=1, max_words=8)]


def test_covered_text_gives_the_same_pieces_and_outputs(family):
    from transformers import AutoModel, AutoTokenizer

    from lightmbert.deploy.trim import trim
    name, d, student, shards = family
    res = trim(student, d / "trimmed", str(shards), KEEP)
    assert res["vocab_after"] < res["vocab_before"], "the other languages' pieces should go"
    orig_tok, tok = AutoTokenizer.from_pretrained(student), AutoTokenizer.from_pretrained(d / "trimmed")
    orig, small = AutoModel.from_pretrained(student).eval(), AutoModel.from_pretrained(d / "trimmed").eval()
    assert small.get_input_embeddings().weight.shape[0] == res["vocab_after"] == len(tok)
    for lang in KEEP:
        texts = sentences(lang, 12, SEED)
        for t in texts:
            assert tok.tokenize(t) == orig_tok.tokenize(t), f"seed {SEED}: {name} {lang} {t!r}"
        a, b = orig_tok(texts, padding=True, return_tensors="pt"), tok(texts, padding=True, return_tensors="pt")
        assert torch.equal(a["attention_mask"], b["attention_mask"])
        with torch.no_grad():
            ha, hb = orig(**a).last_hidden_state, small(**b).last_hidden_state
        err = (ha - hb).abs().max().item()
        assert err <= 1e-5, f"seed {SEED}: {name} {lang}: max abs difference {err}"


def test_other_text_still_tokenises_and_coverage_says_how_well(family):
    from tokenizers import Tokenizer

    from lightmbert.deploy.trim import coverage, trim
    name, d, student, shards = family
    res = trim(student, d / "trimmed-cov", str(shards), KEEP, overwrite=True)
    tok = Tokenizer.from_file(str(d / "trimmed-cov" / "tokenizer.json"))
    orig = Tokenizer.from_file(str(student / "tokenizer.json"))
    cov = coverage(orig, set(res["keep"]), {lang: sentences(lang, 10, 5) for lang in WORDS})
    assert cov["de"] == cov["ru"] == 1.0 and cov["el"] < 0.5, cov
    unk = tok.token_to_id("[UNK]" if name == "wordpiece" else "<unk>")
    for lang in WORDS:  # never an exception
        tok.encode(" ".join(sentences(lang, 1, 3)))
    # a new word from kept characters: segmented into kept pieces, no unk
    ids = tok.encode("läuftfuchs коричневаялиса").ids
    assert unk not in ids, tok.encode("läuftfuchs коричневаялиса").tokens


def test_mlm_head_is_sliced_with_the_embeddings(tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from lightmbert.deploy.trim import trim
    student, shards = build("wordpiece", tmp_path, mlm=True)
    res = trim(student, tmp_path / "trimmed", str(shards), KEEP)
    orig, small = AutoModelForMaskedLM.from_pretrained(student).eval(), AutoModelForMaskedLM.from_pretrained(tmp_path / "trimmed").eval()
    assert small.get_output_embeddings().weight.data_ptr() == small.get_input_embeddings().weight.data_ptr()  # still tied
    texts = sentences("de", 6, SEED)
    a = AutoTokenizer.from_pretrained(student)(texts, padding=True, return_tensors="pt")
    b = AutoTokenizer.from_pretrained(tmp_path / "trimmed")(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        la, lb = orig(**a).logits[..., res["keep"]], small(**b).logits
    assert (la - lb).abs().max().item() <= 1e-5, f"seed {SEED}"


def test_bad_inputs_are_named(family, tmp_path):
    from lightmbert.deploy.trim import TrimError, main, trim
    name, d, student, shards = family
    other = "unigram" if name == "wordpiece" else "wordpiece"
    other_student, other_shards = build(other, tmp_path)
    with pytest.raises(TrimError, match=rf"was tokenised with .*{other_student.name}.* not with the student's tokenizer in .*{student.name}"):
        trim(student, tmp_path / "x", str(other_shards), KEEP)
    with pytest.raises(TrimError, match=r"\['xx'\] not in .*available: de, el, en, ru"):
        trim(student, tmp_path / "x", str(shards), ["de", "xx"])
    (tmp_path / "exists").mkdir()
    with pytest.raises(TrimError, match="exists .*--overwrite"):
        trim(student, tmp_path / "exists", str(shards), KEEP)
    assert main([str(student), str(tmp_path / "exists"), "--shards", str(shards), "--languages", "de"]) == 2
    assert main([str(student), str(tmp_path / "exists"), "--shards", str(shards), "--languages", "de",
                 "--overwrite"]) == 0
    assert json.loads((tmp_path / "exists" / "trim.json").read_text())["languages"] == ["de"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exists.")]  # no temp dir left


def test_script_of_names_writing_systems():
    from lightmbert.deploy.trim import script_of
    assert [script_of(c) for c in "aéяηあ中한٣,▁ "] == [
        "LATIN", "LATIN", "CYRILLIC", "GREEK", "CJK", "CJK", "HANGUL", "COMMON", "COMMON", "COMMON", "COMMON"]


def test_budget_adds_the_most_probable_pieces_of_the_kept_scripts_only(family):
    """--budget: text of a kept script outside the shards (here English, Latin like German)
    keeps its segmentation; pieces of other scripts (Greek, Cyrillic) are never added; the added
    pieces are the Unigram's most probable eligible ones; German is still exact."""
    from tokenizers import Tokenizer

    from lightmbert.deploy.trim import TrimError, _pieces, coverage, script_of, trim
    name, d, student, shards = family
    if name == "wordpiece":  # no piece scores to rank by: a clear error, not a silent no-op
        with pytest.raises(TrimError, match="--budget ranks pieces by the Unigram model's scores; a WordPiece"):
            trim(student, d / "budget", str(shards), ["de"], budget=10**6)
        return
    base = trim(student, d / "budget-0", str(shards), ["de"], overwrite=True)
    tj = json.loads((student / "tokenizer.json").read_text(encoding="utf-8"))
    pieces = _pieces(tj)
    eligible = [i for i, p in enumerate(pieces) if i not in set(base["keep"]) and p
                and all(script_of(c) in ("LATIN", "COMMON") for c in p)]
    assert eligible, "the synthetic vocabulary should have Latin pieces outside the German shards"
    full = trim(student, d / "budget-all", str(shards), ["de"], budget=10**6, overwrite=True)
    assert set(full["keep"]) == set(base["keep"]) | set(eligible)
    assert all(script_of(c) not in ("GREEK", "CYRILLIC") for i in set(full["keep"]) - set(base["keep"]) for c in pieces[i])
    orig = Tokenizer.from_file(str(student / "tokenizer.json"))
    en = {"en": sentences("en", 10, SEED)}
    assert coverage(orig, set(full["keep"]), en)["en"] == 1.0 > coverage(orig, set(base["keep"]), en)["en"], \
        f"seed {SEED}"
    # a budget between the two: exactly the highest-scoring eligible pieces
    n = len(base["keep"]) + len(eligible) // 2
    part = trim(student, d / "budget-half", str(shards), ["de"], budget=n, overwrite=True)
    scores = {i: tj["model"]["vocab"][i][1] for i in eligible}
    added = set(part["keep"]) - set(base["keep"])
    assert len(part["keep"]) == n and min(scores[i] for i in added) >= max(
        (scores[i] for i in set(eligible) - added), default=-1e9)
    assert json.loads((d / "budget-half" / "trim.json").read_text())["budget"] == n
    tok, orig_fast = Tokenizer.from_file(str(d / "budget-all" / "tokenizer.json")), orig
    for t in sentences("de", 8, SEED) + en["en"]:  # covered text: the same pieces as untrimmed
        assert tok.encode(t).tokens == orig_fast.encode(t).tokens, f"seed {SEED}: {t!r}"


def test_bench_trim_table_over_budgets(family, tmp_path):
    """The size/coverage/retrieval table of lightmbert.benchmarks.bench_trim (run by hand on the
    demo) on the tiny student: more pieces at a larger budget, coverage never lower, the full
    in-script budget covers English text completely."""
    import csv

    from lightmbert.benchmarks.bench_trim import main
    name, d, student, shards = family
    if name == "wordpiece":
        return
    pairs = tmp_path / "pairs.jsonl"
    en, de = sentences("en", 12, 7), sentences("de", 12, 7)
    pairs.write_text("".join(json.dumps({"en": a, "translations": {"de": b}}) + "\n" for a, b in zip(en, de)))
    assert main(["--student", str(student), "--shards", str(shards), "--languages", "de",
                 "--heldout", f"set={pairs}", "--budgets", "0,1000000", "--retrieval", "--max-pairs", "12",
                 "--prefix", "", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "bench_trim.csv")))
    assert [r["budget"] for r in rows] == ["shards only", "1000000"]
    assert int(rows[0]["pieces"]) < int(rows[1]["pieces"])
    assert float(rows[0]["set_coverage"]) < float(rows[1]["set_coverage"]) == 1.0
    assert float(rows[1]["set_minus_untrimmed"]) == 0.0  # everything covered: the same retrieval
    cov = json.loads((tmp_path / "bench_trim.json").read_text())["coverage_per_language"]["set"]
    assert cov["1000000"]["en"] == 1.0 > cov["0"]["en"]
