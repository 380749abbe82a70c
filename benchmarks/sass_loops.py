"""The loops of the v2 attention kernels' sm_90 SASS (offline: Triton + ptxas/cuobjdump, no GPU), per launch variant:
instructions per loop body and its commonest opcodes. Session 21 read the RBF window's scratch staging off these
(``E2F_V2_PHI_SCR`` forward / backward recompute, ``E2F_V2_BWD_DD_SCR`` backward d/dd) before timing it on the GPU.
Last, the radial-table forward's registers, spills and CTAs per SM under a 64 / 128-register cap at each size (session
21's 64-register default for the bundled model's table forward, undone in session 22).

    python benchmarks/sass_loops.py > benchmarks/results/sass_loops_s21.txt
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels import _compile_report as CR, attention_triton_v2 as v2  # noqa: E402

WIN = 32        # the RBF window of nb = 256 at the official centres (``rbf_window``)


def main():
    for size in ("v15", "appA"):
        sizes = CR.SIZES3[size]
        C, H, D, nb, HID, K = sizes
        for kind in ("fwd", "bwd"):
            cfg = v2.launch_config(H, HID, nb, K, kind)
            variants = [dict(PHI_SCR=False), dict(PHI_SCR=True)]
            if kind == "bwd":
                variants.append(dict(PHI_SCR=True, DD_SCR=True))
            for var in variants:
                extra = dict(var, **({"SU": cfg["SU"]} if kind == "fwd" else {}))
                consts = CR._launch_consts(kind, cfg, sizes, 1 if kind == "fwd" else 0, WIN, **extra)
                fn = v2._attn_fwd_kernel_v2 if kind == "fwd" else v2._attn_bwd_kernel_v2
                r = CR.compile_kernel(fn, consts, cfg["num_warps"], cfg["maxnreg"], loops=True)
                print(f"{size} {kind} {var}: {r['regs']} registers, {r['spills']} spilled floats per thread")
                for j, i, ops in r["loops"]:
                    top = " ".join(f"{op}:{n}" for op, n in sorted(ops.items(), key=lambda x: -x[1])[:8])
                    print(f"  loop at {j:5d}: {i - j + 1:5d} instructions  {top}")
                sys.stdout.flush()
    for size in ("bundled", "v15", "appA"):
        sizes = CR.SIZES3[size]
        C, H, D, nb, HID, K = sizes
        cfg = v2.launch_config(H, HID, nb, K, "fwd", table=True)
        consts = CR._launch_consts("fwd", cfg, sizes, 1, 0, TABLE=True)
        for cap in (64, 128):
            r = CR.compile_kernel(v2._attn_fwd_kernel_v2, consts, cfg["num_warps"], cap)
            print(f"{size} table fwd, cap {cap} (default {cfg['maxnreg']}): {r['regs']} registers, {r['spills']} spilled "
                  f"floats per thread, {r['blocks_per_sm']} CTAs per SM")


if __name__ == "__main__":
    main()
