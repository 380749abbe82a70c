"""Where the time of the fused attention v2 kernels goes, by stage, and the streamed aggregation
(``E2F_V2_{FWD,BWD}_AGG=stream``) against the tiled one (issue #4).

Per setting (the bundled model's sizes and V1.5's) and atom count: do_bench of the forward and of
forward + backward, with the aggregation as tiles, streamed, and left out ("none": times the edge MLP,
logits and softmax alone; its outputs are wrong and are not checked).
Every variant that is timed also runs once at N = 2000 against the float64 reference (gate 1e-5).
Sources are local (j within +-300 of the target, like a spatially ordered box) unless --random-src.

    python benchmarks/attention_stages.py --out DIR [--sizes bundled:115200:64,v15:10000:32]
    python benchmarks/attention_stages.py --report JSONL > table.md    (markdown table of a run)
One JSON line per measurement in DIR/attention_stages.jsonl, written as it is measured.
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

BUNDLED = dict(C=64, H=16, D=4, nb=64, T=32, hid=32)   # the bundled default model's attention sizes
APPA = dict(C=256, H=16, D=8, nb=256, T=128, hid=128)  # the paper's App. A setting (H 16) with the V1.5 sizes

def _agg(fwd, bwd=None):
    env = {"E2F_V2_FWD_AGG": fwd}
    # DX2_SCR off unless a variant says so: the labels keep the meaning they had before it became the default
    # (session 11), so "stream/tile" here is the earlier backward and "stream/tile, DX2_SCR" the current default
    return env if bwd is None else dict(env, E2F_V2_BWD_AGG=bwd, E2F_V2_BWD_DX2_SCR="0")


def _mlp_default(**extra):
    """Today's edge-MLP default ("stream/tile, DX2_SCR") with ``extra`` settings."""
    return dict(_agg("stream", "tile"), E2F_V2_BWD_DX2_SCR="1", **extra)


