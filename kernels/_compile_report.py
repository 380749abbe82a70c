"""Compile the fused attention and edge-degree kernels for sm_90 on a machine WITHOUT a GPU and report
registers, spills and shared memory (v1 vs v2).

    python -m kernels._compile_report [--quick] [--edge]   (--edge: only the edge-degree kernels)
    python -m kernels._compile_report --gpu [N ...]    (on a GPU machine: v1 vs v2 check + timing)
    python -m kernels._compile_report --gpu --check-only   (the correctness check alone)
    python -m kernels._compile_report --gpu --edge [N ...] (edge-degree v1 vs v2 only: check + timing)
    python -m kernels._compile_report --bwd-variants      (the attention backward variants DR_ACC / DU_BCAST)
    python -m kernels._compile_report --agg-modes         (the aggregation modes tile / stream / split)
    python -m kernels._compile_report --stream-groups     (the streamed forward's edges per step, SG)
    python -m kernels._compile_report --maxnreg           (the default launches under a register cap)

Triton 3.6 compiles to PTX without a driver; the bundled ``ptxas -v`` then gives the register count and the
local-memory (stack) size.  ``spills`` below is stack bytes / 4, which is what Triton reports as
``n_spills`` on a GPU (CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES / 4); the spill store/load byte counts are from
ptxas.  Pointer arguments are specialised as 16-byte aligned, as a real launch with torch tensors does.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from kernels import attention_triton as v1, attention_triton_v2 as v2
    from kernels import edge_degree_triton as ed1, edge_degree_triton_v2 as ed2
else:
    from . import attention_triton as v1, attention_triton_v2 as v2
    from . import edge_degree_triton as ed1, edge_degree_triton_v2 as ed2

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
FLOAT_SCALARS = {"gamma", "cutoff", "sm_scale", "scale", "th"}
INT_SCALARS = {"N", "n_blocks", "nprog", "tP", "tM"}
INT_PTRS = {"row_ptr", "src", "perm", "seg"}
SMEM_PER_SM = 228 * 1024   # H100 / H200: 228 KB shared memory per SM (227 KB usable per block)


def compile_kernel(fn, consts: dict, num_warps: int, maxnreg: int | None = None, sass_ops=(), loops=False) -> dict:
    """ptxas -v of ``fn`` for sm_90a: regs, spills, shared memory, CTAs per SM; with ``sass_ops``, also how many
    SASS instructions of each of those opcodes the cubin holds (cuobjdump), under "sass"; with ``loops``, under
    "loops" every loop of the SASS (a backward branch) as (first, last instruction index, {opcode: count})."""
    # constexpr parameters the caller leaves out take their defaults, as at a launch
    consts = dict({p.name: p.default for p in fn.params if p.is_constexpr and p.has_default}, **consts)
    sig = {}
    for n in fn.arg_names:
        if n in consts:
            sig[n] = "constexpr"
        elif n in FLOAT_SCALARS:
            sig[n] = "fp32"
        elif n in INT_SCALARS:
            sig[n] = "i32"
        elif n in INT_PTRS:
            sig[n] = "*i64"
        elif n in ("tslot", "tslot_t", "tslot_s"):
            sig[n] = "*i32"
        else:
            sig[n] = "*fp32"
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n, ty in sig.items() if ty.startswith("*")}
    t0 = time.time()
    ck = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                        target=GPUTarget("cuda", 90, 32),
                        options=dict(num_warps=num_warps, **({"maxnreg": maxnreg} if maxnreg else {})))
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ck.asm["ptx"])
    try:
        log = subprocess.run([PTXAS, "-v", "--gpu-name=sm_90a", f.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    finally:
        os.unlink(f.name)
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    stack = int(re.search(r"(\d+) bytes stack frame", log).group(1))
    st, ld = (int(x) for x in re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log).groups())
    shared = ck.metadata.shared
    threads = 32 * num_warps
    blocks_regs = 65536 // max(1, regs * threads)
    blocks_smem = SMEM_PER_SM // max(1, shared + 1024) if shared else 32
    r = dict(regs=regs, spills=stack // 4, spill_st=st, spill_ld=ld, shared=shared,
             blocks_per_sm=min(blocks_regs, blocks_smem, 2048 // threads), secs=time.time() - t0)
    if sass_ops or loops:
        with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
            f.write(ck.asm["cubin"])
        try:
            sass = subprocess.run([os.path.join(os.path.dirname(PTXAS), "cuobjdump"), "-sass", f.name],
                                  capture_output=True, text=True, check=True).stdout
        finally:
            os.unlink(f.name)
        if sass_ops:
            r["sass"] = {op: sum(op in line for line in sass.splitlines()) for op in sass_ops}
        if loops:
            r["loops"] = sass_loops(sass)
    return r


def sass_loops(sass: str) -> list:
    """The loops of cuobjdump -sass text: for every branch to an earlier instruction, (index of its target, index of
    the branch, {opcode without modifiers or predicate: count}) over the instructions in between."""
    ins = [(int(m.group(1), 16), m.group(2)) for m in
           (re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line) for line in sass.splitlines()) if m]
    index = {a: i for i, (a, _) in enumerate(ins)}
    out = []
    for i, (a, text) in enumerate(ins):
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < a and int(m.group(1), 16) in index:
            j = index[int(m.group(1), 16)]
            ops = {}
            for _, t in ins[j:i + 1]:
                op = re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0]
                ops[op] = ops.get(op, 0) + 1
            out.append((j, i, ops))
    return out


CONFIGS = {  # name: (C, H, D, nb, HID, K)
    "v15": (256, 128, 8, 256, 128, 32),
    "tiny": (32, 16, 4, 64, 32, 32),
}


def v1_runs(name):
    C, H, D, nb, HID, K = CONFIGS[name]
    bn = min(64, triton.next_power_of_2(nb))
    for nw in (8,) if name == "v15" else (4,):
        consts = dict(nb=nb, C=C, H=H, D=D, HID=HID, BLOCK_E=K, BLOCK_NB=bn, PREC="ieee", SMOOTH=False)
        yield f"v1 fwd {name} BLOCK_E={K} nw={nw}", v1._attn_fwd_kernel, consts, nw
        yield f"v1 bwd {name} BLOCK_E={K} nw={nw}", v1._attn_bwd_kernel, consts, nw


def v2_runs(name, variants):
    C, H, D, nb, HID, K = CONFIGS[name]
    for bt, hb, kc, nw, prec in variants:
        hb, kc = min(hb, H), min(kc, HID)
        consts = dict(nb=nb, C=C, H=H, D=D, HID=HID, BLOCK_T=bt, BLOCK_E=K, BLOCK_NB=min(kc, nb),
                      HB=hb, KC=kc, PREC=prec, SMOOTH=False, PERM=False)
        tag = f"{name} BLOCK_T={bt} BLOCK_E={K} HB={hb} KC={kc} nw={nw} {prec}"
        yield f"v2 fwd {tag}", v2._attn_fwd_kernel_v2, dict(consts, SCR_STRIDE=_v2_stride("fwd", 0, consts)), nw
        yield f"v2 bwd {tag}", v2._attn_bwd_kernel_v2, dict(consts, DR_ACC=False, DU_BCAST=False,
                                                            SCR_STRIDE=_v2_stride("bwd", 0, consts)), nw


def _v2_stride(kind, agg, consts):
    """The scratch stride the host would pass (``attention_triton_v2._scratch_floats``)."""
    return v2._scratch_floats(kind, agg, consts["BLOCK_T"] * consts["BLOCK_E"], consts["HID"], consts["H"],
                              bool(consts.get("DX2_SCR")), bool(consts.get("R_SCR")))


#: the bundled model's, V1.5's and the App. A setting's attention sizes: (C, H, D, nb, HID, K)
SIZES3 = {"bundled": (64, 16, 4, 64, 32, 64), "v15": CONFIGS["v15"], "appA": (256, 16, 8, 256, 128, 64)}


def _launch_consts(kind, cfg, sizes, agg, win, **extra):
    """The constexprs of a default v2 launch (``launch_config`` tiles ``cfg``, exact dots, official softmax,
    degree buckets on) for ``sizes`` = (C, H, D, nb, HID, K), with aggregation mode ``agg``, RBF window ``win`` and
    ``extra`` constexprs, and the scratch stride the host would pass."""
    C, H, D, nb, HID, K = sizes
    consts = dict(nb=nb, C=C, H=H, D=D, HID=HID, BLOCK_T=cfg["BLOCK_T"], BLOCK_E=K, BLOCK_NB=cfg["BLOCK_NB"],
                  HB=cfg["HB"], KC=cfg["KC"], PREC="ieee", SMOOTH=False, PERM=True, AGG=agg, RBF_WIN=win, **extra)
    consts.setdefault("PHI_SCR", bool(cfg.get("PHI_SCR", False)))   # the window's basis values in scratch (session 21)
    consts.setdefault("QKL", v2.qk_layout())     # the q / k layout a launch would use ([N, D, H] since session 13)
    if kind == "fwd":
        consts.setdefault("R_SCR", bool(cfg.get("R_SCR", False)))     # the default since session 22
    if kind == "bwd":
        consts.setdefault("DR_ACC", False)
        consts.setdefault("DU_BCAST", False)
        consts.setdefault("DX2_SCR", bool(cfg.get("DX2_SCR", False)))     # the default since session 11
        consts.setdefault("DD_SCR", bool(cfg.get("DD_SCR", False)))       # default on since session 22
    consts["SCR_STRIDE"] = _v2_stride(kind, agg, consts)
    return consts


def _cells(r: dict, num_warps: int | None = None) -> str:
    """The common tail of a report row: regs | spills | shared B | CTA/SM (| warps/SM with ``num_warps``) |."""
    cells = [r["regs"], r["spills"], r["shared"], r["blocks_per_sm"]]
    if num_warps is not None:
        cells.append(r["blocks_per_sm"] * num_warps)
    return " | ".join(str(c) for c in cells) + " |"


def edge_runs(name, quick=False):
    """Edge-degree kernels, v1 (launch defaults of edge_degree_triton) and v2 (launch_config defaults first,
    then variants), at the CONFIGS shapes (C, nb, HID, K = BLOCK_E)."""
    C, _H, _D, nb, HID, K = CONFIGS[name]
    nw1 = 4 if K * HID <= 2048 else 8
    c1 = dict(nb=nb, C=C, HID=HID, BLOCK_E=K, BLOCK_NB=min(64, triton.next_power_of_2(nb)), BLOCK_C=min(64, C),
              PREC="ieee")
    yield f"ed v1 fwd {name} BLOCK_E={K} BLOCK_C={c1['BLOCK_C']} nw={nw1}", ed1._edge_deg_fwd_kernel, c1, nw1
    yield f"ed v1 bwd {name} BLOCK_E={K} BLOCK_C={c1['BLOCK_C']} nw={nw1}", ed1._edge_deg_bwd_kernel, c1, nw1
    d = ed2.launch_config(HID, nb, K)
    variants = [(d["KC"], d["BLOCK_NB"], d["num_warps"], d["G_FUSED"])]
    if name == "v15" and not quick:
        variants += [(16, 16, 4, False), (32, 32, 4, False), (16, 16, 8, False), (32, 32, 8, True),
                     (16, 16, 4, True)]
    for kc, bnb, nw, gf in variants:
        kc, bnb = min(kc, HID), max(16, min(bnb, triton.next_power_of_2(nb)))
        c2 = dict(nb=nb, HID=HID, BLOCK_E=K, BLOCK_NB=bnb, KC=kc, PREC="ieee", PERM=False)
        tag = f"{name} BLOCK_E={K} KC={kc} BLOCK_NB={bnb} nw={nw}"
        if not gf:
            yield f"ed v2 fwd {tag}", ed2._edge_deg_fwd_kernel_v2, c2, nw
        yield f"ed v2 bwd {tag} G_FUSED={int(gf)}", ed2._edge_deg_bwd_kernel_v2, dict(c2, G_FUSED=gf), nw


def gpu_edge_main(sizes, device="cuda", check_n=2000):
    """On a CUDA machine: edge-degree v1 / v2 vs the float64 reference (h and d/dvec, gate 1e-5) at N = 2000
    (V1.5 shapes, K = 32, degrees 0..32 incl. atoms with 0 / 1 edges), then do_bench medians of v1 / v2
    (fwd, fwd+bwd w.r.t. vec, fixed degree K) and the launched kernels' regs / spills."""
    import torch
    from triton.testing import do_bench
    if __package__ in (None, ""):
        from kernels._testing import make_case, V15
        from kernels.attention_reference import FCParams, rbf_gamma
        from kernels.edge_degree_reference import edge_degree_reference
    else:
        from ._testing import make_case, V15
        from .attention_reference import FCParams, rbf_gamma
        from .edge_degree_reference import edge_degree_reference
    C, nb, hid, T, K = V15["C"], V15["nb"], V15["hid"], V15["T"], 32
    rel = lambda a, b: ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()
    impls = (("v1", ed1.edge_degree_triton), ("v2", ed2.edge_degree_triton_v2))

    def inputs(N, seed, dtype, **kw):
        case = make_case(N, K, **V15, device=device, seed=seed, dtype=dtype, **kw)
        g = torch.Generator().manual_seed(seed + 100)
        T0 = torch.randn(N, T, generator=g, dtype=torch.float64).to(device, dtype)
        S0 = torch.randn(N, T, generator=g, dtype=torch.float64).to(device, dtype)
        params = [FCParams(*(x.to(device, dtype) for x in FCParams.random(nb, T, hid, C, dtype=torch.float64,
                                                                         generator=g))) for _ in range(3)]
        return [case["row_ptr"], case["src"], case["vec"].clone().requires_grad_(True), T0, S0, params,
                case["mu"], rbf_gamma(case["cutoff"], nb), case["cutoff"]]

    a32, a64 = inputs(check_n, 1, torch.float32), inputs(check_n, 1, torch.float64)
    hr = edge_degree_reference(*a64)
    G = torch.randn(hr.shape, device=device, dtype=torch.float64)
    gr, = torch.autograd.grad(hr, [a64[2]], G)
    for impl, fn in impls:
        h = fn(*a32, max_degree=K)
        gk, = torch.autograd.grad(h, [a32[2]], G.float())
        errs = [rel(h, hr), rel(gk, gr)]
        print(f"check edge-degree {impl} N={check_n} rel h,dvec: {['%.1e' % e for e in errs]} "
              f"{'PASS' if max(errs) <= 1e-5 and torch.isfinite(h).all() else 'FAIL'}", flush=True)
    for N in sizes:
        args = inputs(N, 2, torch.float32, fixed_degree=True, special_rows=False)
        for impl, fn in impls:
            f = lambda: fn(*args, max_degree=K)
            h = f()
            G = torch.randn_like(h)
            fb = lambda: torch.autograd.grad(f(), [args[2]], G)
            t_f, t_fb = do_bench(f), do_bench(fb)
            print(f"bench edge-degree V1.5 K={K} N={N} {impl}: fwd {t_f:.3f} ms, fwd+bwd {t_fb:.3f} ms; "
                  f"{v1.compile_info()}", flush=True)
            v1._LAST_COMPILED.clear()
            del h


