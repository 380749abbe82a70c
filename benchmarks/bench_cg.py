"""Benchmark: three node-level kernels vs their PyTorch forms: the attention's CG contraction (``kernels.cg_triton``,
opt-in E2F_CG_KERNEL=1), the query / key invariants (``kernels.pairdot_triton``, opt-in E2F_PAIRDOT_KERNEL=1) and
the equivariant RMS norm (``kernels.rmsnorm_triton``, opt-in E2F_RMSNORM_KERNEL=1).

    python benchmarks/bench_cg.py OUT_PREFIX [--sizes v15:10000,v15:100000,bundled:115200] [--device cpu]

(``--device cpu``: a rehearsal under TRITON_INTERPRET=1 with small sizes, one wall-clock call per timing.)

Per size (C = 256 for V1.5, 64 for the bundled model), float32 on CUDA:
  * check: the kernel's T0 / T1 / T2 and dU against the float64 reference (``cg_reference``); a row fails above
    2e-6 relative, and the script exits 1 if any row failed; at the end, 320,000 atoms at C = 256 (offsets past
    2^31), the last 500 atoms checked the same way, and likewise the RMS norm at 1M atoms and pairdot at 450k;
  * "contract": U -> (T0, T1, T2) alone, forward and forward + backward (dU for random upstream gradients), the
    einsum + cats of ``cg_reference`` vs the kernel;
  * "node_part": one V1.5-shaped ``Attention.node_part`` (contraction, folded per-degree GEMMs, cat), einsum vs
    kernel, forward + backward;
  * "scalars": one ``SO3ToScalar.scalars`` of the setting's query width (projections and invariants), PyTorch vs
    the pairdot kernel, forward + backward, float32 and under bf16 autocast, after a check of the kernel against
    the float64 reference (2e-6);
  * "norm": one ``Block.attn_input`` (the norm with the system row, one tensor) and one ``EquivariantRMSNorm.parts``
    (the FFN's pre-norm), PyTorch vs the RMS norm kernel, forward + backward, after a check against float64 (5e-6).
Timing: triton.testing.do_bench, median ms.  Writes OUT_PREFIX.json and OUT_PREFIX.md.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # after an installed or mapped openmm_e2former
try:
    from openmm_e2former.kernels import cg_reference as R, cg_triton as KC
    from openmm_e2former.kernels import pairdot_reference as PR, pairdot_triton as KP
    from openmm_e2former.kernels import rmsnorm_reference as NR, rmsnorm_triton as KN
except ImportError:
    from kernels import cg_reference as R, cg_triton as KC
    from kernels import pairdot_reference as PR, pairdot_triton as KP
    from kernels import rmsnorm_reference as NR, rmsnorm_triton as KN
from openmm_e2former.model import E2FormerConfig
from openmm_e2former.model import e2former as E2
from openmm_e2former.model.layers import SO3ToScalar
from openmm_e2former.model.so3 import first_order_cg

SETTINGS = {"v15": dict(channels=256, num_heads=128, head_dim=8), "bundled": dict(channels=64, num_heads=16,
                                                                                    head_dim=4)}


def _rel(a, b):
    return float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30))


def check(N, C, cg64):
    g = torch.Generator(device=DEV).manual_seed(N + C)
    U64 = torch.randn(N, 3, 9, C, device=DEV, dtype=torch.float64, generator=g)
    U = U64.float().requires_grad_(True)
    out = KC.cg_contract(U, cg64)
    ref = R.cg_contract_reference(U64, cg64)
    errs = [_rel(a, b) for a, b in zip(out, ref)]
    d = [torch.randn(x.shape, device=DEV, dtype=torch.float64, generator=g) for x in ref]
    (dU,) = torch.autograd.grad(out, U, [x.float() for x in d])
    errs.append(_rel(dU, R.cg_adjoint_reference(*d, cg64)))
    return errs


def check_tail(N, C, cg64, tail=500):
    """Offsets past 2^31 (N 27 C > 2^31 from ~310k atoms at C = 256): the kernels on N atoms, the last ``tail``
    atoms' T0 / T1 / T2 and dU against the float64 reference of those atoms alone."""
    g = torch.Generator(device=DEV).manual_seed(7)
    U = torch.randn(N, 3, 9, C, device=DEV, generator=g).requires_grad_(True)
    out = KC.cg_contract(U, cg64)
    ref = R.cg_contract_reference(U[-tail:].detach().double(), cg64)
    errs = [_rel(a[-tail:], b) for a, b in zip(out, ref)]
    d = [torch.randn(x.shape, device=DEV, generator=g) for x in out]
    (dU,) = torch.autograd.grad(out, U, d)
    errs.append(_rel(dU[-tail:], R.cg_adjoint_reference(*[x[-tail:].double() for x in d], cg64)))
    return errs