VARIANTS = [  # (label: forward aggregation / backward aggregation, env, timed part); every mode set explicitly
    ("tile", _agg("tile"), "fwd"),
    ("stream", _agg("stream"), "fwd"),
    ("stream, 4 warps", dict(_agg("stream"), E2F_V2_FWD_NUM_WARPS="4"), "fwd"),
    ("stream, tf32x3 dots", dict(_agg("stream"), E2F_V2_DOT_PREC="tf32x3"), "fwd"),
    ("none", _agg("none"), "fwd"),
    ("tile/tile", _agg("tile", "tile"), "fwd+bwd"),
    ("stream/tile", _agg("stream", "tile"), "fwd+bwd"),
    ("stream/split", _agg("stream", "split"), "fwd+bwd"),
    ("stream/stream", _agg("stream", "stream"), "fwd+bwd"),
    ("stream/tile, tf32x3 dots", dict(_agg("stream", "tile"), E2F_V2_DOT_PREC="tf32x3"), "fwd+bwd"),
    ("stream/tile, tf32 dots", dict(_agg("stream", "tile"), E2F_V2_DOT_PREC="tf32"), "fwd+bwd"),
    ("none/none", _agg("none", "none"), "fwd+bwd"),
    ("stream, every RBF centre", dict(_agg("stream"), E2F_V2_RBF_WIN="0"), "fwd"),
    ("stream, 2 edges per step", dict(_agg("stream"), E2F_V2_FWD_STREAM_G="2"), "fwd"),
    ("stream, 4 edges per step", dict(_agg("stream"), E2F_V2_FWD_STREAM_G="4"), "fwd"),
    ("stream, 8 edges per step", dict(_agg("stream"), E2F_V2_FWD_STREAM_G="8"), "fwd"),
    ("stream/stream, 4 edges per step", dict(_agg("stream", "stream"), E2F_V2_BWD_STREAM_G="4"), "fwd+bwd"),
    ("stream/split, 4 edges per step", dict(_agg("stream", "split"), E2F_V2_BWD_STREAM_G="4"), "fwd+bwd"),
    ("stream, 128 registers", dict(_agg("stream"), E2F_V2_FWD_MAXNREG="128"), "fwd"),
    ("stream/tile, 128 registers", dict(_agg("stream", "tile"), E2F_V2_FWD_MAXNREG="128",
                                        E2F_V2_BWD_MAXNREG="128"), "fwd+bwd"),
    ("stream/tile, bwd 168 registers", dict(_agg("stream", "tile"), E2F_V2_BWD_MAXNREG="168"), "fwd+bwd"),
    ("stream, 96 registers", dict(_agg("stream"), E2F_V2_FWD_MAXNREG="96"), "fwd"),
    ("stream, 4 warps, 128 registers", dict(_agg("stream"), E2F_V2_FWD_NUM_WARPS="4", E2F_V2_FWD_MAXNREG="128"), "fwd"),
    ("stream/tile, 96 registers", dict(_agg("stream", "tile"), E2F_V2_FWD_MAXNREG="96",
                                       E2F_V2_BWD_MAXNREG="96"), "fwd+bwd"),
    ("stream/tile, fwd 128, bwd 96 registers", dict(_agg("stream", "tile"), E2F_V2_FWD_MAXNREG="128",
                                                    E2F_V2_BWD_MAXNREG="96"), "fwd+bwd"),
    ("stream/tile, fwd 128, bwd 80 registers", dict(_agg("stream", "tile"), E2F_V2_FWD_MAXNREG="128",
                                                    E2F_V2_BWD_MAXNREG="80"), "fwd+bwd"),
    ("stream/split, 128 registers", dict(_agg("stream", "split"), E2F_V2_FWD_MAXNREG="128",
                                         E2F_V2_BWD_MAXNREG="128"), "fwd+bwd"),
    ("stream/tile, DX2_SCR", dict(_agg("stream", "tile"), E2F_V2_BWD_DX2_SCR="1"), "fwd+bwd"),
    ("stream/split, DX2_SCR", dict(_agg("stream", "split"), E2F_V2_BWD_DX2_SCR="1"), "fwd+bwd"),
    ("stream/tile, 128 registers, 16 programs per SM", dict(_agg("stream", "tile"), E2F_V2_FWD_MAXNREG="128",
                                                            E2F_V2_BWD_MAXNREG="128", E2F_V2_PROGS_PER_SM="16"), "fwd+bwd"),
    ("stream, tf32 dots", dict(_agg("stream"), E2F_V2_DOT_PREC="tf32"), "fwd"),
    ("stream/tile, DX2_SCR, tf32 dots", dict(_agg("stream", "tile"), E2F_V2_BWD_DX2_SCR="1", E2F_V2_DOT_PREC="tf32"),
     "fwd+bwd"),
    # the radial-table path (TABLE, session 11): g, w read from a per-element-pair cubic table, no edge MLP
    ("stream, table", dict(_agg("stream"), TABLE="1"), "fwd"),
    ("stream/tile, table", dict(_agg("stream", "tile"), TABLE="1"), "fwd+bwd"),
    ("stream/split, table", dict(_agg("stream", "split"), TABLE="1"), "fwd+bwd"),
    ("stream/tile, table, 96 registers", dict(_agg("stream", "tile"), TABLE="1", E2F_V2_FWD_MAXNREG="96",
                                              E2F_V2_BWD_MAXNREG="96"), "fwd+bwd"),
    ("stream/tile, table, uncapped", dict(_agg("stream", "tile"), TABLE="1", E2F_V2_FWD_MAXNREG="0",
                                          E2F_V2_BWD_MAXNREG="0"), "fwd+bwd"),
    # session 12: tiles and caps re-swept under TABLE (its live state is much smaller than the MLP path's); the
    # TABLE launch's own defaults are 4 forward warps and, since session 18, 4 backward warps (8 for H >= 64 from
    # session 12 to 17), so "4 warps" now equals "stream, table" and "bwd 8 warps" is session 12's choice
    ("stream, table, HB 64", dict(_agg("stream"), TABLE="1", E2F_V2_FWD_HB="64"), "fwd"),
    ("stream, table, 4 warps", dict(_agg("stream"), TABLE="1", E2F_V2_FWD_NUM_WARPS="4"), "fwd"),
    ("stream, table, 8 warps", dict(_agg("stream"), TABLE="1", E2F_V2_FWD_NUM_WARPS="8"), "fwd"),
    ("stream, table, 2 edges per step", dict(_agg("stream"), TABLE="1", E2F_V2_FWD_STREAM_G="2"), "fwd"),
    ("stream, table, 160 registers", dict(_agg("stream"), TABLE="1", E2F_V2_FWD_MAXNREG="160"), "fwd"),
    ("stream/tile, table, bwd HB 64", dict(_agg("stream", "tile"), TABLE="1", E2F_V2_BWD_HB="64"), "fwd+bwd"),
    ("stream/tile, table, bwd 8 warps", dict(_agg("stream", "tile"), TABLE="1", E2F_V2_BWD_NUM_WARPS="8"), "fwd+bwd"),
    ("stream/tile, table, bwd BLOCK_T 2", dict(_agg("stream", "tile"), TABLE="1", E2F_V2_BWD_BLOCK_T="2"), "fwd+bwd"),
    ("stream/tile, table, bwd 160 registers", dict(_agg("stream", "tile"), TABLE="1", E2F_V2_BWD_MAXNREG="160"),
     "fwd+bwd"),
    # session 18 (prepared for session 19): the TABLE backward's other launch settings after the relaxed atomics
    ("stream/tile, table, bwd 2 warps", dict(_agg("stream", "tile"), TABLE="1", E2F_V2_BWD_NUM_WARPS="2"), "fwd+bwd"),
    ("stream/tile, table, bwd 4 programs per SM", dict(_agg("stream", "tile"), TABLE="1",
                                                       E2F_V2_BWD_PROGS_PER_SM="4"), "fwd+bwd"),
    ("stream/tile, table, bwd 16 programs per SM", dict(_agg("stream", "tile"), TABLE="1",
                                                        E2F_V2_BWD_PROGS_PER_SM="16"), "fwd+bwd"),
    # q / k / dq / dk in the model's [N, H, D] (E2F_V2_QK_LAYOUT=hd): the default before session 13; that session's
    # "QK dh" rows timed the [N, D, H] copies that are the default since then (contiguous dk atomics)
    ("stream, table, QK hd", dict(_agg("stream"), TABLE="1", E2F_V2_QK_LAYOUT="hd"), "fwd"),
    ("stream/tile, table, QK hd", dict(_agg("stream", "tile"), TABLE="1", E2F_V2_QK_LAYOUT="hd"), "fwd+bwd"),
    ("stream/tile, DX2_SCR, QK hd", dict(_agg("stream", "tile"), E2F_V2_BWD_DX2_SCR="1", E2F_V2_QK_LAYOUT="hd"),
     "fwd+bwd"),
    # the dv / dk atomics with Triton's default acq_rel semantics (every session before 12; since then relaxed, so
    # "stream/tile, table" and "stream/tile, DX2_SCR" run relaxed): an A/B of the change
    ("stream/tile, table, acq_rel atomics", dict(_agg("stream", "tile"), TABLE="1", E2F_V2_ATOMIC_SEM="acq_rel"),
     "fwd+bwd"),
    ("stream/tile, DX2_SCR, acq_rel atomics", dict(_agg("stream", "tile"), E2F_V2_BWD_DX2_SCR="1",
                                                   E2F_V2_ATOMIC_SEM="acq_rel"), "fwd+bwd"),
    # stage skips under TABLE (timing only, wrong results): what the aggregation costs in each direction
    ("none, table", dict(_agg("none"), TABLE="1"), "fwd"),
    ("stream/none, table", dict(_agg("stream", "none"), TABLE="1"), "fwd+bwd"),
    # the tiled backward's dv / dk atomics as plain stores, or left out (timing only, wrong gradients): their cost
    ("stream/tile, table, plain stores", dict(_agg("stream", "tile"), TABLE="1", E2F_V2_BWD_ATOM="1"), "fwd+bwd"),
    ("stream/tile, table, no dv / dk write", dict(_agg("stream", "tile"), TABLE="1", E2F_V2_BWD_ATOM="2"), "fwd+bwd"),
    # session 18 (prepared for session 19): the edge-MLP launch's settings re-swept after the relaxed atomics, as the
    # TABLE backward's warps were (8 -> 4: -11 % of the V1.5 20k step); "stream/tile, DX2_SCR" is today's MLP default
    ("stream, uncapped", dict(_agg("stream"), E2F_V2_FWD_MAXNREG="0"), "fwd"),
    ("stream, KC 16", dict(_agg("stream"), E2F_V2_FWD_KC="16"), "fwd"),
    ("stream, KC 64", dict(_agg("stream"), E2F_V2_FWD_KC="64"), "fwd"),
    ("stream, 4 programs per SM", dict(_agg("stream"), E2F_V2_FWD_PROGS_PER_SM="4"), "fwd"),
    ("stream/tile, DX2_SCR, bwd 8 warps", _mlp_default(E2F_V2_BWD_NUM_WARPS="8"), "fwd+bwd"),
    ("stream/tile, DX2_SCR, bwd 2 warps", _mlp_default(E2F_V2_BWD_NUM_WARPS="2"), "fwd+bwd"),
    ("stream/tile, DX2_SCR, bwd uncapped", _mlp_default(E2F_V2_BWD_MAXNREG="0"), "fwd+bwd"),
    ("stream/tile, DX2_SCR, bwd KC 16", _mlp_default(E2F_V2_BWD_KC="16"), "fwd+bwd"),
    ("stream/tile, DX2_SCR, bwd 4 programs per SM", _mlp_default(E2F_V2_BWD_PROGS_PER_SM="4"), "fwd+bwd"),
    # session 19, after that sweep (appA 32k: bwd 8 warps 46.0 -> 41.0 ms, fwd 4 programs per SM 11.3 -> 10.9 ms):
    # combinations around the two, at the App. A and the bundled model's sizes
    ("stream, 2 programs per SM", dict(_agg("stream"), E2F_V2_FWD_PROGS_PER_SM="2"), "fwd"),
    ("stream, 8 warps", dict(_agg("stream"), E2F_V2_FWD_NUM_WARPS="8"), "fwd"),
    ("stream/tile, DX2_SCR, bwd 4 warps", _mlp_default(E2F_V2_BWD_NUM_WARPS="4"), "fwd+bwd"),
    ("stream/tile, DX2_SCR, bwd 8 warps, HB 32", _mlp_default(E2F_V2_BWD_NUM_WARPS="8", E2F_V2_BWD_HB="32"),
     "fwd+bwd"),
    ("stream/tile, DX2_SCR, bwd 8 warps, KC 32", _mlp_default(E2F_V2_BWD_NUM_WARPS="8", E2F_V2_BWD_KC="32"),
     "fwd+bwd"),
    ("stream/tile, DX2_SCR, bwd 8 warps, 4 programs per SM", _mlp_default(E2F_V2_BWD_NUM_WARPS="8",
                                                                          E2F_V2_BWD_PROGS_PER_SM="4"), "fwd+bwd"),
    ("stream/tile, DX2_SCR, bwd 8 warps, uncapped", _mlp_default(E2F_V2_BWD_NUM_WARPS="8", E2F_V2_BWD_MAXNREG="0"),
     "fwd+bwd"),
    # session 19: the streamed forward's one-edge step unrolled (E2F_V2_FWD_STREAM_U; U bit-for-bit unchanged;
    # mixed on the H200: session19_h200.md section 4, so it stays opt-in)
    ("stream, unroll 2", dict(_agg("stream"), E2F_V2_FWD_STREAM_U="2"), "fwd"),
    ("stream, unroll 4", dict(_agg("stream"), E2F_V2_FWD_STREAM_U="4"), "fwd"),
    ("stream, table, unroll 2", dict(_agg("stream"), TABLE="1", E2F_V2_FWD_STREAM_U="2"), "fwd"),
    ("stream, table, unroll 4", dict(_agg("stream"), TABLE="1", E2F_V2_FWD_STREAM_U="4"), "fwd"),
    ("stream, tf32x3 dots, unroll 4", dict(_agg("stream"), E2F_V2_DOT_PREC="tf32x3", E2F_V2_FWD_STREAM_U="4"),
     "fwd"),
    ("stream/tile, DX2_SCR, tf32x3 dots", _mlp_default(E2F_V2_DOT_PREC="tf32x3"), "fwd+bwd"),
    ("stream/tile, DR_ACC", dict(_agg("stream", "tile"), E2F_V2_BWD_DR_ACC="1"), "fwd+bwd"),
    ("stream/tile, DU_BCAST", dict(_agg("stream", "tile"), E2F_V2_BWD_DU_BCAST="1"), "fwd+bwd"),
    ("stream/tile, every RBF centre", dict(_agg("stream", "tile"), E2F_V2_RBF_WIN="0"), "fwd+bwd"),
]


