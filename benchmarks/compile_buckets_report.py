"""sm_90a compile report (ptxas -v; no GPU needed) of the v2 attention and edge-degree kernels with and without
degree buckets (PERM): bundled-model shapes at the tile widths of liquid water (128 full, 64 half) with the
launch_config defaults, then V1.5 shapes.  Output: benchmarks/results/kernels_buckets_compile_report.md.

    python benchmarks/compile_buckets_report.py
"""
import warnings

from openmm_e2former import load_model
from openmm_e2former.kernels import _compile_report as CR
from openmm_e2former.kernels import attention_triton_v2 as v2, edge_degree_triton_v2 as ed2

warnings.simplefilter("ignore")
m = load_model()                                   # the bundled model's shapes
C, H, D, nb = m.config.channels, m.config.num_heads, m.config.head_dim, m.config.num_basis
hid = m.blocks[0].attn.edge_mlp.lin0.weight.shape[0]
print("C", C, "H", H, "D", D, "nb", nb, "hid", hid)

# the in-degree distribution the buckets are for: the last frame of the 100 ps campaign water run
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openmm_md_water import _pdb_box  # noqa: E402

z, pos, cell = _pdb_box(str(Path(__file__).resolve().parent
                            / "results/default_model/long_campaign/water_100ps/last_frame.pdb"))
center = m.neighbor_edges(torch.tensor(pos, dtype=torch.float32), torch.tensor(cell, dtype=torch.float32),
                          torch.tensor([True, True, True]))[0]
deg = torch.bincount(center, minlength=len(z))
print(f"water 600: in-degree mean {deg.float().mean():.1f}, max {int(deg.max())}, "
      f"fraction <= 64: {float((deg <= 64).float().mean()):.4f}", flush=True)
for perm in (False, True):
    for be in (128, 64):
        f = v2.launch_config(H, hid, nb, be, "fwd"); b = v2.launch_config(H, hid, nb, be, "bwd")
        consts = dict(nb=nb, C=C, H=H, D=D, HID=hid, BLOCK_T=f["BLOCK_T"], BLOCK_E=be, BLOCK_NB=f["BLOCK_NB"],
                      HB=f["HB"], KC=f["KC"], PREC="ieee", SMOOTH=True, PERM=perm)
        r = CR.compile_kernel(v2._attn_fwd_kernel_v2, dict(consts, SCR_STRIDE=CR._v2_stride("fwd", 0, consts)),
                              f["num_warps"])
        print("fwd PERM", perm, "BLOCK_E", be, {k: r[k] for k in ("regs", "spills", "shared", "blocks_per_sm")}, flush=True)
        consts = dict(consts, BLOCK_T=b["BLOCK_T"], HB=b["HB"], KC=b["KC"], BLOCK_NB=b["BLOCK_NB"], DR_ACC=False, DU_BCAST=False)
        r = CR.compile_kernel(v2._attn_bwd_kernel_v2, dict(consts, SCR_STRIDE=CR._v2_stride("bwd", 0, consts)),
                              b["num_warps"])
        print("bwd PERM", perm, "BLOCK_E", be, {k: r[k] for k in ("regs", "spills", "shared", "blocks_per_sm")}, flush=True)
        e = ed2.launch_config(hid, nb, be)
        c2 = dict(nb=nb, HID=hid, BLOCK_E=be, BLOCK_NB=e["BLOCK_NB"], KC=e["KC"], PREC="ieee", PERM=perm)
        r = CR.compile_kernel(ed2._edge_deg_fwd_kernel_v2, c2, e["num_warps"])
        print("ed fwd PERM", perm, "BLOCK_E", be, {k: r[k] for k in ("regs", "spills", "shared", "blocks_per_sm")}, flush=True)
        r = CR.compile_kernel(ed2._edge_deg_bwd_kernel_v2, dict(c2, G_FUSED=False), e["num_warps"])
        print("ed bwd PERM", perm, "BLOCK_E", be, {k: r[k] for k in ("regs", "spills", "shared", "blocks_per_sm")}, flush=True)

C, H, D, nb, HID, K = CR.CONFIGS["v15"]
for perm in (False, True):
    for be, bt_f, bt_b in ((32, 2, 1), (16, 4, 2)):
        consts = dict(nb=nb, C=C, H=H, D=D, HID=HID, BLOCK_T=bt_f, BLOCK_E=be, BLOCK_NB=16, HB=32, KC=16,
                      PREC="ieee", SMOOTH=True, PERM=perm)
        r = CR.compile_kernel(v2._attn_fwd_kernel_v2, dict(consts, SCR_STRIDE=CR._v2_stride("fwd", 0, consts)), 4)
        print("v15 fwd PERM", perm, "BLOCK_E", be, {k: r[k] for k in ("regs", "spills", "shared")}, flush=True)
        consts = dict(consts, BLOCK_T=bt_b, KC=32, BLOCK_NB=32, DR_ACC=False, DU_BCAST=False)
        r = CR.compile_kernel(v2._attn_bwd_kernel_v2, dict(consts, SCR_STRIDE=CR._v2_stride("bwd", 0, consts)), 4)
        print("v15 bwd PERM", perm, "BLOCK_E", be, {k: r[k] for k in ("regs", "spills", "shared")}, flush=True)
    c2 = dict(nb=nb, HID=HID, BLOCK_E=32, BLOCK_NB=32, KC=32, PREC="ieee", PERM=perm)
    r = CR.compile_kernel(ed2._edge_deg_fwd_kernel_v2, c2, 8)
    print("v15 ed fwd PERM", perm, {k: r[k] for k in ("regs", "spills", "shared")}, flush=True)
    r = CR.compile_kernel(ed2._edge_deg_bwd_kernel_v2, dict(c2, G_FUSED=False), 8)
    print("v15 ed bwd PERM", perm, {k: r[k] for k in ("regs", "spills", "shared")}, flush=True)