def gpu_main(sizes):
    """On a CUDA machine: v1 / v2 vs float64 reference (rel. errors, gate 1e-5) at N = 2000 for v15 and appA
    (both softmax modes), then do_bench medians of v1 / v2 (fwd, fwd+bwd) and the launched kernels' regs /
    spills (official softmax)."""
    import torch
    from triton.testing import do_bench
    if __package__ in (None, ""):
        from kernels._testing import make_case, args_of, V15
        from kernels.attention_reference import attention_reference
    else:
        from ._testing import make_case, args_of, V15
        from .attention_reference import attention_reference
    settings = {"v15": (32, V15), "appA": (64, dict(V15, H=16))}
    rel = lambda a, b: ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()
    for name, (K, cfg) in settings.items():
        c32 = make_case(2000, K, **cfg, device="cuda", seed=1)
        c64 = make_case(2000, K, **cfg, device="cuda", seed=1, dtype=torch.float64)
        a32, a64 = list(args_of(c32)), list(args_of(c64))
        for n in (2, 3, 4, 5):
            a32[n] = a32[n].clone().requires_grad_(True)
            a64[n] = a64[n].clone().requires_grad_(True)
        for softmax in ("official", "smooth"):
            Ur = attention_reference(*a64, softmax=softmax)
            G = torch.randn(Ur.shape, device="cuda", dtype=torch.float64)
            gr = torch.autograd.grad(Ur, [a64[n] for n in (2, 3, 4, 5)], G)
            for impl, fn in (("v1", v1.attention_triton), ("v2", v2.attention_triton_v2)):
                U = fn(*a32, max_degree=K, softmax=softmax)
                gt = torch.autograd.grad(U, [a32[n] for n in (2, 3, 4, 5)], G.float())
                errs = [rel(U, Ur)] + [rel(a, b) for a, b in zip(gt, gr)]
                print(f"check {name} {impl} {softmax} N=2000 rel U,dvec,dq,dk,dv: {['%.1e' % e for e in errs]} "
                      f"{'PASS' if max(errs) <= 1e-5 and torch.isfinite(U).all() else 'FAIL'}", flush=True)
    for name, (K, cfg) in settings.items():
        for N in sizes:
            case = make_case(N, K, **cfg, device="cuda", seed=2, fixed_degree=True, special_rows=False)
            args = list(args_of(case))
            for n in (2, 3, 4, 5):
                args[n] = args[n].clone().requires_grad_(True)
            for impl, fn, mod in (("v1", v1.attention_triton, v1), ("v2", v2.attention_triton_v2, v2)):
                for tf32 in (False, True):
                    f = lambda: fn(*args, allow_tf32=tf32, max_degree=K)
                    U = f()
                    G = torch.randn_like(U)
                    fb = lambda: torch.autograd.grad(f(), [args[n] for n in (2, 3, 4, 5)], G)
                    t_f, t_fb = do_bench(f), do_bench(fb)
                    print(f"bench {name} N={N} {impl} tf32={tf32}: fwd {t_f:.3f} ms, fwd+bwd {t_fb:.3f} ms; "
                          f"{mod.compile_info()}", flush=True)
                    del U


