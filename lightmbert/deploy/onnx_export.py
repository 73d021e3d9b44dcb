"""python -m lightmbert.deploy.onnx_export MODEL_DIR OUT_DIR [--int8] [--opset 17]

Any HF encoder directory (a student, trimmed or not, or a teacher) → ONNX for ONNX Runtime:
`model.onnx` (fp32) with inputs `input_ids`, `attention_mask` (int64, dynamic batch and
sequence axes) and outputs `last_hidden_state` and `pooled` (the masked mean the trainer and
evaluation use: lightmbert.evaluation.pooling), its graph already optimised by ONNX Runtime (fused
attention, GELU, layer norms), and with `--int8` `model.int8.onnx`: ONNX Runtime's dynamic
int8 quantisation of the layers (weights int8, activations quantised per batch at run time:
no calibration data needed) and 4-bit embedding rows (see `quantize`). The tokenizer files
are copied alongside, so OUT_DIR is what one ships. Needs the `[deploy]` extra (onnx,
onnxruntime, onnx-ir).

`OnnxEncoder(OUT_DIR)` runs it: texts → L2-normalised sentence vectors, like
lightmbert.evaluation.encoders.encode, so the same retrieval scoring applies.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightmbert.evaluation.encoders import load_kwargs
from lightmbert.evaluation.pooling import mean_pool

from . import atomic_dir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class _Encoder(nn.Module):
    """Keyword arguments only: with transformers 5, positional ones collide with `use_cache`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        h = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return h, mean_pool(h, attention_mask)


def down_projections(path: Path) -> list[str]:
    """MatMul nodes whose weight shrinks the width ([k, n], k > n): the feed-forward output
    projections, whose inputs (GELU outputs) have the outliers that per-tensor int8
    activations round away."""
    import onnx
    g = onnx.load(str(path), load_external_data=False).graph
    shapes = {t.name: list(t.dims) for t in g.initializer}
    return [n.name for n in g.node if n.op_type == "MatMul" and len(shapes.get(n.input[1], [])) == 2
            and shapes[n.input[1]][0] > shapes[n.input[1]][1]]


def optimize(path: Path, config) -> None:
    """ONNX Runtime's transformer graph optimisation, saved into the file (done once here, not
    at every session start): fused Attention, BiasGelu, SkipLayerNormalization. The embedding
    LayerNorm fusion stays off, so the word-embedding Gather remains a plain Gather for
    `quantize` (int4 rows). Where a pattern does not match, the graph is left as exported
    (still correct; tests/test_deploy_onnx.py checks the fusions on a BERT)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model
    opts = FusionOptions("bert")
    opts.enable_embed_layer_norm = False
    m = optimize_model(str(path), model_type="bert", num_heads=config.num_attention_heads,
                       hidden_size=config.hidden_size, optimization_options=opts)
    m.save_model_to_file(str(path))


def quantize(fp32: Path, int8: Path) -> None:
    """int8 for the transformer layers, int4 for the embedding rows:
    1. ONNX Runtime dynamic int8 on MatMul and fused Attention: per-channel int8 weights,
       activations quantised per batch at run time (no calibration data); the feed-forward
       down-projections stay fp32 (per-tensor activations round away their outliers);
    2. the embedding tables (Gather) as 4-bit blocks of 32 values with an fp32 scale each
       (GatherBlockQuantized): the biggest part of a multilingual student, at ½ byte a value.
    Measured on the demo's trimmed student (held-out retrieval, 100 pairs × 14 languages):
    fp32 0.940; int8 with int8 embedding rows 0.937; with int4 embedding rows 0.941 (blocks of
    32 keep more than one scale per tensor); all MatMuls int8 0.931; all MatMuls int4 0.889.
    On the 6-layer E5 truncation: down-projections int8 0.852 vs fp32 0.869. On an AVX2-only
    CPU (no VNNI): 0.935 with 8-bit weights, 0.940 with the 7-bit ones used (reduce_range)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    tmp = int8.with_name(int8.name + ".partial")
    # DefaultTensorType: shape inference gives no types past the fused (com.microsoft) ops.
    # reduce_range: 7-bit weights. x86 CPUs without VNNI (AVX2 only, e.g. AMD EPYC Milan)
    # multiply u8 activations by s8 weights with vpmaddubsw, whose int16 pair sums saturate
    # for 8-bit weights (255·127·2 > 32767) but not for 7-bit ones (255·64·2 < 32767): the
    # same int8 file scored 0.935 there against 0.941 on a VNNI CPU, 0.940 with reduce_range.
    quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                     op_types_to_quantize=["MatMul", "Attention"], nodes_to_exclude=down_projections(fp32),
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    # it logs every node it leaves alone at INFO: keep its warnings only
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    cfg = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, bits=4, op_types_to_quantize=("Gather",),
                                       quant_axes=(("Gather", 1),))
    q = MatMulNBitsQuantizer(onnx.load(str(tmp)), algo_config=cfg)
    with np.errstate(invalid="ignore"):  # an all-zero row (the padding id's) has scale 0: stored as 0
        q.process()
    onnx.save(q.model.model, str(int8))
    tmp.unlink()