def resolve_variant(label):
    """A VARIANTS entry by its label, or "BASE + KEY=VAL, KEY=VAL": the entry BASE with E2F_V2_KEY=VAL added (e.g.
    "stream + FWD_MAXNREG=80, FWD_PROGS_PER_SM=3"), so that a launch sweep needs no new list entries."""
    known = {v[0]: v for v in VARIANTS}
    base, plus, extra = label.partition(" + ")
    if base not in known:
        raise ValueError(f"unknown variant {base!r}; known: {list(known)}")
    if not plus:
        return known[base]
    env = dict(known[base][1])
    for item in extra.split(","):
        key, eq, val = item.strip().partition("=")
        if not eq or not key or not val:
            raise ValueError(f"variant {label!r}: expected KEY=VAL after ' + ', got {item.strip()!r}")
        env[key if key == "TABLE" else "E2F_V2_" + key] = val
    return (label, env, known[base][2])


def set_env(env):
    for key in [k for k in os.environ if k.startswith("E2F_V2_") and k != "E2F_V2_BUCKETS"]:
        del os.environ[key]
    os.environ.update(env)


def local_sources(case, window, seed):
    import torch
    rp = case["row_ptr"].cpu().long()
    N = rp.numel() - 1
    tgt = torch.repeat_interleave(torch.arange(N), rp[1:] - rp[:-1])
    g = torch.Generator().manual_seed(seed)
    off = torch.randint(-window, window + 1, (tgt.numel(),), generator=g)
    case["src"] = ((tgt + off) % max(N, 1)).to(case["src"].device)
    return case


