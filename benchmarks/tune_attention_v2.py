"""Tile-parameter sweep of the fused attention v2 kernels (issue #4) on a GPU.

The v2 defaults in ``kernels.attention_triton_v2.launch_config`` were first picked from sm_90 compile reports
(zero spills), not from GPU timings.  This script times the alternatives at the V1.5 size (K = 32, H = 128,
C = 256, hid = 128) and checks each one against the float64 reference first, so a faster tiling is only
adopted if it is also exact.  Its first run (H200, 2026-11-29, ``benchmarks/results/attention_v2_tune_h200.md``)
set the current defaults for H >= 64; ``CONFIGS`` still starts with the earlier defaults, the baseline of the
"vs old default" column.

    # phase 1 (compile + check; may run in several processes at once, they share the Triton disk cache):
    python benchmarks/tune_attention_v2.py compile --part 1/4 --out DIR
    # phase 2 (timing, one process, the GPU otherwise idle):
    python benchmarks/tune_attention_v2.py time --out DIR [--n 10000]
    # the fastest checked tiles as shell assignments (for `set -a; . best.env`):
    python benchmarks/tune_attention_v2.py best --out DIR > best.env
    # summary (here, after the results came back):
    python benchmarks/tune_attention_v2.py report --out DIR
    # the bundled model's sizes (H = 16, K = 64) and its own config list: add --bundled to every phase

Each config is one line of ``DIR/check.jsonl`` / ``DIR/time.jsonl`` written as soon as it is measured, so a
run cut short by its time limit keeps what it finished.  Configs are listed most promising first.
Backward configs are timed as forward + backward with the default forward tiles (the backward needs the
forward's softmax statistics); forward configs as the forward alone.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEYS = ("BLOCK_T", "HB", "KC", "NUM_WARPS")   # + PROGS_PER_SM

# (kind, BLOCK_T, HB, KC, NUM_WARPS, PROGS_PER_SM[, backward variant]); the first of each kind is the default
# before the first sweep
CONFIGS = [
    ("bwd", 1, 16, 16, 4, 8),
    ("bwd", 1, 32, 16, 4, 8),
    ("bwd", 1, 16, 16, 8, 8),
    ("bwd", 2, 16, 16, 4, 8),
    ("bwd", 1, 32, 32, 8, 8),
    ("bwd", 2, 16, 16, 8, 8),
    ("bwd", 1, 16, 32, 4, 8),
    ("bwd", 1, 16, 16, 4, 16),
    ("bwd", 1, 16, 16, 4, 4),
    ("bwd", 1, 64, 16, 8, 8),
    ("bwd", 2, 32, 16, 8, 8),
    ("bwd", 1, 32, 32, 4, 8),
    ("bwd", 1, 32, 32, 4, 8, "acc"),        # backward variants (DR_ACC / DU_BCAST), added after the first sweep
    ("bwd", 1, 32, 32, 4, 8, "bcast"),
    ("bwd", 1, 32, 32, 4, 8, "acc+bcast"),
    ("bwd", 1, 16, 16, 4, 8, "acc"),
    ("bwd", 1, 16, 32, 4, 8, "acc+bcast"),
    ("fwd", 2, 32, 32, 8, 8),
    ("fwd", 1, 32, 32, 8, 8),
    ("fwd", 2, 64, 32, 8, 8),
    ("fwd", 4, 32, 32, 8, 8),
    ("fwd", 2, 32, 16, 4, 8),
    ("fwd", 2, 32, 32, 8, 16),
    ("fwd", 1, 16, 16, 4, 8),
]


# the bundled default model (H = 16, hid = 32; water: 64-slot tiles with the degree buckets): H caps HB at 16.
# The first of each kind is the current default (launch_config for H < 64); the forward is the streamed one.
CONFIGS_BUNDLED = [
    ("bwd", 1, 16, 16, 4, 8),
    ("bwd", 1, 16, 32, 4, 8),
    ("bwd", 1, 16, 16, 8, 8),
    ("bwd", 1, 16, 16, 2, 8),
    ("bwd", 1, 16, 16, 4, 16),
    ("bwd", 1, 16, 16, 4, 8, "acc"),
    ("fwd", 1, 16, 32, 8, 8),
    ("fwd", 1, 16, 32, 4, 8),
    ("fwd", 1, 16, 16, 4, 8),
    ("fwd", 1, 16, 32, 4, 16),
    ("fwd", 1, 16, 32, 2, 16),
    ("fwd", 2, 16, 32, 4, 8),
]


def label(cfg) -> str:
    kind, bt, hb, kc, nw, pps = cfg[:6]
    variant = cfg[6] if len(cfg) > 6 else ""
    return f"{kind} BT{bt} HB{hb} KC{kc} W{nw} P{pps}" + (f" {variant}" if variant else "")


def env_of(cfg) -> dict:
    kind, bt, hb, kc, nw, pps = cfg[:6]
    variant = cfg[6] if len(cfg) > 6 else ""
    K = kind.upper()
    env = {f"E2F_V2_{K}_{key}": str(val) for key, val in zip(KEYS + ("PROGS_PER_SM",), (bt, hb, kc, nw, pps))}
    env.update({"E2F_V2_BWD_DR_ACC": "1"} if "acc" in variant else {})
    env.update({"E2F_V2_BWD_DU_BCAST": "1"} if "bcast" in variant else {})
    return env


def set_env(cfg):
    for key in list(os.environ):          # both kinds back to their defaults, then this config's kind
        if key.startswith("E2F_V2_"):
            del os.environ[key]
    os.environ.update(env_of(cfg))


SETTING = {}   # filled by main(): size dict, K, device


def case_args(N, seed, dtype, fixed):
    from kernels._testing import make_case, args_of
    c = make_case(N, SETTING["K"], **SETTING["size"], device=SETTING["device"], seed=seed, dtype=dtype,
                  fixed_degree=fixed, special_rows=not fixed)
    a = list(args_of(c))
    for n in (2, 3, 4, 5):
        a[n] = a[n].clone().requires_grad_(True)
    return a


def grads(fn, a, G, **kw):
    import torch
    U = fn(*a, max_degree=SETTING["K"], **kw)
    return [U] + list(torch.autograd.grad(U, [a[n] for n in (2, 3, 4, 5)], G.to(U.dtype)))


def phase_compile(args, out):
    import torch
    from kernels import attention_triton_v2 as v2
    from kernels.attention_reference import attention_reference
    i, n = (int(x) for x in args.part.split("/"))
    mine = [c for j, c in enumerate(CONFIGS) if j % n == i - 1]
    a64 = case_args(args.n_check, 1, torch.float64, False)
    a32 = case_args(args.n_check, 1, torch.float32, False)
    C, dev = SETTING["size"]["C"], SETTING["device"]
    G = torch.randn((args.n_check, 3, 9, C), dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(dev)
    ref = grads(lambda *x, max_degree=None: attention_reference(*x), a64, G)
    big = case_args(args.n, 2, torch.float32, True)
    Gb = torch.randn((args.n, 3, 9, C), device=dev)
    rel = lambda x, y: ((x.double() - y).norm() / y.norm().clamp_min(1e-30)).item()
    for cfg in mine:
        set_env(cfg)
        t0 = time.time()
        row = dict(config=label(cfg), kind=cfg[0], BLOCK_T=cfg[1], HB=cfg[2], KC=cfg[3], NUM_WARPS=cfg[4],
                   PROGS_PER_SM=cfg[5], variant=cfg[6] if len(cfg) > 6 else "")
        try:
            got = grads(v2.attention_triton_v2, a32, G)
            errs = [rel(x, y) for x, y in zip(got, ref)]
            row.update(rel_err=dict(zip(("U", "dvec", "dq", "dk", "dv"), errs)), max_rel_err=max(errs),
                       passed=bool(max(errs) <= 1e-5 and all(torch.isfinite(x).all() for x in got)))
            grads(v2.attention_triton_v2, big, Gb)          # compile the N = args.n specialisation too
            if dev == "cuda":
                torch.cuda.synchronize()
            row["compile_info"] = v2.compile_info()
        except Exception as exc:                            # a tiling that fails to compile is a result too
            row.update(passed=False, error=f"{type(exc).__name__}: {str(exc)[:300]}")
        row["seconds"] = round(time.time() - t0, 1)
        with open(out / "check.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def read_checks(out) -> dict:
    """The float64-check records of ``out/check.jsonl`` by config label (empty if there are none)."""
    path = out / "check.jsonl"
    return {r["config"]: r for r in map(json.loads, open(path))} if path.exists() else {}


def _wall_ms(fn, warmup=0, rep=0):
    """CPU rehearsal stand-in for triton's do_bench: wall clock of one call (ms)."""
    t0 = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t0)