def check_tail_norm_pairdot(N_norm, N_pd, tail=500):
    """Offsets past 2^31 in the RMS-norm kernels (N 9 C at C = 256: from ~932k atoms) and the pairdot kernels
    (N 10 h at h = 512: from ~420k atoms): outputs and input gradients of the last ``tail`` atoms against the float64
    reference of those atoms alone."""
    g = torch.Generator(device=DEV).manual_seed(11)
    C = 256
    x = torch.randn(N_norm, 9, C, device=DEV, generator=g).requires_grad_(True)
    w, b = torch.randn(3, C, device=DEV, generator=g), torch.randn(C, device=DEV, generator=g)
    y = KN.rms_norm(x, w, b, 1e-5)
    dy = torch.randn(x.shape, device=DEV, generator=g)
    (dx,) = torch.autograd.grad(y, x, dy)
    xt = x[-tail:].detach().double().requires_grad_(True)
    yr = NR.rms_norm_reference(xt, w.double(), b.double(), 1e-5)
    (dxr,) = torch.autograd.grad(yr, xt, dy[-tail:].double())
    errs = [_rel(y[-tail:], yr), _rel(dx[-tail:], dxr)]
    x = y = dy = dx = None
    h = 512
    ins = [torch.randn(*sh, device=DEV, generator=g).requires_grad_(True)
           for sh in ((N_pd, 2 * h), (N_pd, 3, 2 * h), (N_pd, 5, 2 * h))]
    bias = torch.randn(h, device=DEV, generator=g)
    s = KP.pairdot(*ins, bias)
    ds = torch.randn(s.shape, device=DEV, generator=g)
    grads = torch.autograd.grad(s, ins, ds)
    rt = [t[-tail:].detach().double().requires_grad_(True) for t in ins]
    sr = PR.pairdot_reference(*rt, bias.double())
    errs += [_rel(s[-tail:], sr)] + [_rel(a[-tail:], b_) for a, b_ in
                                     zip(grads, torch.autograd.grad(sr, rt, ds[-tail:].double()))]
    return errs


DEV = "cuda"


