"""Config schema: one dataclass per section, a docstring under every field.

The docstrings are the config reference: `python -m data_prep.shard --help` prints them, and
the README's tables are generated from them (`python -m configs.reference`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

# ISO 639-1 two-letter codes: a two-letter language key must be one of them, so that a typo
# such as `ge` for German or `english` fails before any work instead of making a new stream.
ISO_639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy
da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu
hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb
lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om
or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw
ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
""".split())

_LANG_RE = re.compile(r"^([a-z]{2,3})(-[a-z0-9]{2,8})*$")


def check_language_key(key: str) -> None:
    """Language keys are lowercase BCP-47-like tags: `de`, `pt-br`, `zh-hant`, `ast`."""
    m = _LANG_RE.match(key)
    if not m:
        raise ValueError(f"unknown language key {key!r}: expected a lowercase language tag "
                         f"such as 'de', 'pt-br' or 'ast'")
    if len(m.group(1)) == 2 and m.group(1) not in ISO_639_1:
        raise ValueError(f"unknown language key {key!r}: {m.group(1)!r} is not an ISO 639-1 code")


# ============================================================================ data_prep
@dataclass
class InputConfig:
    """Where the per-language text comes from."""

    languages: dict[str, list[str]] = field(default_factory=dict)
    """Language key → list of files or globs (`.txt`, `.txt.gz`, `.jsonl`, `.jsonl.gz`). Text
    files hold one segment per line, documents separated by blank lines; a JSONL record is a
    document whose text field may hold several lines."""
    directory: str | None = None
    """A folder whose entries `<lang>.txt[.gz]`, `<lang>.jsonl[.gz]` or `<lang>/` (all
    supported files inside) each become a language; merged with `languages`."""
    include: list[str] = field(default_factory=list)
    """Keep only these languages (empty: all that were found)."""
    exclude: list[str] = field(default_factory=list)
    """Drop these languages."""
    text_field: str = "text"
    """Field holding the text in JSONL records."""
    encoding: str = "utf-8"
    """Default text encoding. Undecodable bytes are replaced (U+FFFD) and counted."""
    encodings: dict[str, str] = field(default_factory=dict)
    """Per-file encodings: glob pattern matched against the file path → codec, e.g.
    `{"*/ru/*.txt": koi8-r}`. The first matching pattern wins."""
    normalize: Literal["NFC", "NFKC", "none"] = "NFC"
    """Unicode normalisation applied to every line before tokenisation."""
    chunk_mb: int = 32
    """Uncompressed text files larger than this are split into chunks (at line boundaries)
    that are tokenised in parallel; packing restarts at a chunk boundary. The output depends
    on this value, never on the number of workers."""

    def __post_init__(self) -> None:
        for key in [*self.languages, *self.include, *self.exclude]:
            check_language_key(key)
        if self.chunk_mb < 1:
            raise ValueError(f"chunk_mb: must be >= 1, got {self.chunk_mb}")
        if not self.languages and not self.directory:
            raise ValueError("no input: set input.languages and/or input.directory")


@dataclass
class TokenizerConfig:
    """The tokenizer: must be the teacher's."""

    name_or_path: str
    """A Hugging Face hub name, a local model/tokenizer directory, or a `tokenizer.json` file
    (any fast tokenizer)."""


@dataclass
class PackingConfig:
    """How token segments become training sequences."""

    seq_len: int = 128
    """Maximum sequence length including the special tokens ([CLS]/[SEP] or <s>/</s>)."""
    mode: Literal["pack", "segment"] = "pack"
    """`pack`: consecutive segments of one document share a sequence (BERT-style; sequences
    never cross documents). `segment`: one segment per sequence (e.g. sentence-level data)."""
    prefix: str = ""
    """Text put after the start token of every sequence, e.g. `"query: "` for E5 teachers."""

    def __post_init__(self) -> None:
        if not 8 <= self.seq_len <= 65536:
            raise ValueError(f"seq_len: must be in [8, 65536], got {self.seq_len}")


@dataclass
class OutputConfig:
    """Where and how the shards are written."""

    dir: str
    """Output folder: `<dir>/<lang>/<lang>-NNNNNN.tar`, `<dir>/manifest.json`,
    `<dir>/config.yaml`."""
    shard_samples: int = 10000
    """Sequences per tar shard (the last shard of a language may hold fewer)."""

    def __post_init__(self) -> None:
        if self.shard_samples < 1:
            raise ValueError(f"shard_samples: must be >= 1, got {self.shard_samples}")


@dataclass
class PrepConfig:
    """`python -m data_prep.shard`: multilingual text → tokenised webdataset shards."""

    input: InputConfig
    tokenizer: TokenizerConfig
    output: OutputConfig
    packing: PackingConfig = field(default_factory=PackingConfig)
    workers: int = 0
    """Worker processes (0: one per CPU core). The output does not depend on it."""

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers: must be >= 0, got {self.workers}")
