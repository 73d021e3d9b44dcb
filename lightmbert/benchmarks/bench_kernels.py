"""python -m lightmbert.benchmarks.bench_kernels [--dtype bf16] [--ops a,b] [--providers a,b] [--reps 20] [--tiny]

Forward + backward of every distillation loss, per provider, at mBERT shapes:
  eager       the torch reference computing in the input dtype (what plain PyTorch code does)
  eager_fp32  the torch reference upcasting to fp32 (our CPU fallback and test oracle)
  compile     torch.compile of `eager`
  ours        the Triton kernels (kernels.*, impl="triton")
  liger       Liger-Kernel's LigerFusedLinearJSD with beta = 0 (forward KL; fused_linear_kl
              only; `pip install -e .[bench]`)
Before timing, every provider's loss is checked against eager_fp32 (relative tolerance: fp32
1e-4, fp16 5e-3, bf16 2e-2); a provider that disagrees is reported, not timed. Timing: the
median of --reps (≥ 20) CUDA-event-timed reps after 3 warm-ups, with the L2 cache flushed
(a 256 MiB write) before each rep. Peak memory: the allocator's peak above what was allocated
before the provider ran, charged to that provider alone. Memory-bound losses (hidden_mse,
attention_map_mse) also report achieved GB/s against their minimal traffic (5 tensor passes)
and its share of the device-to-device copy bandwidth measured in the same run;
the compute-bound ones report TFLOP/s against their FLOP floor, and that as % of the device's
dense bf16 peak (benchmarks/device.py; blank for fp32, unknown devices and the CPU):
fused_linear_kl 8·N·V·d (the two logit GEMMs and the two gradient GEMMs), the attention losses
2·B·H·L²·(D_s + D_t) for both models' QKᵀ + 4·B·H·L²·D_s for dQ and dK (recomputed scores not
counted: the floor, not what the kernels execute).
Prints a table and writes CSV — after every row, so a run stopped at a time limit keeps the
rows it finished. `--tiny`: small shapes on CPU (Triton interpreter), a smoke test of the
script itself — its timings mean nothing.

Shapes (GPU): B=32, H=12, D=64, L ∈ {128, 512}; hidden 768; fused-linear N ∈ {4096, 16384},
d = 768, V = 119,547 (mBERT's vocabulary).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from .device import peak_bf16_tflops
from .report import report, write_csv

OPS = ("attention_score_mse", "attention_prob_kl", "attention_map_mse", "hidden_mse", "fused_linear_kl")
PROVIDERS = ("eager", "eager_fp32", "compile", "ours", "liger")
TOL = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 2e-2}
T = 2.0  # logit-KD temperature


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="bf16", choices=list(TOL))
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    ap.add_argument("--providers", default=",".join(PROVIDERS), help=f"subset of {','.join(PROVIDERS)}")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test with small shapes")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    ops, provs = args.ops.split(","), args.providers.split(",")
    bad = [o for o in ops if o not in OPS] + [p for p in provs if p not in PROVIDERS]
    if bad:
        ap.error(f"unknown op/provider {bad}: ops {OPS}, providers {PROVIDERS}")
    if args.tiny:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    from lightmbert import kernels
    from lightmbert.kernels import reference as R

    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        print("bench_kernels: no CUDA device; use --tiny for a CPU smoke run", file=sys.stderr)
        return 2
    dev = "cuda" if cuda else "cpu"
    dname = args.dtype if cuda else "fp32"  # the interpreter's bf16 dot is wrong
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dname]
    reps = max(args.reps, 20) if cuda else 2
    g = torch.Generator(device=dev).manual_seed(0)
    flush = torch.empty(1 << 28, dtype=torch.uint8, device=dev) if cuda else None

    def rand(*shape, scale=1.0, grad=False):
        return (torch.randn(*shape, device=dev, generator=g) * scale).to(dtype).requires_grad_(grad)

    def copy_bandwidth() -> float:
        if not cuda:
            return float("nan")
        a = torch.empty(1 << 28, device=dev, dtype=torch.uint8)
        b = torch.empty_like(a)
        b.copy_(a)
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(20):
            b.copy_(a)
        e.record()
        torch.cuda.synchronize()
        return 2 * 20 * a.numel() / (s.elapsed_time(e) / 1e3) / 1e9  # read + write

    def timed(loss_fn, inputs) -> tuple[float, float]:
        """(median ms of forward + backward, peak MiB above the starting allocation)."""
        def step():
            for x in inputs:
                x.grad = None
            loss_fn().backward()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(3):
            step()
        times = []
        for _ in range(reps):
            if cuda:
                flush.zero_()  # evict the inputs from L2: every rep reads them from HBM
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
        mem = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else float("nan")
        for x in inputs:
            x.grad = None
        return statistics.median(times), mem

    copy_gbs = copy_bandwidth()
    esz = torch.tensor([], dtype=dtype).element_size()
    B, H, D = (32, 12, 64) if cuda else (2, 2, 16)
    rows = []
    device = torch.cuda.get_device_name() if cuda else "CPU (Triton interpreter; timings meaningless)"
    peak = peak_bf16_tflops(device) if cuda and dname != "fp32" else None  # tensor-core peak: half types
    csv_path = args.out / ("bench_kernels_tiny.csv" if args.tiny else f"bench_kernels_{dname}.csv")
    extra = {"device": device, "dtype": dname, "copy_gbs": round(copy_gbs, 1), "peak_tflops": peak or ""}

    def run(op, shape, impls: dict, inputs, bytes_moved=None, flops=None):
        """Check every provider's loss against eager_fp32, then time the ones that agree."""
        with torch.no_grad():
            want = impls["eager_fp32"]().item() if "eager_fp32" in impls else None
        for name in [p for p in provs if p in impls]:
            row = dict(op=op, shape=shape, provider=name, loss="", rel_err="", ms="", peak_mib="",
                       gbs="", pct_copy="", tflops="", pct_peak="")
            try:
                got = impls[name]().item()
                err = abs(got - want) / max(abs(want), 1e-12) if want is not None else 0.0
                row.update(loss=f"{got:.6g}", rel_err=f"{err:.1e}")
                if err > TOL[dname]:
                    row["ms"] = "MISMATCH"  # not timed: a wrong answer is not a fast one
                else:
                    ms, peak_mib = timed(impls[name], inputs)
                    row.update(ms=round(ms, 3), peak_mib=round(peak_mib, 1))
                    if bytes_moved:
                        bw = bytes_moved / (ms / 1e3) / 1e9
                        row.update(gbs=round(bw, 1), pct_copy=round(100 * bw / copy_gbs, 1) if cuda else "")
                    if flops:
                        tf = flops / (ms / 1e3) / 1e12
                        row.update(tflops=float(f"{tf:.3g}"), pct_peak=round(100 * tf / peak, 1) if peak else "")
            except Exception as e:  # OOM, a compile failure, a provider's own error: report it
                row["ms"] = f"{type(e).__name__}"
                print(f"{op} / {name}: {type(e).__name__}: {e}", file=sys.stderr)
                if cuda:
                    torch.cuda.empty_cache()
            rows.append(row)
            write_csv(rows, csv_path, extra)

    def impls_for(op, *a, liger=None, **kw):
        ref = getattr(R, op)
        out = {"eager": lambda: ref(*a, compute_dtype=dtype, **kw),
               "eager_fp32": lambda: ref(*a, compute_dtype=torch.float32, **kw),
               "ours": lambda: getattr(kernels, op)(*a, impl="triton", **kw)}
        if cuda:
            compiled = torch.compile(ref)
            out["compile"] = lambda: compiled(*a, compute_dtype=dtype, **kw)
        if liger is not None:
            out["liger"] = liger
        return out

    for L in ((128, 512) if cuda else (37,)):
        mask = torch.ones(B, L, device=dev, dtype=torch.long)
        mask[: B // 2, L - L // 4:] = 0
        q = [rand(B, H, L, D, grad=True), rand(B, H, L, D, grad=True)]
        t = [rand(B, H, L, D), rand(B, H, L, D)]
        for op in ("attention_score_mse", "attention_prob_kl"):
            if op in ops:
                run(op, f"B{B} H{H} L{L} D{D}", impls_for(op, q[0], q[1], t[0], t[1], mask), q,
                    flops=2 * B * H * L * L * (D + D) + 4 * B * H * L * L * D)
        if "attention_map_mse" in ops:
            s_map, t_map = rand(B, H, L, L, grad=True), rand(B, H, L, L)
            run("attention_map_mse", f"B{B} H{H} L{L}", impls_for("attention_map_mse", s_map, t_map, mask),
                [s_map], bytes_moved=5 * s_map.numel() * esz)
            del s_map, t_map
        del q, t
    if "hidden_mse" in ops:
        L, d = (512, 768) if cuda else (37, 45)
        s_h, t_h = rand(B, L, d, grad=True), rand(B, L, d)
        mask = torch.ones(B, L, device=dev, dtype=torch.long)
        run("hidden_mse", f"B{B} L{L} d{d}", impls_for("hidden_mse", s_h, t_h, mask), [s_h],
            bytes_moved=5 * s_h.numel() * esz)
        del s_h, t_h
    if "fused_linear_kl" in ops:
        V, d = (119547, 768) if cuda else (1003, 24)
        jsd = None
        if "liger" in provs:
            try:
                from liger_kernel.transformers.fused_linear_jsd import LigerFusedLinearJSD
                jsd = LigerFusedLinearJSD(jsd_beta=0.0, temperature=T)  # beta 0: forward KL(t ‖ s)
            except ImportError:
                print("bench_kernels: liger-kernel not installed (pip install -e .[bench]); no liger row",
                      file=sys.stderr)
        for N in ((4096, 16384) if cuda else (41,)):
            s_h, s_w = rand(N, d, grad=True), rand(V, d, scale=0.02, grad=True)
            t_h, t_w = rand(N, d), rand(V, d, scale=0.02)
            # Liger's loss is the mean KL without our T² factor (checked against eager_fp32)
            liger = (lambda: jsd(s_h, s_w, t_h, t_w, None) * T * T) if jsd is not None else None
            run("fused_linear_kl", f"N{N} d{d} V{V}",
                impls_for("fused_linear_kl", s_h, s_w, t_h, t_w, temperature=T, liger=liger), [s_h, s_w],
                flops=8 * N * V * d)
            del s_h, s_w, t_h, t_w

    print(f"\nbench_kernels on {device}, dtype {dname}, copy bandwidth {copy_gbs:.0f} GB/s, "
          f"median of {reps} reps, L2 flushed" + (f", bf16 peak {peak:.0f} TFLOP/s" if peak else ""))
    report(rows, csv_path, extra=extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
