"""Peak dense bf16 tensor-core throughput by GPU name, for the MFU and "% of peak" columns.

Vendor datasheet numbers without sparsity. torch.cuda.get_device_name() says e.g. "NVIDIA
H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200",
"NVIDIA A100-SXM4-80GB"; the first row whose words all occur in the name wins, so the specific
variants come first. Unknown devices (and the CPU) get None: a blank column, never a guess.
LIGHTMBERT_PEAK_TFLOPS overrides the table (a GPU it lacks, a clock-limited part).
"""
from __future__ import annotations

import os

PEAK_BF16_TFLOPS = [  # (words in the device name, dense bf16 TFLOP/s)
    (("H100", "PCIe"), 756.0),
    (("H100", "NVL"), 835.0),
    (("H100",), 989.0),     # SXM
    (("H200",), 989.0),     # SXM and NVL: the H100's tensor cores, more and faster memory
    (("H800",), 989.0),
    (("A100",), 312.0),
    (("A800",), 312.0),
    (("L40S",), 362.0),
    (("L4",), 121.0),
]


def peak_bf16_tflops(device_name: str | None) -> float | None:
    env = os.environ.get("LIGHTMBERT_PEAK_TFLOPS")
    if env:
        return float(env)
    if not device_name:
        return None
    words = device_name.replace("-", " ").split()
    for needed, tflops in PEAK_BF16_TFLOPS:
        if all(any(w.upper() == n.upper() for w in words) for n in needed):
            return tflops
    return None