def main(argv):
    global DEV
    if "--device" in argv:
        DEV = argv[argv.index("--device") + 1]
    if DEV == "cuda":
        from triton.testing import do_bench
    else:                 # rehearsal: one wall-clock call instead of do_bench
        import time

        def do_bench(fn):
            t0 = time.perf_counter()
            fn()
            return 1e3 * (time.perf_counter() - t0)

    prefix = argv[0] if argv and not argv[0].startswith("--") else "benchmarks/results/cg_bench"
    sizes = "v15:10000,v15:100000,bundled:115200"
    if "--sizes" in argv:
        sizes = argv[argv.index("--sizes") + 1]
    cg64 = first_order_cg(torch.float64, DEV)
    rows, failed = [], False
    for item in sizes.split(","):
        name, n = item.split(":")
        N, C = int(n), SETTINGS[name]["channels"]
        errs = check(min(N, 20000), C, cg64)
        ok = max(errs) <= 2e-6
        failed |= not ok
        row = dict(setting=name, N=N, C=C, rel_err_T0_T1_T2_dU=errs, passed=ok)
        U = torch.randn(N, 3, 9, C, device=DEV).requires_grad_(True)
        cg32 = cg64.float()
        dT = [torch.randn(s, device=DEV) for s in ((N, C), (N, 3, 3 * C), (N, 5, 2 * C))]

        def fwd_ref():
            with torch.no_grad():
                return R.cg_contract_reference(U, cg32)

        def fwd_kernel():
            with torch.no_grad():
                return KC.cg_contract(U, cg64)

        def fb(fn):
            return lambda: torch.autograd.grad(fn(U, cg32 if fn is R.cg_contract_reference else cg64), U, dT)

        row["contract_fwd_ms"] = {"einsum": do_bench(fwd_ref), "kernel": do_bench(fwd_kernel)}
        row["contract_fwdbwd_ms"] = {"einsum": do_bench(fb(R.cg_contract_reference)),
                                     "kernel": do_bench(fb(KC.cg_contract))}
        # one Attention.node_part of this width (random weights), einsum vs kernel, forward + backward
        cfg = E2FormerConfig(**SETTINGS[name], num_layers=1)
        attn = E2.Attention(cfg).to(DEV)
        dy = torch.randn(N, 9, C, device=DEV)
        res = {}
        for flag, key in (("0", "einsum"), ("1", "kernel")):
            os.environ["E2F_CG_KERNEL"] = flag
            res[key] = do_bench(lambda: torch.autograd.grad(attn.node_part(U, torch.float32), U, dy))
        os.environ.pop("E2F_CG_KERNEL", None)
        row["node_part_fwdbwd_ms"] = res
        # the query / key invariants (pairdot kernel): check, then SO3ToScalar.scalars forward + backward
        qk = SETTINGS[name]["num_heads"] * SETTINGS[name]["head_dim"]
        h = qk // 2
        gen = torch.Generator(device=DEV).manual_seed(N)
        n_chk = min(N, 20000)
        ins64 = [torch.randn(*shape, device=DEV, dtype=torch.float64, generator=gen)
                 for shape in ((n_chk, 2 * h), (n_chk, 3, 2 * h), (n_chk, 5, 2 * h), (h,))]
        ins = [t.float().requires_grad_(True) for t in ins64]
        got = KP.pairdot(*ins)
        ds = torch.randn(n_chk, 3 * h, device=DEV, dtype=torch.float64, generator=gen)
        perrs = [_rel(got, PR.pairdot_reference(*ins64))]
        r_in = [t.clone().requires_grad_(True) for t in ins64]
        perrs += [_rel(a, b) for a, b in zip(torch.autograd.grad(got, ins, ds.float()),
                                              torch.autograd.grad(PR.pairdot_reference(*r_in), r_in, ds))]
        row["pairdot_rel_err_s_da0_da1_da2_dbias"] = perrs
        row["pairdot_passed"] = max(perrs) <= 2e-6
        failed |= not row["pairdot_passed"]
        mod = SO3ToScalar(C, qk).to(DEV)
        xin = torch.randn(N, 9, C, device=DEV).requires_grad_(True)
        dsc = torch.randn(N, 3 * h, device=DEV)
        res = {}
        for bf16 in (False, True):
            for flag, key in (("0", "torch"), ("1", "kernel")):
                os.environ["E2F_PAIRDOT_KERNEL"] = flag

                def step():
                    with torch.autocast(device_type=DEV, dtype=torch.bfloat16, enabled=bf16):
                        out = mod.scalars(xin)
                    return torch.autograd.grad(out, xin, dsc.to(out.dtype))

                res[("bf16 " if bf16 else "fp32 ") + key] = do_bench(step)
        os.environ.pop("E2F_PAIRDOT_KERNEL", None)
        row["scalars_fwdbwd_ms"] = res
        xin = dsc = mod = ins = ins64 = r_in = got = None        # free before the next size
        # the RMS norm: check (with the system row, one tensor, and as parts), then attn_input / norm parts
        x64 = 2.0 * torch.randn(n_chk, 9, C, device=DEV, dtype=torch.float64, generator=gen) + 0.5
        w64 = torch.randn(3, C, device=DEV, dtype=torch.float64, generator=gen)
        b64 = torch.randn(C, device=DEV, dtype=torch.float64, generator=gen)
        e64 = torch.randn(1, C, device=DEV, dtype=torch.float64, generator=gen)
        dy64 = torch.randn(n_chk, 9, C, device=DEV, dtype=torch.float64, generator=gen)
        nerrs = []
        for parts, extra in ((False, True), (True, False)):
            ins = [t.float().requires_grad_(True) for t in (x64, w64, b64, e64)]
            r_in = [t.clone().requires_grad_(True) for t in (x64, w64, b64, e64)]
            y = KN.rms_norm(ins[0], ins[1], ins[2], 1e-5, ins[3] if extra else None, parts=parts)
            yr = NR.rms_norm_reference(r_in[0], r_in[1], r_in[2], 1e-5, r_in[3] if extra else None)
            outs = list(y) if parts else [y]
            dys = list(torch.split(dy64.float(), [1, 3, 5], dim=1)) if parts else [dy64.float()]
            nerrs.append(_rel(torch.cat(outs, dim=1), yr))
            k = 4 if extra else 3
            nerrs += [_rel(a, b) for a, b in zip(torch.autograd.grad(outs, ins[:k], dys),
                                                  torch.autograd.grad(yr, r_in[:k], dy64))]
        row["rmsnorm_rel_err"] = nerrs
        row["rmsnorm_passed"] = max(nerrs) <= 5e-6
        failed |= not row["rmsnorm_passed"]
        blk = E2.Block(E2FormerConfig(**SETTINGS[name], num_layers=1)).to(DEV)
        xin = torch.randn(N, 9, C, device=DEV).requires_grad_(True)
        sysv = torch.randn(1, C, device=DEV)
        dyn = torch.randn(N, 9, C, device=DEV)
        res = {}
        for flag, key in (("0", "torch"), ("1", "kernel")):
            os.environ["E2F_RMSNORM_KERNEL"] = flag
            res["attn_input " + key] = do_bench(lambda: torch.autograd.grad(blk.attn_input(xin, sysv), xin, dyn))
            res["parts " + key] = do_bench(
                lambda: torch.autograd.grad(blk.norm_ffn.parts(xin), xin, list(torch.split(dyn, [1, 3, 5], dim=1))))
        os.environ.pop("E2F_RMSNORM_KERNEL", None)
        row["norm_fwdbwd_ms"] = res
        blk = xin = sysv = dyn = x64 = w64 = b64 = e64 = dy64 = ins = r_in = y = yr = outs = dys = None
        rows.append(row)
        print(json.dumps(row), flush=True)
        U = dT = dy = attn = None
        if DEV == "cuda":
            torch.cuda.empty_cache()
    big = 320000 if DEV == "cuda" else 40
    errs = check_tail(big, 256, cg64, tail=min(500, big))
    tail_ok = max(errs) <= 2e-6
    failed |= not tail_ok
    tail_row = dict(N=big, C=256, offsets_past_2_31=big * 27 * 256 > 2 ** 31, rel_err_T0_T1_T2_dU=errs, passed=tail_ok)
    print(json.dumps(dict(tail_check=tail_row)), flush=True)
    n_norm, n_pd = (1000000, 450000) if DEV == "cuda" else (12, 10)
    nerrs = check_tail_norm_pairdot(n_norm, n_pd, tail=min(500, n_pd))
    tail_ok2 = max(nerrs) <= 5e-6
    failed |= not tail_ok2
    tail_row2 = dict(rmsnorm_N=n_norm, pairdot_N=n_pd, rel_err_norm_y_dx_pairdot_s_da=nerrs, passed=tail_ok2)
    print(json.dumps(dict(tail_check_norm_pairdot=tail_row2)), flush=True)
    out = dict(device=torch.cuda.get_device_name() if DEV == "cuda" else DEV, torch=torch.__version__, rows=rows,
               tail_check=tail_row, tail_check_norm_pairdot=tail_row2)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    Path(prefix + ".json").write_text(json.dumps(out, indent=1))
    lines = [f"# Node-level kernels vs PyTorch: CG contraction, query / key invariants, RMS norm ({out['device']})", "",
             "| setting | N | C | check | contract fwd ms (einsum / kernel) | contract fwd+bwd ms | "
             "node_part fwd+bwd ms | pairdot check | scalars fwd+bwd ms, fp32 (torch / kernel) | bf16 | "
             "norm check | attn_input fwd+bwd ms | norm parts fwd+bwd ms |",
             "|---|---:|---:|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, b, p = r["contract_fwd_ms"], r["contract_fwdbwd_ms"], r["node_part_fwdbwd_ms"]
        lines.append(f"| {r['setting']} | {r['N']:,} | {r['C']} | {'pass' if r['passed'] else 'FAIL'} "
                     f"({max(r['rel_err_T0_T1_T2_dU']):.1e}) | {f['einsum']:.3f} / {f['kernel']:.3f} | "
                     f"{b['einsum']:.3f} / {b['kernel']:.3f} | {p['einsum']:.3f} / {p['kernel']:.3f} | "
                     f"{'pass' if r['pairdot_passed'] else 'FAIL'} ({max(r['pairdot_rel_err_s_da0_da1_da2_dbias']):.1e}) | "
                     f"{r['scalars_fwdbwd_ms']['fp32 torch']:.3f} / {r['scalars_fwdbwd_ms']['fp32 kernel']:.3f} | "
                     f"{r['scalars_fwdbwd_ms']['bf16 torch']:.3f} / {r['scalars_fwdbwd_ms']['bf16 kernel']:.3f} | "
                     f"{'pass' if r['rmsnorm_passed'] else 'FAIL'} ({max(r['rmsnorm_rel_err']):.1e}) | "
                     f"{r['norm_fwdbwd_ms']['attn_input torch']:.3f} / {r['norm_fwdbwd_ms']['attn_input kernel']:.3f} | "
                     f"{r['norm_fwdbwd_ms']['parts torch']:.3f} / {r['norm_fwdbwd_ms']['parts kernel']:.3f} |")
    lines += ["", f"Last {min(500, big)} of {big:,} atoms at C = 256 (offsets past 2^31: {tail_row['offsets_past_2_31']}): "
              f"{'pass' if tail_ok else 'FAIL'} ({max(errs):.1e})",
              f"RMS norm at {n_norm:,} atoms and pairdot at {n_pd:,} (offsets past 2^31), last atoms: "
              f"{'pass' if tail_ok2 else 'FAIL'} ({max(nerrs):.1e})"]
    Path(prefix + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
