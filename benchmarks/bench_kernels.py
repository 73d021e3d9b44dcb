"""python -m benchmarks.bench_kernels [--dtype bf16] [--out runs/bench] [--tiny]

Forward + backward of every distillation loss, per provider: the torch eager reference,
`torch.compile` of the reference, ours (Triton), and for fused_linear_kl Liger-Kernel's
fused-linear JSD with beta=0 (forward KL) where it is installed. Reports the median time
(CUDA events), the peak extra memory, and for the memory-bound losses the achieved
bandwidth against the device-to-device copy bandwidth measured in the same run.
Prints a table and writes CSV. `--tiny` runs small shapes on CPU (Triton interpreter) as a
smoke test of the script itself: its timings mean nothing.

Shapes (GPU): mBERT layer pairs B=32, H=12, D=64, L ∈ {128, 512}; hidden 768;
fused-linear N ∈ {4096, 16384}, d = 768, V = 119,547.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from .report import report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test with small shapes")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    if args.tiny:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    import kernels
    from kernels import reference as R

    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        print("bench_kernels: no CUDA device; use --tiny for a CPU smoke run", file=sys.stderr)
        return 2
    dev = "cuda" if cuda else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    if not cuda:
        dtype = torch.float32  # the interpreter's bf16 is wrong
    g = torch.Generator(device=dev).manual_seed(0)

    def rand(*shape, scale=1.0, grad=False):
        x = (torch.randn(*shape, device=dev, generator=g) * scale).to(dtype)
        return x.requires_grad_(grad)

    def timed(fn, inputs):
        def step():
            for x in inputs:
                x.grad = None
            fn().backward()
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            step()
        times = []
        for _ in range(args.reps if cuda else 2):
            if cuda:
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                step()
                e.record()
                torch.cuda.synchronize()
                times.append(s.elapsed_time(e))
            else:
                t0 = time.perf_counter()
                step()
                times.append((time.perf_counter() - t0) * 1e3)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else float("nan")
        return statistics.median(times), peak

    copy_gbs = float("nan")
    if cuda:
        a = torch.empty(1 << 28, device=dev, dtype=torch.uint8)  # 256 MiB
        b = torch.empty_like(a)
        b.copy_(a)
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(20):
            b.copy_(a)
        e.record()
        torch.cuda.synchronize()
        copy_gbs = 2 * 20 * a.numel() / (s.elapsed_time(e) / 1e3) / 1e9  # read + write
        del a, b

    def providers(ref_fn, ours_fn, liger=None):
        out = {"eager": ref_fn}
        if cuda:
            out["compile"] = torch.compile(ref_fn)
        out["ours"] = ours_fn
        if liger is not None:
            out["liger"] = liger
        return out

    esz = torch.tensor([], dtype=dtype).element_size()
    B, H, D = (32, 12, 64) if cuda else (2, 2, 16)
    rows = []

    def run(op, shape, provs, inputs, make_loss, bytes_moved=None):
        for name, fn in provs.items():
            try:
                ms, peak = timed(lambda: make_loss(fn), inputs)
                bw = bytes_moved / (ms / 1e3) / 1e9 if bytes_moved else float("nan")
                rows.append(dict(op=op, shape=shape, provider=name, ms=round(ms, 3),
                                 peak_mib=round(peak, 1), gbs=round(bw, 1),
                                 pct_copy=round(100 * bw / copy_gbs, 1) if bytes_moved and cuda else ""))
            except torch.cuda.OutOfMemoryError:
                rows.append(dict(op=op, shape=shape, provider=name, ms="OOM", peak_mib="", gbs="", pct_copy=""))
                torch.cuda.empty_cache()

    for L in ((128, 512) if cuda else (37,)):
        q = [rand(B, H, L, D, grad=True), rand(B, H, L, D, grad=True)]
        t = [rand(B, H, L, D), rand(B, H, L, D)]
        mask = torch.ones(B, L, device=dev)
        mask[: B // 2, L - L // 4:] = 0
        for op in ("attention_score_mse", "attention_prob_kl"):
            ref, ours = getattr(R, op), getattr(kernels, op)
            run(op, f"B{B} H{H} L{L} D{D}",
                providers(ref, lambda *a, _o=ours: _o(*a, impl="triton")), q,
                lambda f: f(q[0], q[1], t[0], t[1], mask))
        s_map, t_map = rand(B, H, L, L, grad=True), rand(B, H, L, L)
        run("attention_map_mse", f"B{B} H{H} L{L}",
            providers(R.attention_map_mse, lambda *a: kernels.attention_map_mse(*a, impl="triton")),
            [s_map], lambda f: f(s_map, t_map, mask), bytes_moved=5 * s_map.numel() * esz)
        del s_map, t_map
    L, d = (512, 768) if cuda else (37, 45)
    s_h, t_h = rand(B, L, d, grad=True), rand(B, L, d)
    mask = torch.ones(B, L, device=dev)
    run("hidden_mse", f"B{B} L{L} d{d}",
        providers(R.hidden_mse, lambda *a: kernels.hidden_mse(*a, impl="triton")),
        [s_h], lambda f: f(s_h, t_h, mask), bytes_moved=5 * s_h.numel() * esz)

    V, d = (119547, 768) if cuda else (1003, 24)
    try:
        from liger_kernel.transformers.fused_linear_jsd import LigerFusedLinearJSD
    except ImportError:
        LigerFusedLinearJSD = None
    for N in ((4096, 16384) if cuda else (41,)):
        s_h, s_w = rand(N, d, grad=True), rand(V, d, scale=0.02, grad=True)
        t_h, t_w = rand(N, d), rand(V, d, scale=0.02)
        liger = None
        if LigerFusedLinearJSD is not None and cuda:
            jsd = LigerFusedLinearJSD(jsd_beta=0.0, temperature=2.0)
            liger = lambda a, w, b, c, **k: jsd(a, w, b, c)  # noqa: E731
        run("fused_linear_kl", f"N{N} d{d} V{V}",
            providers(lambda a, w, b, c: R.fused_linear_kl(a, w, b, c, temperature=2.0),
                      lambda a, w, b, c: kernels.fused_linear_kl(a, w, b, c, temperature=2.0, impl="triton"),
                      liger),
            [s_h, s_w], lambda f: f(s_h, s_w, t_h, t_w))
        del s_h, s_w, t_h, t_w

    device = torch.cuda.get_device_name() if cuda else "CPU (Triton interpreter; timings meaningless)"
    print(f"\nbench_kernels on {device}, dtype {str(dtype).replace('torch.', '')}, "
          f"copy bandwidth {copy_gbs:.0f} GB/s")
    report(rows, args.out / ("bench_kernels_tiny.csv" if args.tiny else "bench_kernels.csv"),
           extra={"device": device, "dtype": str(dtype), "copy_gbs": round(copy_gbs, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