def export(model_dir: Path, out: Path, int8: bool = True, opset: int = 17) -> dict[str, Path]:
    """Write model.onnx (+ model.int8.onnx) and the tokenizer into `out` (atomically)."""
    from transformers import AutoModel
    # eager attention: its graph is the pattern ONNX Runtime fuses into one Attention op (the
    # SDPA export's is not); numerically the same model
    try:
        model = AutoModel.from_pretrained(model_dir, add_pooling_layer=False, attn_implementation="eager",
                                          **load_kwargs())
    except TypeError:
        model = AutoModel.from_pretrained(model_dir, attn_implementation="eager", **load_kwargs())
    model.eval()
    with atomic_dir(out) as tmp:
        ids = torch.ones(2, 7, dtype=torch.long)
        # padding in the example: HF skips the mask for an all-ones one, and the trace would
        # keep that shortcut for every input
        mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
        axes = {0: "batch", 1: "sequence"}
        with torch.no_grad():
            torch.onnx.export(_Encoder(model), (ids, mask), str(tmp / "model.onnx"),
                              input_names=["input_ids", "attention_mask"],
                              output_names=["last_hidden_state", "pooled"],
                              dynamic_axes={"input_ids": axes, "attention_mask": axes,
                                            "last_hidden_state": axes, "pooled": {0: "batch"}},
                              opset_version=opset, dynamo=False)
        optimize(tmp / "model.onnx", model.config)
        if int8:
            quantize(tmp / "model.onnx", tmp / "model.int8.onnx")
        for name in TOKENIZER_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
    return {k: out / f for k, f in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")) if (out / f).is_file()}


class OnnxEncoder:
    """An exported directory under ONNX Runtime (CPU): sentence vectors and raw outputs."""

    def __init__(self, directory: Path, int8: bool = False, threads: int = 0):
        import onnxruntime as ort
        from transformers import AutoTokenizer
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        path = Path(directory) / ("model.int8.onnx" if int8 else "model.onnx")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.tokenizer = AutoTokenizer.from_pretrained(directory)

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(last_hidden_state, pooled) for int64 arrays."""
        h, pooled = self.session.run(None, {"input_ids": input_ids.astype(np.int64),
                                            "attention_mask": attention_mask.astype(np.int64)})
        return h, pooled

    def encode(self, texts: list[str], prefix: str = "", batch_size: int = 64, max_length: int = 128) -> torch.Tensor:
        """L2-normalised pooled vectors [N, d] (length-sorted batches, like lightmbert.evaluation.encoders)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), 0)
        for a in range(0, len(texts), batch_size):
            idx = order[a:a + batch_size]
            b = self.tokenizer([prefix + texts[i] for i in idx], padding=True, truncation=True,
                               max_length=max_length, return_tensors="np")
            v = torch.nn.functional.normalize(torch.from_numpy(self.run(b["input_ids"], b["attention_mask"])[1]), dim=-1)
            if out.shape[1] == 0:
                out = torch.empty(len(texts), v.shape[1])
            out[idx] = v
        return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("model", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--int8", action="store_true", help="also write model.int8.onnx (dynamic quantisation)")
    ap.add_argument("--opset", type=int, default=17)
    args = ap.parse_args(argv)
    if not (args.model / "config.json").is_file():
        print(f"lightmbert.deploy.onnx_export: {args.model} is not a Hugging Face model directory (no config.json)",
              file=sys.stderr)
        return 2
    paths = export(args.model, args.out, args.int8, args.opset)
    for kind, p in paths.items():
        print(f"[onnx] {kind}: {p} ({p.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
