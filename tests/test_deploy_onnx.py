"""lightmbert.deploy.onnx_export: ONNX fp32 (graph-optimised) equals torch (pooled and token states,
padded batches of odd lengths), int8 + int4 embedding rows stays close (cosine ≥ 0.99), the
graph holds the fused and quantised ops documented; on the real demo teacher (slow, needs
the demo assets) int8 retrieval is within 1 point of fp32."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the [deploy] extra (onnx, onnxruntime) is not installed")

SEED = random.randrange(1 << 30)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from transformers import BertConfig, BertModel

    from lightmbert.data_prep.synthetic import make_tokenizer
    from lightmbert.deploy.onnx_export import export
    d = tmp_path_factory.mktemp("onnx")
    make_tokenizer(d / "model")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=400, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128), add_pooling_layer=False).save_pretrained(d / "model")
    export(d / "model", d / "onnx", int8=True)
    return d


def batch(rng: np.random.Generator, b: int, length: int):
    ids = rng.integers(5, 400, size=(b, length))
    lengths = rng.integers(1, length + 1, size=b)
    lengths[0] = length
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    return ids * mask, mask


@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (5, 33), (2, 128)])
def test_onnx_fp32_equals_torch_and_int8_stays_close(exported, shape):
    from transformers import AutoModel

    from lightmbert.deploy.onnx_export import OnnxEncoder
    from lightmbert.evaluation.pooling import mean_pool
    rng = np.random.default_rng(SEED + shape[1])
    ids, mask = batch(rng, *shape)
    model = AutoModel.from_pretrained(exported / "model").eval()
    with torch.no_grad():
        h = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
        pooled = mean_pool(h, torch.from_numpy(mask)).numpy()
    oh, op = OnnxEncoder(exported / "onnx").run(ids, mask)
    assert np.abs(op - pooled).max() <= 1e-4, f"seed {SEED}: pooled differs"
    real = mask.astype(bool)
    assert np.abs(oh[real] - h.numpy()[real]).max() <= 1e-4, f"seed {SEED}: token states differ"
    _, qp = OnnxEncoder(exported / "onnx", int8=True).run(ids, mask)
    cos = (qp * pooled).sum(1) / np.linalg.norm(qp, axis=1) / np.linalg.norm(pooled, axis=1)
    assert cos.min() >= 0.99, f"seed {SEED}: int8 cosine {cos.min():.4f}"


def test_export_cli_and_what_it_ships(exported, tmp_path):
    from lightmbert.deploy.onnx_export import OnnxEncoder, main
    assert main([str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2
    assert main([str(exported / "model"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.onnx").is_file() and not (tmp_path / "out" / "model.int8.onnx").exists()
    v = OnnxEncoder(tmp_path / "out").encode(["der fuchs", "the quick brown fox jumps over", "η αλεπού"])
    assert v.shape == (3, 64) and torch.allclose(v.norm(dim=1), torch.ones(3), atol=1e-5)
    size = (exported / "onnx" / "model.int8.onnx").stat().st_size
    assert size < 0.5 * (exported / "onnx" / "model.onnx").stat().st_size


def test_graph_is_fused_and_quantized_as_documented(exported):
    """What the speed and size rest on: ONNX Runtime's fused attention / GELU / layer norms in
    model.onnx; in model.int8.onnx int8 attention and MatMuls, the down-projections still fp32
    MatMuls, the embedding tables 4-bit blocks."""
    import collections

    import onnx

    from lightmbert.deploy.onnx_export import down_projections
    ops = collections.Counter(n.op_type for n in onnx.load(str(exported / "onnx" / "model.onnx")).graph.node)
    assert ops["Attention"] == 2 and ops["BiasGelu"] == 2 and ops["SkipLayerNormalization"] == 4, ops
    q = onnx.load(str(exported / "onnx" / "model.int8.onnx")).graph
    qops = collections.Counter(n.op_type for n in q.node)
    # per layer: attention, its output projection and the FFN up-projection in int8
    assert qops["QAttention"] == 2 and qops["MatMulInteger"] == 4, qops
    downs = down_projections(exported / "onnx" / "model.onnx")
    assert len(downs) == 2 and {n.name for n in q.node if n.op_type == "MatMul"} == set(downs)
    assert qops["GatherBlockQuantized"] >= 1 and qops["Gather"] + qops["GatherBlockQuantized"] == ops["Gather"]


def test_int8_weights_cannot_saturate_avx2(exported):
    """Every int8 weight of the layers lies in [-64, 64]: on CPUs without VNNI the u8 × s8
    pair sums are int16 (vpmaddubsw) and saturate with full-range weights, which cost 0.6
    retrieval points on an AVX2-only CPU."""
    import onnx
    from onnx import numpy_helper
    q = onnx.load(str(exported / "onnx" / "model.int8.onnx")).graph
    inits = {t.name: t for t in q.initializer}
    weights = [n.input[1] for n in q.node if n.op_type in ("MatMulInteger", "QAttention")]
    assert len(weights) == 6
    for name in weights:
        w = numpy_helper.to_array(inits[name])
        assert w.dtype == np.int8 and -64 <= w.min() and w.max() <= 64, (name, w.min(), w.max())


@pytest.mark.slow
def test_int8_retrieval_within_a_point_of_fp32_on_the_demo_teacher(tmp_path):
    """The real multilingual model (multilingual-E5, 6 bottom layers: the demo's student
    before distillation), 60 held-out pairs × 4 languages."""
    from lightmbert.demo import DemoError
    from lightmbert.demo.assets import build, default_cache
    from lightmbert.deploy.onnx_export import OnnxEncoder, export
    from lightmbert.evaluation.encoders import truncated
    from lightmbert.evaluation.retrieval import load_pairs, retrieval_of
    try:
        assets = build(default_cache())
    except DemoError as e:
        pytest.skip(f"demo assets cannot be fetched here: {e}")
    model, tok = truncated(assets["teacher"], 6)
    model.save_pretrained(tmp_path / "student")
    tok.save_pretrained(tmp_path / "student")
    export(tmp_path / "student", tmp_path / "onnx", int8=True)
    pairs = load_pairs(assets["heldout"], ["de", "ru", "zh", "sw"], max_per_language=60)
    got = {}
    for kind in ("fp32", "int8"):
        enc = OnnxEncoder(tmp_path / "onnx", int8=kind == "int8")
        got[kind] = retrieval_of(lambda texts: enc.encode(texts, prefix="query: "), pairs)["mean"]["mean"]
    assert got["fp32"] > 0.7
    assert abs(got["int8"] - got["fp32"]) <= 0.01, got
