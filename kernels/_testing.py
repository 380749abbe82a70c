"""Random problem instances for tests and benchmarks of the attention kernels (no triton import)."""
from __future__ import annotations

import contextlib
import os

import torch

from .attention_reference import FCParams, rbf_gamma

TINY = dict(C=32, H=16, D=4, nb=64, T=16, hid=32)
V15 = dict(C=256, H=128, D=8, nb=256, T=128, hid=128)


def make_case(N, K, C, H, D, nb, T, hid, *, device="cpu", dtype=torch.float32, seed=0,
              cutoff=4.5, fixed_degree=False, special_rows=True, index_dtype=torch.int64, extreme_rows=None):
    """Random CSR graph + inputs.  Degrees uniform in [0, K] (or exactly K with fixed_degree); with
    special_rows atom 0 has no edge, atom 1 one edge and atom 2 (if any) K edges.  Edge lengths are
    uniform in [0.7, 1.05 R] so a few edges lie beyond the cutoff (envelope 0).

    ``extreme_rows=f`` (softmax edge cases; needs N >= 5): atom 3's queries are multiplied by f (logits of
    tens, both signs) and atom 4 gets >= 2 edges, all at the cutoff (u from ~1e-11 down to exactly 0)."""
    gen = torch.Generator().manual_seed(seed)
    if fixed_degree:
        deg = torch.full((N,), K, dtype=torch.int64)
    else:
        deg = torch.randint(0, K + 1, (N,), generator=gen)
    if extreme_rows is not None:
        deg[3:5] = torch.clamp(deg[3:5], min=2)
    if special_rows:
        if N > 0:
            deg[0] = 0
        if N > 1:
            deg[1] = 1
        if N > 2:
            deg[2] = K
    row_ptr = torch.zeros(N + 1, dtype=torch.int64)
    row_ptr[1:] = torch.cumsum(deg, 0)
    E = int(row_ptr[-1])
    src = torch.randint(0, max(N, 1), (E,), generator=gen)
    dirs = torch.randn(E, 3, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    dist = 0.7 + (1.05 * cutoff - 0.7) * torch.rand(E, 1, generator=gen, dtype=torch.float64)
    if extreme_rows is not None:
        e0, e1 = int(row_ptr[4]), int(row_ptr[5])
        dist[e0:e1, 0] = cutoff * (1.0 - 1e-4 * torch.arange(e1 - e0, dtype=torch.float64))
    vec = dirs * dist

    def rn(*shape, std=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * std

    case = dict(
        row_ptr=row_ptr.to(index_dtype), src=src, vec=vec,
        q=rn(N, H, D), k=rn(N, H, D), v=rn(N, 9, C), t=rn(N, T), s=rn(N, T),
        fc_params=FCParams.random(nb, T, hid, H, dtype=torch.float64, generator=gen),
        mu=torch.linspace(0, cutoff, nb, dtype=torch.float64),
        gamma=rbf_gamma(cutoff, nb), cutoff=cutoff)
    if extreme_rows is not None:
        case["q"][3] *= float(extreme_rows)
    out = {}
    for key, val in case.items():
        if isinstance(val, torch.Tensor):
            val = val.to(device)
            if val.is_floating_point():
                val = val.to(dtype)
        elif isinstance(val, FCParams):
            val = FCParams(*(x.to(device=device, dtype=dtype) for x in val))
        out[key] = val
    return out


ARG_ORDER = ("row_ptr", "src", "vec", "q", "k", "v", "t", "s", "fc_params", "mu", "gamma", "cutoff")


def args_of(case):
    return tuple(case[n] for n in ARG_ORDER)


@contextlib.contextmanager
def env_vars(env):
    """Set the environment variables of ``env`` (launch switches such as E2F_V2_BWD_AGG) for the block, then put
    back what was there (unset stays unset)."""
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def random_table(F, n_atoms, generator, *, P=3, step_log2=-9, cutoff=4.5, n_waves=3, device="cpu"):
    """A random float64 radial table with F columns for ``n_atoms`` atoms of P elements: (coef [P P M, 4, F],
    slot, slot, P, M, h), as ``attention_reference.table_lookup`` reads it (draws the functions, then the slots,
    from ``generator``).  Built as the model's tables are: step h = 2^step_log2 (exact in float32),
    M = ceil(cutoff / h) intervals, each piece the cubic Hermite interpolant of a smooth function (a sum of
    ``n_waves`` random sines, wavenumbers 0.5-5 per Angstrom) from its values and slopes at the interval's
    ends.  The table is therefore continuous with a continuous slope, like a real one: an edge whose float32
    length rounds across an interval boundary reads (almost) the same value on either side.  A table with
    independent random pieces jumps at every boundary, so such an edge would differ by O(1) between float32
    and float64 however exact the kernel is."""
    h = 2.0 ** step_log2
    M = int(-(-cutoff // h))
    a = torch.randn(n_waves, P * P, 1, F, generator=generator, dtype=torch.float64) / n_waves ** 0.5
    w = 0.5 + 4.5 * torch.rand(n_waves, P * P, 1, F, generator=generator, dtype=torch.float64)
    ph = 2 * torch.pi * torch.rand(n_waves, P * P, 1, F, generator=generator, dtype=torch.float64)
    x = (torch.arange(M + 1, dtype=torch.float64) * h)[None, None, :, None]
    f = (a * torch.sin(w * x + ph)).sum(0)                        # [P P, M + 1, F] node values
    g = h * (a * w * torch.cos(w * x + ph)).sum(0)                # h f' at the nodes
    f0, f1, g0, g1 = f[:, :-1], f[:, 1:], g[:, :-1], g[:, 1:]
    coef = torch.stack([f0, g0, 3 * (f1 - f0) - 2 * g0 - g1, 2 * (f0 - f1) + g0 + g1], dim=2)  # [P P, M, 4, F]
    coef = coef.reshape(P * P * M, 4, F).to(device)
    slot = torch.randint(0, P, (n_atoms,), generator=generator).to(device)
    return coef, slot, slot, P, M, h
