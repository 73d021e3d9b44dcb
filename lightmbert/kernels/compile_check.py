"""python -m lightmbert.kernels.compile_check [--arch 90] [--quick]

Compiles every Triton kernel of this package, in every dtype/variant the launchers use, for
a CUDA target ahead of time — no GPU needed (Triton ships ptxas). The CPU interpreter runs
the kernels' arithmetic but not the compiler's rules (constexpr globals, dot operand types,
loop-carried types ...): this catches those before a cluster job does. Must run without
TRITON_INTERPRET (it is removed from the environment of this process's own run).

Variants: fp32, bf16 and fp16 inputs; attention head dims of student × teacher in
{32, 64, 96/128} × {64, 96/128} (96 and 128 share a 128-wide tile, hence one compile) — those
of the GPU tests (64, 128, the relation heads' 32) and of mBERT-size/large models — each with
the warps the launcher picks (tile_config); the element-wise and logit-KL kernels per dtype.
Per variant it prints the shared memory and, from cuobjdump on the cubin, the registers per
thread and the stack/local bytes (spills: the cost a warp count or tile size shows first). --quick: head dims
64 and 128 only.

Against another Triton than the environment's (the GPU image's, say), without touching the
environment: `pip install --no-deps --target /tmp/triton36 triton==3.6.0` and run this with
`PYTHONPATH=/tmp/triton36` (README, "Kernels").
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def _signature(fn, pointers: dict[str, str], floats: set[str], constexprs: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = "*" + pointers[name]
        elif name in floats:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def cases(quick: bool = False):
    """(label, jit function, pointer dtypes, float args, constexprs, options) for every variant."""
    from . import attention as A
    from . import elementwise as E
    from . import linear_kl as K
    out = []
    floats = {"scale_s", "scale_t", "inv_t", "grad_scale"}
    s_dims = (64, 128) if quick else (32, 64, 128)
    t_dims = (64, 128)
    for dt in ("fp32", "bf16", "fp16"):
        for ds in s_dims:
            for dt_head in t_dims:
                cfg = A.tile_config(dt == "fp32", ds, dt_head)  # what the launcher would choose
                opts = {"num_warps": cfg.pop("num_warps")}
                tag = f"{dt} D_s={ds if ds != 128 else '96/128'} D_t={dt_head if dt_head != 128 else '96/128'} " \
                      f"warps={opts['num_warps']}"
                ptr = {**{k: dt for k in ("SQ", "SK", "TQ", "TK")},
                       **{k: "fp32" for k in ("M", "PART", "DQ", "DK", "LSE_S", "LSE_T")}}
                for loss in (A.MSE, A.KL):
                    out.append((f"attention._fwd {tag} loss={loss}", A._fwd, ptr, floats,
                                {**cfg, "LOSS": loss, "WITH_DQ": loss == A.MSE}, opts))
                    out.append((f"attention._bwd_dk {tag} loss={loss}", A._bwd_dk, ptr, floats,
                                {**cfg, "LOSS": loss}, opts))
                out.append((f"attention._bwd_dq {tag}", A._bwd_dq, ptr, floats, {**cfg, "LOSS": A.KL}, opts))
        for is_map in (False, True):
            for grad in (False, True):
                out.append((f"elementwise._sqdiff_kernel {dt} map={is_map} grad={grad}", E._sqdiff_kernel,
                            {"S": dt, "T": dt, "G": dt, "M": "fp32", "PART": "fp32"}, set(),
                            {"MAP": is_map, "WITH_GRAD": grad, "BLOCK_R": 16, "BLOCK_C": 256}, {}))
        out.append((f"linear_kl._kl_rows {dt}", K._kl_rows, {"ZS": dt, "ZT": dt, "LOSS": "fp32"},
                    floats, {"BLOCK_V": 4096}, {}))
    return out


def _cuobjdump() -> str | None:
    """Triton's own cuobjdump, for the register/spill report of the cubin it made."""
    import triton
    p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(p) if p.is_file() else None


def registers(cubin: bytes, tool: str | None) -> str:
    """', N regs, M B local (spills)' of the compiled cubin ('' without cuobjdump)."""
    if not tool:
        return ""
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        r = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(f.name)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", r.stdout)
    return f", {m.group(1)} regs, {int(m.group(2)) + int(m.group(3))} B stack+local (spills)" if m else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability (90 = Hopper)")
    ap.add_argument("--quick", action="store_true", help="head dims 64 and 128 only")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("lightmbert.kernels.compile_check: unset TRITON_INTERPRET (the interpreter compiles nothing)",
              file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    print(f"triton {triton.__version__} ({Path(triton.__file__).parent}), target sm_{args.arch}")
    tool = _cuobjdump()
    failed, todo = 0, cases(args.quick)
    for label, fn, pointers, floats, constexprs, options in todo:
        try:
            src = ASTSource(fn=fn, signature=_signature(fn, pointers, floats, constexprs), constexprs=constexprs)
            k = triton.compile(src, target=GPUTarget("cuda", args.arch, 32), options=options)
            print(f"ok    {label}: {len(k.asm['cubin'])} bytes of sm_{args.arch} code, "
                  f"{k.metadata.shared} B shared memory{registers(k.asm['cubin'], tool)}", flush=True)
        except Exception as e:  # report every failing variant, not only the first
            failed += 1
            msg = str(e).strip().splitlines()
            print(f"FAIL  {label}: {type(e).__name__}: {msg[-1] if msg else ''}", flush=True)
    print(f"{len(todo) - failed} compiled, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
