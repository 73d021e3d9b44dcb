import os
import warnings

import pytest
import torch

# Triton kernels run on CPU under the interpreter, which must be chosen before triton is
# first imported. On a CUDA machine the real kernels run instead.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from data_prep.synthetic import WORDS, make_tokenizer, random_documents, write_text

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
