import os
import warnings

import pytest
import torch

# Triton kernels run on CPU under the interpreter, which must be chosen before triton is
# first imported. On a CUDA machine the real kernels run instead.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lightmbert.configs import PrepConfig, load
from lightmbert.data_prep.synthetic import WORDS, make_tokenizer, random_documents, write_text

# torch 2.13 + DeepSpeed deprecation noise is not ours to fix.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"(deepspeed|torch)\..*")


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture
def corpus(tmp_path):
    """Four languages, 120 documents each, in a folder of <lang>.txt files."""
    root = tmp_path / "text"
    for i, lang in enumerate(WORDS):
        write_text(root / f"{lang}.txt", random_documents(lang, 120, seed=i))
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Synthetic 4-language shards (seq 32, 100 samples a shard) for the distiller tests."""
    from lightmbert.data_prep.shard import run
    d = tmp_path_factory.mktemp("trainer")
    tok = make_tokenizer(d / "tok")
    for i, lang in enumerate(WORDS):
        write_text(d / "text" / f"{lang}.txt", random_documents(lang, 300, seed=i))
    run(load(PrepConfig, None, [f"--input.directory={d}/text", f"--tokenizer.name_or_path={tok}",
                                f"--output.dir={d}/shards", "--output.shard_samples=100",
                                "--workers=1", "--packing.seq_len=32"]))
    return d / "shards"


@pytest.fixture(scope="module")
def segment_shards(tmp_path_factory):
    """One-segment-per-sequence shards (seq 48, 50 samples a shard) for the data stream tests."""
    from lightmbert.data_prep.shard import run
    d = tmp_path_factory.mktemp("data")
    tok = make_tokenizer(d / "tok")
    for i, lang in enumerate(WORDS):
        write_text(d / "text" / f"{lang}.txt", random_documents(lang, 200, seed=10 + i))
    run(load(PrepConfig, None, [f"--input.directory={d}/text", f"--tokenizer.name_or_path={tok}",
                                f"--output.dir={d}/shards", "--output.shard_samples=50", "--workers=1",
                                "--packing.seq_len=48", "--packing.mode=segment"]))
    return d / "shards"
