"""kernels: fused distillation-loss kernels (Triton) and their plain-torch references.

Imports nothing else of this project. (The public API arrives with the kernels issue.)
"""
