"""python -m lightmbert.kernels.compile_check [--arch 90]

Compiles every Triton kernel of this package, in every dtype/variant the launchers use, for
a CUDA target ahead of time — no GPU needed (Triton ships ptxas). The CPU interpreter runs
the kernels' arithmetic but not the compiler's rules (constexpr globals, dot operand types,
loop-carried types ...): this catches those before a cluster job does. Must run without
TRITON_INTERPRET (it is removed from the environment of this process's own run).
"""
from __future__ import annotations

import argparse
import os
import sys


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


def cases():
    """(label, jit function, pointer dtypes, float args, constexprs) for every variant."""
    from . import attention as A
    from . import elementwise as E
    from . import linear_kl as K
    out = []
    floats = {"scale_s", "scale_t", "inv_t", "grad_scale"}
    for dt in ("fp32", "bf16", "fp16"):
        for dt_head in (64, 128):
            base = A.tile_config(dt == "fp32", 64, dt_head)  # what the launcher would choose
            ptr = {**{k: dt for k in ("SQ", "SK", "TQ", "TK")},
                   **{k: "fp32" for k in ("M", "PART", "DQ", "DK", "LSE_S", "LSE_T")}}
            for loss in (A.MSE, A.KL):
                out.append((f"attention._fwd {dt} D_t={dt_head} loss={loss}", A._fwd, ptr, floats,
                            {**base, "LOSS": loss, "WITH_DQ": loss == A.MSE}))
                out.append((f"attention._bwd_dk {dt} D_t={dt_head} loss={loss}", A._bwd_dk, ptr, floats,
                            {**base, "LOSS": loss}))
            out.append((f"attention._bwd_dq {dt} D_t={dt_head}", A._bwd_dq, ptr, floats,
                        {**base, "LOSS": A.KL}))
        for is_map in (False, True):
            for grad in (False, True):
                out.append((f"elementwise._sqdiff_kernel {dt} map={is_map} grad={grad}", E._sqdiff_kernel,
                            {"S": dt, "T": dt, "G": dt, "M": "fp32", "PART": "fp32"}, set(),
                            {"MAP": is_map, "WITH_GRAD": grad, "BLOCK_R": 16, "BLOCK_C": 256}))
        out.append((f"linear_kl._kl_rows {dt}", K._kl_rows, {"ZS": dt, "ZT": dt, "LOSS": "fp32"},
                    floats, {"BLOCK_V": 4096}))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability (90 = Hopper)")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("lightmbert.kernels.compile_check: unset TRITON_INTERPRET (the interpreter compiles nothing)",
              file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    failed = 0
    for label, fn, pointers, floats, constexprs in cases():
        try:
            src = ASTSource(fn=fn, signature=_signature(fn, pointers, floats, constexprs), constexprs=constexprs)
            k = triton.compile(src, target=GPUTarget("cuda", args.arch, 32))
            print(f"ok    {label}: {len(k.asm['cubin'])} bytes of sm_{args.arch} code, "
                  f"{k.metadata.shared} B shared memory")
        except Exception as e:  # report every failing variant, not only the first
            failed += 1
            msg = str(e).strip().splitlines()
            print(f"FAIL  {label}: {type(e).__name__}: {msg[-1] if msg else ''}")
    print(f"{len(cases()) - failed} compiled, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