def report(path) -> str:
    rows = [json.loads(line) for line in open(path)]
    lines = ["| setting | atoms | edges per atom | part | aggregation (fwd / bwd) | ms | max rel. err vs float64 |",
             "|---|---:|---:|---|---|---:|---:|"]
    for r in rows:
        err = r.get("max_rel_err")
        ms = r.get("ms")
        lines.append(f"| {r['setting']} | {r['N']:,} | {r['K']} | {r['part']} | {r['variant']} | "
                     f"{'%.2f' % ms if ms is not None else r.get('error', '-')} | "
                     f"{'%.1e' % err if err is not None else 'not checked'} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", default=None, help="print the markdown table of this JSONL file and exit")
    ap.add_argument("--out")
    ap.add_argument("--sizes", default="bundled:115200:64,bundled:14400:64,v15:10000:32")
    ap.add_argument("--random-src", action="store_true")
    ap.add_argument("--variants", default=None,
                    help="';'-separated labels of VARIANTS to run (default: all), e.g. 'stream/tile;stream/split'")
    ap.add_argument("--n-check", type=int, default=2000)
    ap.add_argument("--device", default="cuda", help="cpu: a rehearsal under TRITON_INTERPRET=1 (tiny sizes)")
    args = ap.parse_args(argv)
    if args.report:
        print(report(args.report))
        return
    if not args.out:
        ap.error("--out is required")
    import torch
    from triton.testing import do_bench
    from kernels import attention_triton_v2 as v2
    from kernels._testing import V15, args_of, make_case, random_table
    from kernels.attention_reference import attention_reference

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "attention_stages.jsonl"
    dev = args.device
    if dev != "cuda":   # rehearsal: one wall-clock call instead of do_bench
        def do_bench(fn, warmup=0, rep=0):
            t0 = time.perf_counter()
            fn()
            return 1e3 * (time.perf_counter() - t0)
    rel = lambda x, y: ((x.double() - y).norm() / y.norm().clamp_min(1e-30)).item()

    def leaf_args(case):
        a = list(args_of(case))
        for n in (2, 3, 4, 5):
            a[n] = a[n].clone().requires_grad_(True)
        return a

    def run(a, G, part, K, table=None):
        U = v2.attention_triton_v2(*a, max_degree=K, table=table)
        if part == "fwd":
            return [U]
        return [U] + list(torch.autograd.grad(U, [a[n] for n in (2, 3, 4, 5)], G))

    variants = VARIANTS
    if args.variants:
        try:
            variants = [resolve_variant(w) for w in args.variants.split(";")]
        except ValueError as exc:
            ap.error(str(exc))
    for spec in args.sizes.split(","):
        name, N, K = spec.split(":")
        N, K = int(N), int(K)
        size = {"bundled": BUNDLED, "appA": APPA}.get(name, V15)
        # float64 check case (random degrees 0..K, special rows) and the timing case (every atom K edges)
        c64 = make_case(args.n_check, K, **size, device=dev, dtype=torch.float64, seed=1)
        c32 = make_case(args.n_check, K, **size, device=dev, seed=1)
        a64, a32 = leaf_args(c64), leaf_args(c32)
        Gc = torch.randn((args.n_check, 3, 9, size["C"]), dtype=torch.float64, device=dev)
        U64 = attention_reference(*a64)
        ref = [U64] + list(torch.autograd.grad(U64, [a64[n] for n in (2, 3, 4, 5)], Gc))
        big = make_case(N, K, **size, device=dev, seed=2, fixed_degree=True)
        if not args.random_src:
            big = local_sources(big, 300, 3)
        ab = leaf_args(big)
        Gb = torch.randn((N, 3, 9, size["C"]), device=dev)
        tab_c = random_table(2 * size["H"], args.n_check, torch.Generator().manual_seed(5), device=dev)
        tab_b = random_table(2 * size["H"], N, torch.Generator().manual_seed(5), device=dev)
        tab_c32, tab_b32 = (tab_c[0].float(),) + tab_c[1:], (tab_b[0].float(),) + tab_b[1:]
        U64t = attention_reference(*a64, table=tab_c)
        ref_t = [U64t] + list(torch.autograd.grad(U64t, [a64[n] for n in (2, 3, 4, 5)], Gc))
        for label, env, part in variants:
            use_table = env.get("TABLE") == "1"
            set_env({k: v for k, v in env.items() if k != "TABLE"})
            row = dict(setting=name, N=N, K=K, variant=label, part=part, env=env,
                       src="random" if args.random_src else "local+-300")
            try:
                if "none" not in label:
                    got = run(a32, Gc.float(), part, K, tab_c32 if use_table else None)
                    errs = [rel(x, y) for x, y in zip(got, ref_t if use_table else ref)]
                    row.update(rel_err=errs, max_rel_err=max(errs), passed=max(errs) <= 1e-5)
                tb = tab_b32 if use_table else None
                run(ab, Gb, part, K, tb)
                if dev == "cuda":
                    torch.cuda.synchronize()
                row["ms"] = do_bench(lambda: run(ab, Gb, part, K, tb), warmup=25, rep=200)
                row["compile_info"] = v2.compile_info()
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
            with open(log, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: row.get(k) for k in ("setting", "N", "variant", "part", "ms", "max_rel_err",
                                                       "error")}), flush=True)
        set_env({})
        del big, ab, Gb
        if dev == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
