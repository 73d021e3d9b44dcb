"""The typed YAML config loader: errors name key + file, precedence, shipped YAMLs."""
import pytest
import yaml

from lightmbert.configs import ConfigError, PrepConfig, describe, dump, load
from tests.helpers import REPO


def write(tmp_path, text, name="x.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = """
input: {languages: {en: [a.txt]}}
tokenizer: {name_or_path: tok}
output: {dir: out}
"""


def test_wrong_type_names_key_and_file(tmp_path):
    p = write(tmp_path, BASE + "packing: {seq_len: abc}\n")
    with pytest.raises(ConfigError, match=r"^packing\.seq_len: expected int, got 'abc' in .*x\.yaml$"):
        load(PrepConfig, p)


def test_unknown_key_and_missing_value(tmp_path):
    with pytest.raises(ConfigError, match=r"packing\.seqlen: unknown key in .*x\.yaml"):
        load(PrepConfig, write(tmp_path, BASE + "packing: {seqlen: 3}\n"))
    with pytest.raises(ConfigError, match=r"^tokenizer\.name_or_path: missing required value"):
        load(PrepConfig, write(tmp_path, "input: {languages: {en: [a]}}\noutput: {dir: o}\n"))
    with pytest.raises(ConfigError, match=r"^bogus: unknown key"):
        load(PrepConfig, write(tmp_path, BASE + "bogus: 1\n"))


def test_literal_bool_and_range_checks(tmp_path):
    with pytest.raises(ConfigError, match=r"packing\.mode: expected one of 'pack' \| 'segment', got 'pak'"):
        load(PrepConfig, write(tmp_path, BASE + "packing: {mode: pak}\n"))
    with pytest.raises(ConfigError, match=r"packing\.seq_len: must be in \[8, 65536\], got 4"):
        load(PrepConfig, write(tmp_path, BASE + "packing: {seq_len: 4}\n"))
    with pytest.raises(ConfigError, match=r"workers: expected int, got True"):
        load(PrepConfig, write(tmp_path, BASE + "workers: true\n"))
    with pytest.raises(ConfigError, match=r"unknown language key 'english'"):
        load(PrepConfig, write(tmp_path, "input: {languages: {english: [a]}}\ntokenizer: {name_or_path: t}\noutput: {dir: o}\n"))
    with pytest.raises(ConfigError, match=r"'xx' is not an ISO 639-1 code"):
        load(PrepConfig, write(tmp_path, "input: {languages: {xx: [a]}}\ntokenizer: {name_or_path: t}\noutput: {dir: o}\n"))


def test_precedence_cli_over_file_over_default(tmp_path):
    p = write(tmp_path, BASE + "packing: {seq_len: 256}\n")
    assert load(PrepConfig, p).packing.seq_len == 256           # file over default (128)
    assert load(PrepConfig, p).packing.mode == "pack"           # default
    cfg = load(PrepConfig, p, ["--packing.seq_len=64", "--packing.mode", "segment"])
    assert (cfg.packing.seq_len, cfg.packing.mode) == (64, "segment")
    # a string field keeps the CLI text verbatim (no YAML typing of "123" or "yes")
    assert load(PrepConfig, p, ["--packing.prefix=123"]).packing.prefix == "123"
    assert load(PrepConfig, p, ["--output.dir=yes"]).output.dir == "yes"
    # a list field accepts a single item; a nested key merges, a literal mapping replaces
    cfg = load(PrepConfig, p, ["--input.languages.de=b.txt"])
    assert cfg.input.languages == {"en": ["a.txt"], "de": ["b.txt"]}
    cfg = load(PrepConfig, p, ["--input.languages={de: [b.txt]}"])
    assert cfg.input.languages == {"de": ["b.txt"]}


def test_cli_errors_name_the_flag(tmp_path):
    p = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"packing\.seq_len: expected int, got 'x' \(from --packing\.seq_len\)"):
        load(PrepConfig, p, ["--packing.seq_len=x"])
    with pytest.raises(ConfigError, match=r"packing\.nope: unknown key \(from --packing\.nope"):
        load(PrepConfig, p, ["--packing.nope=1"])
    with pytest.raises(ConfigError, match=r"expected --section\.key=value"):
        load(PrepConfig, p, ["packing.seq_len=3"])


def test_scientific_notation_floats(tmp_path):
    from lightmbert.configs import DistillConfig
    p = write(tmp_path, "run: {output_dir: o}\nteacher: {name_or_path: t}\ndata: {shards: s}\n"
                        "optim: {lr: 1e-4, eps: 1.0e-8}\n")
    cfg = load(DistillConfig, p, ["--optim.weight_decay=5e-2"])
    assert (cfg.optim.lr, cfg.optim.eps, cfg.optim.weight_decay) == (1e-4, 1e-8, 5e-2)
    with pytest.raises(ConfigError, match=r"optim\.lr: expected float, got '1e-4x'"):
        load(DistillConfig, p, ["--optim.lr=1e-4x"])


def test_env_expansion(tmp_path, monkeypatch):
    p = write(tmp_path, BASE.replace("dir: out", "dir: '${LMB_TEST_DIR:-fallback}/shards'"))
    monkeypatch.delenv("LMB_TEST_DIR", raising=False)
    assert load(PrepConfig, p).output.dir == "fallback/shards"
    monkeypatch.setenv("LMB_TEST_DIR", "/data")
    assert load(PrepConfig, p).output.dir == "/data/shards"
    p2 = write(tmp_path, BASE.replace("dir: out", "dir: '${LMB_UNSET_VAR}/x'"), "y.yaml")
    with pytest.raises(ConfigError, match=r"output\.dir: environment variable LMB_UNSET_VAR is not set"):
        load(PrepConfig, p2)


def test_dump_roundtrip(tmp_path):
    cfg = load(PrepConfig, write(tmp_path, BASE), ["--packing.prefix=query: "])
    dump(cfg, tmp_path / "out" / "config.yaml", header="python -m lightmbert.data_prep.shard ...")
    text = (tmp_path / "out" / "config.yaml").read_text()
    assert text.startswith("# python -m lightmbert.data_prep.shard")
    assert load(PrepConfig, tmp_path / "out" / "config.yaml") == cfg
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_every_field_is_documented():
    undocumented = [key for key, _, _, doc in describe(PrepConfig) if not doc]
    assert undocumented == []


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_yaml_starts_with_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# "), first
    assert any(cmd in first for cmd in ("python -m ", "torchrun ", "deepspeed ", "sbatch ", "make ")), first
    assert isinstance(yaml.safe_load(path.read_text()), dict)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "distill").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_distill_configs_validate(path):
    from lightmbert.configs import DistillConfig
    cfg = load(DistillConfig, path)
    assert cfg.student.num_layers >= 1 and cfg.run.max_steps >= 1


def _demo_variants() -> dict[str, list[str]]:
    import re
    import shlex
    text = (REPO / "Makefile").read_text()
    return {m.group(1): shlex.split(m.group(2)) for m in re.finditer(r"^DEMO_OVERRIDES_(\w+) :=(.*)$", text, re.M)}


@pytest.mark.parametrize("variant", sorted(_demo_variants()))
def test_make_demo_variants_are_valid_overrides(variant):
    """`make demo VARIANT=x` passes DEMO_OVERRIDES_x to the trainer: each must load on top of
    the demo config (a typo would otherwise surface only after sharding, minutes in)."""
    from lightmbert.configs import DistillConfig
    overrides = _demo_variants()[variant]
    cfg = load(DistillConfig, REPO / "configs" / "distill" / "demo_cpu.yaml", overrides)
    assert cfg.student.num_layers == 6
    if variant == "monolingual":
        assert cfg.data.parallel is False   # the point of the variant: no translation pairs


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "data").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_data_configs_validate(path):
    cfg = load(PrepConfig, path)
    assert cfg.packing.seq_len >= 8


def test_readme_config_reference_is_current():
    from lightmbert.configs.reference import markdown
    readme = (REPO / "README.md").read_text()
    assert markdown().strip() in readme, "README config reference is stale: python -m lightmbert.configs.reference"


def test_dict_of_sections(tmp_path):
    """A dict of dataclasses (eval.sets: name → EvalSetConfig) from YAML and CLI: an override
    under a dict key is typed by the entry's dataclass (a path `2024` stays a string, an unknown
    key names the flag), `--key={...}` replaces the file's dict, a dump loads back, and the
    reference documents the entries' fields."""
    from lightmbert.configs import DistillConfig, EvalSetConfig
    base = ["--run.output_dir=o", "--teacher.name_or_path=t", "--data.shards=s"]
    p = write(tmp_path, "eval:\n  sets:\n    ood: {pairs: a.jsonl, languages: [de]}\n")
    cfg = load(DistillConfig, p, base + ["--eval.sets.ood.max_pairs=5", "--eval.sets.web.pairs=2024"])
    assert cfg.eval.sets == {"ood": EvalSetConfig("a.jsonl", ["de"], 5), "web": EvalSetConfig("2024")}
    assert load(DistillConfig, p, base + ['--eval.sets={"x": {"pairs": "b.jsonl"}}']).eval.sets == {
        "x": EvalSetConfig("b.jsonl")}
    with pytest.raises(ConfigError, match=r"^eval\.sets\.ood\.max_pairs: expected int \| null, got 'many' "
                                          r"\(from --eval\.sets\.ood\.max_pairs\)$"):
        load(DistillConfig, p, base + ["--eval.sets.ood.max_pairs=many"])
    with pytest.raises(ConfigError, match=r"^eval\.sets\.ood\.lang: unknown key \(from --eval\.sets\.ood\.lang;"):
        load(DistillConfig, p, base + ["--eval.sets.ood.lang=[de]"])
    dump(cfg, tmp_path / "config.yaml")
    assert load(DistillConfig, tmp_path / "config.yaml") == cfg
    rows = {key: (tp, default) for key, tp, default, _ in describe(DistillConfig)}
    assert rows["eval.sets"] == ("dict[str, EvalSetConfig]", "{}")
    assert rows["eval.sets.<name>.pairs"] == ("str", "(required)")
    assert rows["eval.sets.<name>.max_pairs"] == ("int | null", "None")