def bwd_variants_main():
    """Registers / spills of the v2 attention backward variants (DR_ACC, DU_BCAST) at V1.5, K = 32, for the
    current default backward tiles (BT1 HB32 KC32, 4 warps) and the spill-free HB16 KC16 ones."""
    C, H, D, nb, HID, K = CONFIGS["v15"]
    print(f"# sm_90a (ptxas -v, no GPU), v2 attention backward variants, V1.5 (K = 32), triton {triton.__version__}")
    print("# spills = stack bytes / 4 (Triton n_spills)")
    for bt, hb, kc, nw in ((1, 32, 32, 4), (1, 16, 16, 4)):
        for acc, bc in ((False, False), (True, False), (False, True), (True, True)):
            consts = dict(nb=nb, C=C, H=H, D=D, HID=HID, BLOCK_T=bt, BLOCK_E=K, BLOCK_NB=min(kc, nb), HB=hb,
                          KC=kc, PREC="ieee", SMOOTH=False, DR_ACC=acc, DU_BCAST=bc, PERM=False)
            consts["SCR_STRIDE"] = _v2_stride("bwd", 0, consts)
            r = compile_kernel(v2._attn_bwd_kernel_v2, consts, nw)
            print(f"bwd BT{bt} HB{hb} KC{kc} W{nw} DR_ACC={int(acc)} DU_BCAST={int(bc)}: regs {r['regs']} "
                  f"spills {r['spills']} shared {r['shared']} CTA/SM {r['blocks_per_sm']}", flush=True)