def phase_time(args, out):
    import torch
    from triton.testing import do_bench as gpu_bench
    from kernels import attention_triton_v2 as v2
    checked = read_checks(out)
    dev = SETTING["device"]
    a = case_args(args.n, 2, torch.float32, True)
    G = torch.randn((args.n, 3, 9, SETTING["size"]["C"]), device=dev)
    meta = dict(device=torch.cuda.get_device_name() if dev == "cuda" else "cpu (Triton interpreter)",
                torch=torch.__version__, N=args.n, K=SETTING["K"], setting=SETTING["name"], fixed_degree=True)
    do_bench = gpu_bench if dev == "cuda" else _wall_ms
    with open(out / "time.jsonl", "a") as f:
        f.write(json.dumps(dict(meta=meta)) + "\n")
    for cfg in CONFIGS:
        lab = label(cfg)
        if lab in checked and not checked[lab].get("passed"):
            continue                                         # inexact or failed to compile: not timed
        set_env(cfg)
        f_fwd = lambda: v2.attention_triton_v2(*a, max_degree=SETTING["K"])
        f_fb = lambda: torch.autograd.grad(f_fwd(), [a[n] for n in (2, 3, 4, 5)], G)
        try:
            ms = do_bench(f_fwd if cfg[0] == "fwd" else f_fb, warmup=50, rep=300)
            row = dict(config=lab, kind=cfg[0], ms=ms, measured="fwd" if cfg[0] == "fwd" else "fwd+bwd",
                       checked=lab in checked, compile_info=v2.compile_info())
        except Exception as exc:
            row = dict(config=lab, kind=cfg[0], error=f"{type(exc).__name__}: {str(exc)[:300]}")
        with open(out / "time.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def phase_report(args, out):
    checks = read_checks(out)
    rows, meta = [], {}
    for line in open(out / "time.jsonl"):
        r = json.loads(line)
        if "meta" in r:
            meta = r["meta"]
        elif "ms" in r:
            rows.append(r)
    lines = [f"# Attention v2 tile sweep ({meta.get('device', '?')}, {meta.get('setting')}, N = {meta.get('N')}, "
             f"K = {meta.get('K')})", "",
             "Generated by `benchmarks/tune_attention_v2.py report`. Every timed config first passed the float64",
             "check at N = 2000 (max relative error over U, dvec, dq, dk, dv; gate 1e-5).", ""]
    for kind in ("fwd", "bwd"):
        ks = [r for r in rows if r["kind"] == kind]
        if not ks:
            continue
        base = ks[0]["ms"] if ks[0]["config"] == label(next(c for c in CONFIGS if c[0] == kind)) else None
        what = "forward alone" if kind == "fwd" else "forward + backward, the forward at its default tiles"
        lines += [f"## {kind} ({what})",
                  "", "| config | ms | vs old default | max rel err | regs | spills |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in sorted(ks, key=lambda r: r["ms"]):
            ci = r.get("compile_info", {}).get(kind, {})
            ci = ci if isinstance(ci, dict) else {}          # interpreter: no compiled kernel
            err = checks.get(r["config"], {}).get("max_rel_err")
            lines.append(f"| {r['config']} | {r['ms']:.2f} | {base / r['ms']:.2f}x | "
                         f"{'%.1e' % err if err is not None else '-'} | {ci.get('n_regs', '-')} | "
                         f"{ci.get('n_spills', '-')} |" if base else
                         f"| {r['config']} | {r['ms']:.2f} | - | - | - | - |")
        lines.append("")
    text = "\n".join(lines)
    (out / "summary.md").write_text(text + "\n")
    print(text)


def phase_best(args, out):
    """The fastest timed (and checked) forward and backward tiles as E2F_V2_* lines for `set -a; . FILE`."""
    by_label = {label(c): c for c in CONFIGS}
    best = {}
    for line in open(out / "time.jsonl"):
        r = json.loads(line)
        if "ms" in r and r.get("checked") and (r["kind"] not in best or r["ms"] < best[r["kind"]]["ms"]):
            best[r["kind"]] = r
    for kind in ("fwd", "bwd"):
        if kind in best:
            for key, val in env_of(by_label[best[kind]["config"]]).items():
                print(f"{key}={val}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=("compile", "time", "report", "best"))
    p.add_argument("--out", required=True)
    p.add_argument("--part", default="1/1")
    p.add_argument("--n", type=int, default=10000, help="atoms for the timing (and its compile warm-up)")
    p.add_argument("--n-check", type=int, default=2000)
    p.add_argument("--tiny", action="store_true", help="CPU rehearsal under TRITON_INTERPRET=1: tiny sizes")
    p.add_argument("--bundled", action="store_true",
                   help="the bundled model's sizes (C 64, H 16, hid 32) at K = 64 (water) and its own config list")
    args = p.parse_args(argv)
    from kernels._testing import TINY, V15
    if args.bundled:
        CONFIGS[:] = CONFIGS_BUNDLED
        size = dict(C=64, H=16, D=4, nb=64, T=32, hid=32)
        SETTING.update(name="bundled", size=size, K=64 if not args.tiny else 16,
                       device="cpu" if args.tiny else "cuda")
    elif args.tiny:
        SETTING.update(name="tiny", size=TINY, K=8, device="cpu")
    else:
        SETTING.update(name="V1.5", size=V15, K=32, device="cuda")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    {"compile": phase_compile, "time": phase_time, "report": phase_report, "best": phase_best}[args.phase](args, out)


if __name__ == "__main__":
    main()
