"""Small tuning probe: fused attention latency and register/spill report vs num_warps (one size each)."""
import json, os, sys
from pathlib import Path
import torch, triton
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
import kernels as K
from kernels import attention_triton as AT
from kernels._testing import make_case, args_of, V15

rows = []
for name, cfg, Kn in (("v15", V15, 32), ("appA", dict(V15, H=16), 64)):
    N = 16384
    case = make_case(N, Kn, **cfg, device="cuda", seed=5, fixed_degree=True, special_rows=False)
    args = list(args_of(case))
    for n in (2, 3, 4, 5):
        args[n] = args[n].requires_grad_(True)
    for nw in (4, 8, 16):
        os.environ["E2F_ATTN_NUM_WARPS"] = str(nw)
        for mode in ("fwd", "fwd+bwd"):
            def fn():
                U = AT.attention_triton(*args, max_degree=Kn)
                if mode == "fwd+bwd":
                    torch.autograd.grad(U, [args[n] for n in (2, 3, 4, 5)], U)
            try:
                ms = triton.testing.do_bench(fn, warmup=5, rep=30, return_mode="median")
                info = AT.compile_info()
            except Exception as exc:
                ms, info = None, repr(exc)[:200]
            r = dict(setting=name, N=N, K=Kn, num_warps=nw, mode=mode, ms=ms, compile_info=info)
            print(r, flush=True)
            rows.append(r)
os.environ.pop("E2F_ATTN_NUM_WARPS")
Path(sys.argv[1]).write_text(json.dumps(rows, indent=1))
