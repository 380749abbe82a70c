"""CPU proxy of the GPU peak memory of one energy + forces evaluation, V1.5 size (issue #4, 1M atoms).

A stand-in for the fused attention kernel with its memory behaviour (forward without autograd, saves its
inputs; backward recomputes per slice of targets) replaces the Triton kernel, the CPU edge-degree embedding
runs without autograd (the GPU uses its fused kernel), and the torch profiler's memory timeline gives the
peak after the first 5 % of events minus the parameters.  The slope between two sizes is the memory per atom:

    python benchmarks/memory_probe_cpu.py block 5 128; python benchmarks/memory_probe_cpu.py block 9 128
    python benchmarks/memory_probe_cpu.py fine 5 128;  python benchmarks/memory_probe_cpu.py fine 9 128

(args: checkpoint mode, water-box side (375 / 2187 atoms for 5 / 9), checkpoint_chunk_atoms).  Session 3
(``results/memory_probe_cpu.txt``): block 165 -> 568 MiB, fine 124 -> 326 MiB from 375 to 2187 atoms, i.e.
~228 vs ~114 KiB per atom (the H200 measured ~240 KB/atom for block at 100k).  A proxy, not a GPU measurement.
MEMPROBE_RECOMPUTE_QK=1 turns on ``set_recompute_qk`` (session 10,
``results/memory_probe_cpu_recompute_qk.txt``).  Timeline files go to $MEMPROBE_DIR (default /tmp/memprobe).  Takes minutes and ~15 GB of RAM at 2187 atoms."""
import os, resource, sys, time, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
OUTDIR = Path(os.environ.get("MEMPROBE_DIR", "/tmp/memprobe"))
OUTDIR.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(2)
from helpers import water_box
from openmm_e2former.model import E2FormerConfig, E2FormerV2
from openmm_e2former.model import e2former as E2
import openmm_e2former.kernels as K
from openmm_e2former.kernels import attention_reference, FCParams

SL = 32
def slices(row_ptr, n):
    rp = row_ptr.tolist()
    for a in range(0, n, SL):
        b = min(n, a + SL)
        yield a, b, rp[a], rp[b]

class Fake(torch.autograd.Function):
    @staticmethod
    def forward(ctx, row_ptr, src, vec, q, k, v, t, s, mu, gamma, cutoff, softmax, *fc):
        n = q.shape[0]
        U = q.new_empty(n, 3, 9, v.shape[-1])
        with torch.no_grad():
            for a, b, e0, e1 in slices(row_ptr, n):
                U[a:b] = attention_reference(row_ptr[a:b + 1] - e0, src[e0:e1], vec[e0:e1], q[a:b], k, v, t[a:b], s,
                                             FCParams(*fc), mu, gamma, cutoff, softmax)
        ctx.save_for_backward(row_ptr, src, vec, q, k, v, t, s, mu, *fc)
        ctx.other = (gamma, cutoff, softmax)
        return U
    @staticmethod
    def backward(ctx, dU):
        row_ptr, src, vec, q, k, v, t, s, mu, *fc = ctx.saved_tensors
        gamma, cutoff, softmax = ctx.other
        dvec, dq = torch.zeros_like(vec), torch.zeros_like(q)
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
        kl, vl = k.detach().requires_grad_(), v.detach().requires_grad_()
        for a, b, e0, e1 in slices(row_ptr, q.shape[0]):
            vc = vec[e0:e1].detach().requires_grad_(); qc = q[a:b].detach().requires_grad_()
            with torch.enable_grad():
                U = attention_reference(row_ptr[a:b + 1] - e0, src[e0:e1], vc, qc, kl, vl, t[a:b], s, FCParams(*fc),
                                        mu, gamma, cutoff, softmax)
                g = torch.autograd.grad(U, [vc, qc, kl, vl], dU[a:b])
            dvec[e0:e1] = g[0]; dq[a:b] = g[1]; dk += g[2]; dv += g[3]
        return (None, None, dvec, dq, dk, dv) + (None,) * (6 + len(fc))

def fake_fused_attention(row_ptr, src, vec, q, k, v, t, s, fc_params, mu, gamma, cutoff, *, backend=None,
                         allow_tf32=False, max_degree=None, softmax="official"):
    return Fake.apply(row_ptr, src, vec, q, k, v, t, s, mu, gamma, cutoff, softmax, *FCParams(*fc_params))

K.fused_attention = fake_fused_attention
E2.Attention.use_fused = lambda self, x: True
mode, n_side, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
m = E2FormerV2(E2FormerConfig()).requires_grad_(False)      # V1.5 size: C 256, 4 layers, 128 heads
m.edge_degree.chunk_edges = 4096
_ed = m.edge_degree.forward
def _ed_nograd(z, g):     # the CPU reference edge-degree embedding keeps E x 9 x C (IndexAdd saves its source):
    with torch.no_grad():  # not what the GPU runs (fused kernel): leave it out of the probe
        return _ed(z, g)
m.edge_degree.forward = _ed_nograd
if mode == "noblocks": m.blocks = torch.nn.ModuleList([]); m.checkpoint_blocks = False
m.checkpoint_blocks = {"none": False, "nograd": False, "noblocks": False}.get(mode, mode)
m.checkpoint_chunk_atoms = chunk
if os.environ.get("MEMPROBE_RECOMPUTE_QK") == "1":   # session 10: query / key projections recomputed in backward
    m.set_recompute_qk(True)
z, pos, cell = water_box(n_side, 3.1, seed=0)
z, pos, cell = torch.tensor(z), torch.tensor(pos, dtype=torch.float32), torch.tensor(cell, dtype=torch.float32)
pbc = torch.tensor([True] * 3)
m.energy_and_forces(z[:30], pos[:30], None, None)          # warm up lazy allocations
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.time()
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
    e, em, f = m.energy_and_forces(z, pos, cell, pbc, forces=mode != "nograd")
import json
prof.export_memory_timeline(str(OUTDIR / ("tl_%s.json" % mode)), device="cpu")
ts, sizes = json.load(open(str(OUTDIR / ("tl_%s.json" % mode))))
tot = [sum(x) for x in sizes]
i = tot.index(max(tot))
print("timeline peak", max(tot) / 2**20, "MB at", i, "of", len(tot), "by category", [round(v / 2**20) for v in sizes[i]])
ev = []
run = peak = 0
for _, b in ev:
    run += b; peak = max(peak, run)
print("profiler: allocations", len(ev), "peak live bytes", peak / 2**20, "MB", "end", run / 2**20)
late = tot[int(0.05 * len(tot)):]
j = late.index(max(late)) + int(0.05 * len(tot))
print("late peak (after the first 5% of events)", round(max(late) / 2**20), "MB by category", [round(v / 2**20) for v in sizes[j]])
prof_peak = max(late) - sizes[j][1]
f = f if f is not None else torch.zeros(1)
r1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
N = len(z)
print(f"PROFILER (late, minus parameters) {mode:6s} N={N} peak {prof_peak / 2**20:.0f} MB = {prof_peak / 1024 / N:.1f} KB/atom")
print(f"{mode:6s} N={N} chunk={chunk} E={float(em):.6f} |F|max={float(f.abs().max()):.5f} peak delta "
      f"{(r1 - r0) / 1024:.0f} MB = {(r1 - r0) / N:.1f} KB/atom  ({time.time() - t0:.0f} s)")
torch.save(f, OUTDIR / f"f_{mode}.pt")