def agg_modes_main():
    """Registers / spills of the v2 attention kernels per aggregation mode (E2F_V2_{FWD,BWD}_AGG: 0 tile,
    1 stream, 3 split) at the bundled model's sizes (K = 64, the water tile) and V1.5's (K = 32), with the
    launch_config default tiles of each; the forward also with 4 warps."""
    from .attention_triton_v2 import launch_config
    sizes = {"bundled": (64, 16, 4, 64, 32, 64), "v15": CONFIGS["v15"]}
    print(f"# sm_90a (ptxas -v, no GPU), v2 attention per aggregation mode, triton {triton.__version__}")
    print("# spills = stack bytes / 4 (Triton n_spills); PERM (degree buckets) on, as launched by default")
    print("| sizes | kernel | AGG | tiles | regs | spills | shared B | CTA/SM |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    names = {0: "tile", 1: "stream", 3: "split"}
    for name, (C, H, D, nb, HID, K) in sizes.items():
        for kind, fn, modes in (("fwd", v2._attn_fwd_kernel_v2, (0, 1)),
                                ("bwd", v2._attn_bwd_kernel_v2, (0, 1, 3))):
            cfg = launch_config(H, HID, nb, K, kind)
            warps = (cfg["num_warps"], 4) if kind == "fwd" and cfg["num_warps"] != 4 else (cfg["num_warps"],)
            for agg in modes:
                for nw in warps:
                    r = compile_kernel(fn, _launch_consts(kind, cfg, (C, H, D, nb, HID, K), agg, 0), nw)
                    print(f"| {name} | {kind} | {names[agg]} | BT{cfg['BLOCK_T']} HB{cfg['HB']} KC{cfg['KC']} "
                          f"W{nw} | {_cells(r)}", flush=True)


def stream_groups_main():
    """Registers / spills of the streamed forward (AGG 1) per group size SG (E2F_V2_FWD_STREAM_G: edges per step
    of ``_stream_aggregate``) at the bundled, V1.5 and App. A sizes, default tiles, the RBF window as launched."""
    from .attention_triton_v2 import launch_config
    sizes = SIZES3
    print(f"# sm_90a (ptxas -v, no GPU), v2 attention forward, streamed aggregation per SG, triton {triton.__version__}")
    print("| sizes | SG | tiles | RBF_WIN | regs | spills | shared B | CTA/SM |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for name, (C, H, D, nb, HID, K) in sizes.items():
        cfg = launch_config(H, HID, nb, K, "fwd")
        win = 32 if nb >= 128 else 0
        for sg in (1, 2, 4, 8):
            consts = _launch_consts("fwd", cfg, (C, H, D, nb, HID, K), 1, win, SG=sg)
            r = compile_kernel(v2._attn_fwd_kernel_v2, consts, cfg["num_warps"])
            print(f"| {name} | {sg} | BT{cfg['BLOCK_T']} HB{cfg['HB']} KC{cfg['KC']} W{cfg['num_warps']} | {win} | "
                  f"{_cells(r)}", flush=True)
    print("\n# the streamed (AGG 1) and split (AGG 3) backward per SG (E2F_V2_BWD_STREAM_G)")
    print("| sizes | AGG | SG | tiles | regs | spills | shared B | CTA/SM |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for name, (C, H, D, nb, HID, K) in sizes.items():
        cfg = launch_config(H, HID, nb, K, "bwd")
        win = 32 if nb >= 128 else 0
        for agg in (1, 3):
            for sg in (1, 2, 4):
                consts = _launch_consts("bwd", cfg, (C, H, D, nb, HID, K), agg, win, SG=sg)
                r = compile_kernel(v2._attn_bwd_kernel_v2, consts, cfg["num_warps"])
                print(f"| {name} | {'stream' if agg == 1 else 'split'} | {sg} | BT{cfg['BLOCK_T']} HB{cfg['HB']} "
                      f"KC{cfg['KC']} W{cfg['num_warps']} | {_cells(r)}", flush=True)


def maxnreg_main():
    """Registers / spills / CTAs per SM of the default v2 attention launches under a register cap (maxnreg:
    E2F_V2_{FWD,BWD}_MAXNREG) at the bundled, V1.5 and App. A sizes."""
    from .attention_triton_v2 import launch_config
    print(f"# sm_90a (ptxas -v, no GPU), v2 attention default launches under a register cap, triton {triton.__version__}")
    print("| sizes | kernel | tiles | maxnreg | regs | spills | shared B | CTA/SM | warps/SM |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for name, sizes in SIZES3.items():
        C, H, D, nb, HID, K = sizes
        win = 32 if nb >= 128 else 0
        for kind, fn in (("fwd", v2._attn_fwd_kernel_v2), ("bwd", v2._attn_bwd_kernel_v2)):
            cfg = launch_config(H, HID, nb, K, kind)
            consts = _launch_consts(kind, cfg, sizes, cfg["AGG"], win)
            for cap in (None, 168, 128, 96):
                r = compile_kernel(fn, consts, cfg["num_warps"], cap)
                print(f"| {name} | {kind} | BT{cfg['BLOCK_T']} HB{cfg['HB']} KC{cfg['KC']} W{cfg['num_warps']} | "
                      f"{cap or '-'} | {_cells(r, cfg['num_warps'])}", flush=True)


def dx2_scr_main():
    """The default backward launches with and without E2F_V2_BWD_DX2_SCR (dg / dw through scratch, dx2 as one
    K = 2H dot after the head loop) under the default register cap (128) and uncapped."""
    from .attention_triton_v2 import launch_config
    print(f"# sm_90a (ptxas -v, no GPU), v2 attention backward, DX2_SCR off / on, triton {triton.__version__}")
    print("| sizes | tiles | maxnreg | DX2_SCR | regs | spills | shared B | CTA/SM | warps/SM |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for name, sizes in SIZES3.items():
        C, H, D, nb, HID, K = sizes
        cfg = launch_config(H, HID, nb, K, "bwd")
        for cap in (cfg["maxnreg"], None):
            for on in (False, True):
                c = _launch_consts("bwd", cfg, sizes, cfg["AGG"], 32 if nb >= 128 else 0, DX2_SCR=on)
                r = compile_kernel(v2._attn_bwd_kernel_v2, c, cfg["num_warps"], cap)
                print(f"| {name} | BT{cfg['BLOCK_T']} HB{cfg['HB']} KC{cfg['KC']} W{cfg['num_warps']} | "
                      f"{cap or '-'} | {'on' if on else 'off'} | {_cells(r, cfg['num_warps'])}", flush=True)


def _attn_default_launches(kinds=("fwd", "bwd")):
    """(sizes name, kind, kernel, table on, launch config, constexprs) of every default v2 attention launch at the
    SIZES3 sizes, with the edge MLP and with the radial table (whose launch has its own warps; DX2_SCR off)."""
    for name, sizes in SIZES3.items():
        C, H, D, nb, HID, K = sizes
        for kind in kinds:
            fn = v2._attn_fwd_kernel_v2 if kind == "fwd" else v2._attn_bwd_kernel_v2
            for on in (False, True):
                cfg = v2.launch_config(H, HID, nb, K, kind, table=on)
                extra = dict(TABLE=on)
                if kind == "bwd":
                    extra["DX2_SCR"] = cfg["DX2_SCR"] and not on
                yield name, kind, fn, on, cfg, _launch_consts(kind, cfg, sizes, cfg["AGG"], 32 if nb >= 128 else 0,
                                                              **extra)


def table_main():
    """The default v2 attention launches with the edge MLP read from a radial table (TABLE, session 11) beside
    the MLP, under the default register cap: what the table takes out of the kernels' live state."""
    print(f"# sm_90a (ptxas -v, no GPU), v2 attention and edge-degree kernels, edge MLP vs radial table (TABLE), "
          f"triton {triton.__version__}")
    print("| sizes | kernel | tiles | maxnreg | TABLE | regs | spills | shared B | CTA/SM | warps/SM |")
    print("|---|---|---|---:|---|---:|---:|---:|---:|---:|")
    for name, kind, fn, on, cfg, consts in _attn_default_launches():
        r = compile_kernel(fn, consts, cfg["num_warps"], cfg["maxnreg"])
        print(f"| {name} | {kind} | BT{cfg['BLOCK_T']} HB{cfg['HB']} KC{cfg['KC']} W{cfg['num_warps']} | "
              f"{cfg['maxnreg'] or '-'} | {'on' if on else 'off'} | {_cells(r, cfg['num_warps'])}", flush=True)
    # the edge-degree v2 kernels (launch_config defaults, RBF window as launched at nb >= 128)
    for name, sizes in SIZES3.items():
        C, H, D, nb, HID, K = sizes
        cfg = ed2.launch_config(HID, nb, K)
        bnb = max(16, min(cfg["BLOCK_NB"], triton.next_power_of_2(nb)))
        for kind, fn in (("ed fwd", ed2._edge_deg_fwd_kernel_v2), ("ed bwd", ed2._edge_deg_bwd_kernel_v2)):
            for on in (False, True):
                c = dict(nb=nb, HID=HID, BLOCK_E=K, BLOCK_NB=bnb, KC=cfg["KC"], PREC="ieee", PERM=True,
                         RBF_WIN=32 if nb >= 128 else 0, TABLE=on)
                if kind == "ed bwd":
                    c["G_FUSED"] = cfg["G_FUSED"]
                r = compile_kernel(fn, c, cfg["num_warps"], cfg["maxnreg"])
                print(f"| {name} | {kind} | KC{cfg['KC']} W{cfg['num_warps']} | {cfg['maxnreg'] or '-'} | "
                      f"{'on' if on else 'off'} | {_cells(r, cfg['num_warps'])}", flush=True)


def qk_layout_main():
    """The default v2 attention launches with q / k (and dq / dk) in the model's [N, H, D] layout ("hd") and in
    [N, D, H] ("dh", E2F_V2_QK_LAYOUT=dh: contiguous dk atomics), with the edge MLP and with the radial table."""
    print(f"# sm_90a (ptxas -v, no GPU), v2 attention kernels, q / k layout [N, H, D] (hd, E2F_V2_QK_LAYOUT=hd) vs "
          f"[N, D, H] (dh, the default since session 13), edge MLP and radial table (TABLE), default launches; "
          f"triton {triton.__version__}")
    print("| sizes | kernel | TABLE | q / k layout | regs | spills | shared B | CTA/SM | warps/SM |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for name, kind, fn, on, cfg, consts in _attn_default_launches():
        for qkl in (False, True):
            r = compile_kernel(fn, dict(consts, QKL=qkl), cfg["num_warps"], cfg["maxnreg"])
            print(f"| {name} | {kind} | {'on' if on else 'off'} | {'dh' if qkl else 'hd'} | "
                  f"{_cells(r, cfg['num_warps'])}", flush=True)


def atomic_sem_main():
    """The default v2 attention backward with its dv / dk atomics acq_rel (Triton's default, every session before
    12) and relaxed (``attention_triton_v2.atomic_sem``): registers, spills and the SASS fences / cache
    invalidations / atomics they compile to."""
    ops = ("MEMBAR", "CCTL", "ATOMG", "REDG")
    print(f"# sm_90a (ptxas -v and cuobjdump -sass, no GPU), v2 attention backward, default launches, dv / dk atomics "
          f"acq_rel vs relaxed; SASS instruction counts in the unrolled kernel; triton {triton.__version__}")
    print("| sizes | TABLE | atomics | regs | spills | " + " | ".join(ops) + " |")
    print("|---|---|---|---:|---:|" + "---:|" * len(ops))
    for name, kind, fn, on, cfg, consts in _attn_default_launches(("bwd",)):
        for sem in ("acq_rel", "relaxed"):
            r = compile_kernel(fn, dict(consts, ASEM=sem), cfg["num_warps"], cfg["maxnreg"], sass_ops=ops)
            print(f"| {name} | {'on' if on else 'off'} | {sem} | {r['regs']} | {r['spills']} | "
                  + " | ".join(str(r["sass"][o]) for o in ops) + " |", flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--atomic-sem" in argv:
        return atomic_sem_main()
    if "--qk-layout" in argv:
        return qk_layout_main()
    if "--dx2-scr" in argv:
        return dx2_scr_main()
    if "--table" in argv:
        return table_main()
    if "--maxnreg" in argv:
        return maxnreg_main()
    if "--stream-groups" in argv:
        return stream_groups_main()
    if "--bwd-variants" in argv:
        return bwd_variants_main()
    if "--agg-modes" in argv:
        return agg_modes_main()
    edge_only = "--edge" in argv
    if "--gpu" in argv:
        sizes = [] if "--check-only" in argv else ([int(a) for a in argv if a.isdigit()] or [16384, 100000])
        if not edge_only:
            gpu_main(sizes)
        return gpu_edge_main(sizes)
    quick = "--quick" in argv
    runs = []
    # (BLOCK_T, HB, KC, num_warps, precision); the first entry of each list is the default of
    # attention_triton_v2.launch_config (fwd default = first "v2 fwd" line, bwd default = second "v2 bwd")
    v15_variants = [(2, 32, 32, 8, "ieee"), (1, 16, 16, 4, "ieee")] if quick else [
        (2, 32, 32, 8, "ieee"), (1, 16, 16, 4, "ieee"), (1, 32, 32, 4, "ieee"), (1, 32, 32, 8, "ieee"),
        (2, 32, 32, 4, "ieee"), (1, 16, 16, 8, "ieee"), (2, 16, 16, 4, "ieee"), (2, 16, 16, 8, "ieee"),
        (2, 32, 32, 8, "tf32"), (1, 16, 16, 4, "tf32")]
    tiny_variants = [(2, 32, 32, 8, "ieee"), (1, 16, 16, 4, "ieee")]
    for name in ("tiny", "v15"):
        if not edge_only:
            runs += list(v1_runs(name))
            runs += list(v2_runs(name, v15_variants if name == "v15" else tiny_variants))
        if name == "v15" or not quick:
            runs += list(edge_runs(name, quick))
    print(f"triton {triton.__version__}, target sm_90a (ptxas -v); spills = stack bytes / 4 (Triton n_spills)")
    print(f"{'kernel / config':<62} {'regs':>5} {'spills':>6} {'st B':>6} {'ld B':>6} {'shared':>7} {'CTA/SM':>6}")
    for label, fn, consts, nw in runs:
        try:
            r = compile_kernel(fn, consts, nw)
            print(f"{label:<62} {r['regs']:>5} {r['spills']:>6} {r['spill_st']:>6} {r['spill_ld']:>6} "
                  f"{r['shared']:>7} {r['blocks_per_sm']:>6}   ({r['secs']:.0f} s)", flush=True)
        except Exception as exc:  # report and go on
            print(f"{label:<62} FAILED: {type(exc).__name__}: {str(exc)[:200]}", flush=True)


if __name__ == "__main__":
    main()
