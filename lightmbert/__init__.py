"""LightMBERT: distil a multilingual BERT teacher into a small student (arXiv 2103.06418).

One job per sub-package:

    lightmbert.data_prep    text and translation pairs → webdataset shards (CPU prep nodes)
    lightmbert.configs      the typed config schema and the YAML/CLI loader
    lightmbert.kernels      the fused distillation losses (Triton) and their torch references
    lightmbert.trainer      the DeepSpeed ZeRO distiller (frozen teacher → LightMBERT student)
    lightmbert.evaluation   cross-lingual quality of any Hugging Face encoder directory
    lightmbert.deploy       shipping a student: vocabulary trimming, ONNX export + int8
    lightmbert.demo         the offline demo (assets from package registries, report, sweeps)
    lightmbert.benchmarks   speed, memory and quality benchmarks (tables + CSV), `make gpu-check`

Importing `lightmbert` itself imports none of them: each user loads only what its job needs.
"""
__version__ = "0.2.0"
