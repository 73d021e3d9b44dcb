"""Load any Hugging Face fast tokenizer and describe it (special ids, identity hash).

Workers never import transformers: they rebuild the Rust tokenizer from its JSON string
(`tokenizers.Tokenizer.from_str`), which is all that tokenisation needs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from . import PrepError

# (start, end, pad) spellings of the two BERT-family conventions.
_SPECIAL_SETS = (("[CLS]", "[SEP]", "[PAD]"), ("<s>", "</s>", "<pad>"))


@dataclass(frozen=True)
class TokenizerInfo:
    name: str
    vocab_size: int
    cls_id: int
    sep_id: int
    pad_id: int
    sha256: str
    """Hash of the tokenizer's canonical JSON serialisation + its special ids."""

    def to_dict(self) -> dict:
        return asdict(self)


class RustTokenizer:
    """The part of a `PreTrainedTokenizerFast` that data_prep uses, read straight from a
    saved directory (tokenizer.json + tokenizer_config.json) with the `tokenizers` library.

    Importing transformers costs seconds on every run and every prep node; a saved fast
    tokenizer does not need it. Hub names and slow tokenizers go through transformers."""

    is_fast = True

    def __init__(self, directory: Path):
        from tokenizers import Tokenizer
        self.backend_tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        conf = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            f = directory / name
            if f.is_file():
                conf.update(json.loads(f.read_text(encoding="utf-8")))

        def tid(key: str) -> int | None:
            tok = conf.get(key)
            tok = tok.get("content") if isinstance(tok, dict) else tok
            return self.backend_tokenizer.token_to_id(tok) if isinstance(tok, str) else None

        for key in ("cls", "sep", "bos", "eos", "pad", "mask"):
            setattr(self, f"{key}_token_id", tid(f"{key}_token"))

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}


def load_tokenizer(name_or_path: str):
    """A fast tokenizer from a hub name, a directory, or a tokenizer.json file."""
    p = Path(name_or_path).expanduser()
    if p.is_dir() and (p / "tokenizer.json").is_file() and (p / "tokenizer_config.json").is_file():
        tok = RustTokenizer(p)
        if tok.pad_token_id is not None and (tok.cls_token_id is not None or tok.bos_token_id is not None):
            return tok
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        if p.is_file():
            if p.suffix != ".json":
                raise PrepError(f"tokenizer {name_or_path}: a file must be a tokenizer.json")
            tok = PreTrainedTokenizerFast(tokenizer_file=str(p))
            for start, end, pad in _SPECIAL_SETS:  # a bare tokenizer.json names no specials
                if tok.backend_tokenizer.token_to_id(start) is not None:
                    tok.add_special_tokens({"cls_token": start, "sep_token": end, "pad_token": pad})
                    break
        else:
            tok = AutoTokenizer.from_pretrained(str(p) if p.is_dir() else name_or_path)
    except PrepError:
        raise
    except Exception as e:  # hub unreachable, missing files, ...
        raise PrepError(f"cannot load tokenizer {name_or_path!r}: {type(e).__name__}: {e}") from None
    if not getattr(tok, "is_fast", False):
        raise PrepError(f"tokenizer {name_or_path!r} is not a fast (Rust) tokenizer")
    return tok


def describe_tokenizer(tok, name: str) -> TokenizerInfo:
    cls_id = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
    sep_id = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
    pad_id = tok.pad_token_id
    if cls_id is None or sep_id is None or pad_id is None:
        raise PrepError(f"tokenizer {name!r} has no [CLS]/<s>, [SEP]/</s> or pad token")
    h = hashlib.sha256(tok.backend_tokenizer.to_str().encode("utf-8"))
    h.update(json.dumps([cls_id, sep_id, pad_id]).encode())
    return TokenizerInfo(name=name, vocab_size=len(tok), cls_id=int(cls_id), sep_id=int(sep_id),
                         pad_id=int(pad_id), sha256=h.hexdigest())


def backend_json(tok) -> str:
    """The Rust tokenizer as JSON, for the worker processes. Truncation and padding are
    switched off on `tok` first: data_prep owns this tokenizer and packs by itself."""
    bt = tok.backend_tokenizer
    bt.no_truncation()
    bt.no_padding()
    return bt.to_str()
