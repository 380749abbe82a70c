"""Physical properties of the network: symmetries, conservative forces, periodic behaviour."""
import numpy as np
import pytest
import torch

from helpers import case, model, predict_case, random_rotation, water_box


def _mol(name="random20", variant="tiny_qk"):
    c = case(variant, name)
    return c["atomic_numbers"], c["positions"]


@pytest.mark.parametrize("eaas", ["relative", "so2"])
def test_rotation_invariance_and_force_equivariance(eaas):
    m = model("tiny_qk", eaas)
    z, pos = _mol()
    ref = m.predict(z, pos)
    centre = pos.mean(0)
    for seed in range(3):
        R = random_rotation(seed)
        out = m.predict(z, (pos - centre) @ R.T + centre)
        assert abs(out["energy"] - ref["energy"]) < 2e-5
        np.testing.assert_allclose(out["forces"], ref["forces"] @ R.T, atol=2e-4)


def test_rotation_periodic_triclinic():
    m = model("tiny_qk")
    c = case("tiny_qk", "water30_triclinic_pbc")
    ref = predict_case(m, c)
    R = random_rotation(7)
    out = m.predict(c["atomic_numbers"], c["positions"] @ R.T, c["cell"] @ R.T, c["pbc"])
    assert abs(out["energy"] - ref["energy"]) < 5e-5
    np.testing.assert_allclose(out["forces"], ref["forces"] @ R.T, atol=3e-4)


def test_translation_relative_route_is_exact_far_from_origin():
    """The relative-vector EAAS only sees r_i - r_j: translating by 1000 Å changes nothing beyond
    float32 rounding of the coordinates themselves (the official absolute-position route loses digits)."""
    m = model("tiny_qk", "relative", "float64")
    z, pos = _mol()
    ref = m.predict(z, pos)
    out = m.predict(z, pos + np.array([1000.0, -700.0, 300.0]))
    assert abs(out["energy"] - ref["energy"]) < 1e-9
    np.testing.assert_allclose(out["forces"], ref["forces"], atol=1e-9)
    m32 = model("tiny_qk", "relative")
    out32 = m32.predict(z, pos + 100.0)
    assert abs(out32["energy"] - ref["energy"]) < 1e-4


def test_permutation():
    m = model("tiny_qk")
    z, pos = _mol()
    perm = np.random.default_rng(3).permutation(len(z))
    ref = m.predict(z, pos)
    out = m.predict(z[perm], pos[perm])
    assert abs(out["energy"] - ref["energy"]) < 2e-5
    np.testing.assert_allclose(out["forces"], ref["forces"][perm], atol=1e-4)


@pytest.mark.parametrize("name,periodic", [("random20", False), ("water7_cubic6_pbc", True)])
def test_forces_match_central_finite_differences(name, periodic):
    # (a symmetric molecule such as ethanol has exactly tied attention maxima: the official
    # max-subtracted softmax with its +1e-3 term has a kink there, so FD and autograd differ by ~3e-6)
    m = model("tiny_qk", "relative", "float64")
    c = case("tiny_qk", name)
    cell = c["cell"] if periodic else None
    z, pos = c["atomic_numbers"], c["positions"].copy()
    f = m.predict(z, pos, cell, c["pbc"])["forces"]
    h = 1e-5  # the radial basis is narrow (sigma = 0.035 Å): keep the O(h^2) error small
    rng = np.random.default_rng(0)
    for a in rng.choice(len(z), size=4, replace=False):
        for k in range(3):
            p1, p2 = pos.copy(), pos.copy()
            p1[a, k] += h
            p2[a, k] -= h
            e1 = m.predict(z, p1, cell, c["pbc"], forces=False)["energy_model"]
            e2 = m.predict(z, p2, cell, c["pbc"], forces=False)["energy_model"]
            assert abs(-(e1 - e2) / (2 * h) - f[a, k]) < 1e-6 * max(1.0, abs(f[a, k])), (a, k)


def test_net_force_vanishes():
    m = model("tiny_qk")
    z, pos = _mol()
    assert np.abs(m.predict(z, pos)["forces"].sum(0)).max() < 1e-4


def test_periodic_wrap_invariance():
    m = model("tiny_qk")
    c = case("tiny_qk", "water30_triclinic_pbc")
    ref = predict_case(m, c)
    shifts = np.random.default_rng(1).integers(-3, 4, size=(len(c["positions"]), 3))
    moved = c["positions"] + shifts @ c["cell"]
    out = m.predict(c["atomic_numbers"], moved, c["cell"], c["pbc"])
    assert abs(out["energy"] - ref["energy"]) < 5e-5
    np.testing.assert_allclose(out["forces"], ref["forces"], atol=3e-4)


def test_supercell_extensivity():
    m = model("tiny_qk", "relative", "float64")
    z, pos, cell = water_box(2, 3.2, seed=4)
    one = m.predict(z, pos, cell)
    z2 = np.concatenate([z, z])
    pos2 = np.concatenate([pos, pos + cell[0]])
    cell2 = cell.copy()
    cell2[0] *= 2
    two = m.predict(z2, pos2, cell2)
    assert abs(two["energy_model"] - 2 * one["energy_model"]) < 1e-8 * max(1.0, abs(two["energy_model"]))
    np.testing.assert_allclose(two["forces"], np.concatenate([one["forces"]] * 2), atol=1e-9)


def test_triclinic_equivalent_cells():
    """The same lattice written with different (skewed) basis vectors gives the same result."""
    m = model("tiny_qk", "relative", "float64")
    z, pos, cell = water_box(2, 3.3, seed=5)
    ref = m.predict(z, pos, cell)
    skew = np.array([[1, 0, 0], [1, 1, 0], [-1, 1, 1]]) @ cell  # unimodular transform: same lattice
    out = m.predict(z, pos, skew)
    assert abs(out["energy"] - ref["energy"]) < 1e-8 * abs(ref["energy"])
    np.testing.assert_allclose(out["forces"], ref["forces"], atol=1e-9)


def test_small_cell_uses_many_images():
    """A cell smaller than the cutoff: one water in a 3.5 Å box sees many images of itself."""
    m = model("tiny_qk", "relative", "float64")
    z = np.array([8, 1, 1])
    pos = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.24, 0.927, 0.0]]) + 1.0
    r = m.predict(z, pos, np.eye(3) * 3.5)
    assert np.isfinite(r["energy"]) and np.abs(r["forces"].sum(0)).max() < 1e-8


def test_mixed_periodicity_slab():
    m = model("tiny_qk")
    c = case("tiny_qk", "water12_slab_pbc_TTF")
    ref = predict_case(m, c)
    moved = c["positions"] + np.array([0.0, 0.0, 50.0])  # non-periodic direction: free translation
    out = m.predict(c["atomic_numbers"], moved, c["cell"], c["pbc"])
    assert abs(out["energy"] - ref["energy"]) < 5e-5


def test_isolated_atoms_without_neighbours():
    """The official model crashes on a structure with no edge; ours returns a finite energy."""
    m = model("tiny_qk")
    r = m.predict([8, 8], [[0.0, 0.0, 0.0], [20.0, 0.0, 0.0]])
    assert np.isfinite(r["energy"]) and np.all(r["forces"] == 0)
    r1 = m.predict([6], [[1.0, 2.0, 3.0]])
    assert np.isfinite(r1["energy"])
    # with no neighbours the network output is element-independent (spec §2.3)
    a = m.predict([1], [[0.0, 0.0, 0.0]])["energy_model"]
    b = m.predict([16], [[0.0, 0.0, 0.0]])["energy_model"]
    assert abs(a - b) < 1e-6


def test_charge_and_multiplicity_change_energy():
    m = model("tiny_qk")
    z, pos = _mol("water")
    e0 = m.predict(z, pos)["energy"]
    assert abs(m.predict(z, pos, charge=1, multiplicity=2)["energy"] - e0) > 1e-4
    assert abs(m.predict(z, pos, multiplicity=3)["energy"] - e0) > 1e-4


def test_heads_differ_and_default_is_first():
    m = model("tiny_qk")
    z, pos = _mol("water")
    assert m.head_names == ["omol25", "svp"] and m.default_head == "omol25"
    assert m.predict(z, pos)["energy"] == m.predict(z, pos, head="omol25")["energy"]
    assert m.predict(z, pos, head="svp")["energy_model"] != m.predict(z, pos)["energy_model"]


def test_direct_force_head_is_not_a_gradient():
    m = model("tiny_direct")
    z, pos = _mol("water3", "tiny_direct")
    out = m.predict(z, pos)
    assert m.direct_forces and out["forces"].shape == (9, 3)
    no_f = m.predict(z, pos, forces=False)
    assert "forces" not in no_f or no_f["forces"] is None
    assert no_f["energy"] == pytest.approx(out["energy"], abs=1e-6)


def test_float64_model_matches_float32():
    z, pos = _mol()
    a = model("tiny_qk").predict(z, pos)
    b = model("tiny_qk", "relative", "float64").predict(z, pos)
    assert abs(a["energy"] - b["energy"]) < 1e-4
    np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-4)


def test_energy_and_forces_tensor_api():
    m = model("tiny_qk")
    z, pos = _mol("water")
    e, em, f = m.energy_and_forces(torch.tensor(z), torch.tensor(pos), head="omol25")
    ref = m.predict(z, pos)
    assert torch.is_tensor(e) and f.shape == (3, 3)
    assert abs(float(e) - ref["energy"]) < 1e-9


def test_memory_saving_paths_give_identical_results():
    """Chunked + checkpointed edge-degree embedding and checkpointed blocks (used automatically for
    large systems on the GPU) compute the same function."""
    from openmm_e2former import load_model
    from helpers import FIXTURES

    m = load_model(FIXTURES / "tiny_qk" / "checkpoint.pt", dtype="float64")
    c = case("tiny_qk", "water30_triclinic_pbc")
    ref = predict_case(m, c)
    m.checkpoint_blocks = True
    m.edge_degree.chunk_edges = 97
    out = predict_case(m, c)
    assert abs(out["energy"] - ref["energy"]) < 1e-9
    np.testing.assert_allclose(out["forces"], ref["forces"], atol=1e-10)


@pytest.mark.parametrize("variant,name", [("tiny_qk", "water30_triclinic_pbc"), ("tiny_qkdot", "random20"),
                                          ("tiny_direct", "water12_slab_pbc_TTF")])
def test_torchscript_forward_matches_eager(variant, name):
    """forward() compiles with torch.jit.script (needed by openmm-torch) and computes the same energy
    and autograd forces."""
    m = model(variant)
    c = case(variant, name)
    scripted = torch.jit.script(m)
    z = torch.tensor(c["atomic_numbers"])
    cell = torch.tensor(c["cell"], dtype=torch.float32)
    pbc = torch.tensor(c["pbc"])
    out = []
    for fn in (m, scripted):
        pos = torch.tensor(c["positions"], dtype=torch.float32, requires_grad=True)
        e = fn(z, pos, cell, pbc, int(c["charge"]), int(c["multiplicity"]), 0)
        (g,) = torch.autograd.grad(e, pos)
        out.append((float(e), g))
    assert out[0][1].dtype == torch.float32
    assert abs(out[0][0] - out[1][0]) < 1e-6 * abs(out[0][0])
    torch.testing.assert_close(out[0][1], out[1][1], atol=1e-5, rtol=1e-5)


def test_bf16_mode_is_close_to_fp32():
    """bf16 autocast of the node-level matrix products: a few-percent force error, no NaN; fp32 is exact again."""
    from openmm_e2former import load_model
    from helpers import FIXTURES

    m = load_model(FIXTURES / "tiny_qk" / "checkpoint.pt")
    c = case("tiny_qk", "water30_triclinic_pbc")
    ref = predict_case(m, c)
    m.set_precision("bf16")
    out = predict_case(m, c)
    scale = np.abs(ref["forces"]).max()
    assert np.isfinite(out["forces"]).all()
    assert np.abs(out["forces"] - ref["forces"]).max() < 0.1 * scale
    assert abs(out["energy_model"] - ref["energy_model"]) < 0.05 * max(1.0, abs(ref["energy_model"]))
    m.set_precision("fp32")
    again = predict_case(m, c)
    assert abs(again["energy"] - ref["energy"]) < 1e-6
    with pytest.raises(ValueError):
        m.set_precision("fp8")


# ------------------------------------------------------------------------------------------------
# smooth attention softmax (config attention_softmax="smooth", for our own models)
# ------------------------------------------------------------------------------------------------
def _with_softmax(m, softmax, eaas="relative"):
    """A copy of model ``m`` (same weights) whose config selects the given attention softmax."""
    import dataclasses
    from openmm_e2former.model import E2FormerV2

    out = E2FormerV2(dataclasses.replace(m.config, attention_softmax=softmax)).to(m.dtype)
    out.load_state_dict(m.state_dict())
    return out.set_eaas(eaas).requires_grad_(False).eval()


def test_attention_softmax_config():
    from openmm_e2former.model import ConfigError, E2FormerConfig

    assert E2FormerConfig().attention_softmax == "official"
    for variant in ("tiny_qk", "tiny_qkdot", "tiny_direct"):       # official yaml: always official
        assert model(variant).config.attention_softmax == "official"
    assert E2FormerConfig.from_dict({"attention_softmax": "smooth"}).attention_softmax == "smooth"
    with pytest.raises(ConfigError, match="attention_softmax"):
        E2FormerConfig.from_dict({"attention_softmax": "soft"})


@pytest.mark.parametrize("softmax", ["official", "smooth"])
def test_attention_reference_path_matches_kernel_reference(softmax):
    """The model's attention (attention_weights + relative EAAS) equals what the GPU path computes with
    kernels.fused_attention (on the CPU: kernels.attention_reference, tested against the literal formula)."""
    m = _with_softmax(model("tiny_qk", "relative", "float64"), softmax)
    c = case("tiny_qk", "water30_triclinic_pbc")
    z = torch.tensor(c["atomic_numbers"])
    pos = torch.tensor(c["positions"], dtype=torch.float64)
    g = m.build_graph(pos, torch.tensor(c["cell"], dtype=torch.float64), torch.tensor(c["pbc"]))
    x = torch.randn(len(z), 9, m.config.channels, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    attn = m.blocks[1].attn
    v = attn.value(x)
    ref = attn._eaas_reference(x, v, z, g)
    fused = attn._eaas_fused(x, v, z, g)
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-12)
    other = _with_softmax(m, "official" if softmax == "smooth" else "smooth").blocks[1].attn
    assert (other._eaas_reference(x, v, z, g) - ref).abs().max() > 1e-6   # the modes really differ


@pytest.mark.parametrize("variant,name", [("tiny_qk", "random20"), ("tiny_qkdot", "acetic_acid")])
def test_smooth_softmax_both_eaas_routes_agree(variant, name):
    """Both EAAS routes and both logit forms use the smooth softmax (float64: the routes agree as closely as
    in official mode, ~1e-7 eV, the absolute-position rounding of the so2 route)."""
    base = model(variant, "relative", "float64")
    c = case(variant, name)
    rel = predict_case(_with_softmax(base, "smooth", "relative"), c)
    so2 = predict_case(_with_softmax(base, "smooth", "so2"), c)
    off = predict_case(base, c)
    assert abs(rel["energy"] - so2["energy"]) < 1e-6
    np.testing.assert_allclose(rel["forces"], so2["forces"], atol=1e-6)
    assert abs(rel["energy"] - off["energy"]) > 1e-4, abs(rel["energy"] - off["energy"])


def test_smooth_softmax_is_continuous_when_the_argmax_edge_enters():
    """An F atom crosses the O atom's cutoff sphere (|r| = R +- delta).  In layer 0 the entering edge has the
    largest logit of O for two heads, so the official softmax (+1e-3 added after the max shift) jumps
    by a finite amount however small delta is; the smooth one changes by O(delta)."""
    from openmm_e2former.model.e2former import Attention

    m_off = model("tiny_qk", "relative", "float64")
    m_smooth = _with_softmax(m_off, "smooth")
    R = m_off.cutoff
    z = np.array([8, 1, 1, 6, 9])
    base = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0], [0.3, -0.8, 0.5]])
    at = lambda d: np.vstack([base, [-d, 0.0, 0.0]])

    # the entering edge (F -> O) holds the max logit of O in layer 0 for at least one head
    seen = []
    orig = Attention.attention_logits

    def spy(self, x, zz, g):
        out = orig(self, x, zz, g)
        seen.append((g.center, g.neighbor, out[0].detach()))
        return out

    Attention.attention_logits = spy
    try:
        m_off.predict(z, at(R - 1e-7), forces=False)
    finally:
        Attention.attention_logits = orig
    center, neighbor, logits = seen[0]
    mine = center == 0
    assert sorted(neighbor[mine].tolist()) == [1, 2, 3, 4]
    new = logits[mine & (neighbor == 4)][0]
    old_max = logits[mine & (neighbor != 4)].max(0).values
    assert int((new > old_max + 0.05).sum()) >= 2, (new, old_max)

    def jump(m, delta):
        e_in = m.predict(z, at(R - delta), forces=False)["energy_model"]
        e_out = m.predict(z, at(R + delta), forces=False)["energy_model"]
        return e_in - e_out

    j_off = [jump(m_off, d) for d in (1e-5, 1e-7)]
    j_smooth = [jump(m_smooth, d) for d in (1e-5, 1e-7)]
    assert min(abs(j) for j in j_off) > 1e-2                 # official: a finite jump (~0.028 eV) ...
    assert abs(j_off[0] - j_off[1]) < 0.01 * abs(j_off[1])   # ... that does not shrink with delta
    assert abs(j_smooth[1]) < 1e-5                           # smooth: ~ 2 delta |dE/dx| (O(delta)) ...
    assert 30 < abs(j_smooth[0] / j_smooth[1]) < 300         # ... shrinking with delta (here 100x)


@pytest.mark.parametrize("name", ["random20", "benzene"])
def test_smooth_softmax_forces_match_finite_differences(name):
    """Smooth mode: autograd forces = central finite differences, also for benzene, whose symmetric edges
    tie for the max logit (a kink of the official softmax; the smooth one does not use the max)."""
    m = _with_softmax(model("tiny_qk", "relative", "float64"), "smooth")
    c = case("tiny_qk", name)
    z, pos = c["atomic_numbers"], c["positions"].copy()
    f = m.predict(z, pos)["forces"]
    h = 1e-5
    rng = np.random.default_rng(1)
    for a in rng.choice(len(z), size=3, replace=False):
        for k in range(3):
            p1, p2 = pos.copy(), pos.copy()
            p1[a, k] += h
            p2[a, k] -= h
            e1 = m.predict(z, p1, forces=False)["energy_model"]
            e2 = m.predict(z, p2, forces=False)["energy_model"]
            assert abs(-(e1 - e2) / (2 * h) - f[a, k]) < 1e-6 * max(1.0, abs(f[a, k])), (a, k)


def test_smooth_softmax_torchscript_and_training_double_backward():
    """forward() still scripts in smooth mode, and a force loss can be differentiated w.r.t. the weights."""
    m = _with_softmax(model("tiny_qk"), "smooth")
    c = case("tiny_qk", "water7_cubic6_pbc")
    z = torch.tensor(c["atomic_numbers"])
    cell = torch.tensor(c["cell"], dtype=torch.float32)
    pbc = torch.tensor(c["pbc"])
    scripted = torch.jit.script(m)
    energies = []
    for fn in (m, scripted):
        pos = torch.tensor(c["positions"], dtype=torch.float32, requires_grad=True)
        energies.append(float(fn(z, pos, cell, pbc, 0, 1, 0).detach()))
    assert abs(energies[0] - energies[1]) < 1e-6 * abs(energies[0])
    m.requires_grad_(True).train()
    pos = torch.tensor(c["positions"], dtype=torch.float32, requires_grad=True)
    e, _ = m.energy_terms(z, pos, cell, pbc)
    (f,) = torch.autograd.grad(e, pos, create_graph=True)
    w = m.blocks[0].attn.edge_mlp.lin2.weight
    (gw,) = torch.autograd.grad(f.square().sum(), w)
    assert torch.isfinite(gw).all() and gw.abs().max() > 0



def test_node_level_degree_parts_match_the_plain_formulas():
    """The node-level layers work on degree parts and fold the attention's path mix, path norm and output linear
    into one weight per degree (session 10: fewer [N, 9, C] passes).  Each must equal the spec's formula written
    out directly (float64, random features, random biases where they start at zero)."""
    import copy

    import torch.nn.functional as F
    from openmm_e2former.model.layers import EquivariantRMSNorm, GatedFFN, SO3Linear
    from openmm_e2former.model.so3 import PATH_NORM

    torch.manual_seed(3)
    N, C = 7, 16
    x = torch.randn(N, 9, C, dtype=torch.float64)
    deg = [0, 1, 1, 1, 2, 2, 2, 2, 2]
    close = lambda a, b: torch.allclose(a, b, rtol=1e-11, atol=1e-11)

    norm = EquivariantRMSNorm(C).double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    xc = torch.cat([x[:, :1] - x[:, :1].mean(dim=2, keepdim=True), x[:, 1:]], dim=1)
    row_w = torch.tensor([1 / 3] + [1 / 9] * 3 + [1 / 15] * 5, dtype=torch.float64)
    nu = (xc.pow(2).mean(dim=2) * row_w).sum(dim=1)
    ref = xc * torch.rsqrt(nu + norm.eps)[:, None, None] * norm.weight[deg]
    ref[:, 0] += norm.bias
    assert close(norm(x), ref) and close(torch.cat(norm.parts(x), dim=1), ref)

    lin = SO3Linear(C, C).double()
    with torch.no_grad():
        lin.bias.normal_()
    ref = torch.stack([x[:, r] @ lin.weight[deg[r]].T for r in range(9)], dim=1)
    ref[:, 0] += lin.bias
    assert close(lin(x), ref) and close(torch.cat(lin.parts(list(x.split([1, 3, 5], dim=1))), dim=1), ref)

    ffn = GatedFFN(C).double()
    z = ffn.lin1(x)
    g = ffn.gate(z[:, 0])
    y = torch.cat([ffn.c_silu * F.silu(g[:, None, :C]),
                   ffn.c_sigmoid * torch.sigmoid(g[:, None, C:2 * C]) * z[:, 1:4],
                   ffn.c_sigmoid * torch.sigmoid(g[:, None, 2 * C:]) * z[:, 4:]], dim=1)
    assert close(ffn(x), ffn.lin2(y)) and close(ffn.parts(list(x.split([1, 3, 5], dim=1))), ffn.lin2(y))

    attn = copy.deepcopy(model("tiny_qk", dtype="float64").blocks[0].attn)
    with torch.no_grad():
        attn.out.bias.normal_()
    U = torch.randn(N, 3, 9, attn.C, dtype=torch.float64)
    T = torch.einsum("krm,nkmc->nrc", attn.cg.double(), U)
    y0 = T[:, :1] @ attn.tp_mix[0].weight.T
    y1 = torch.cat([T[:, 1:4], T[:, 4:7], T[:, 7:10]], dim=2) @ attn.tp_mix[1].weight.T
    y2 = torch.cat([T[:, 10:15], T[:, 15:20]], dim=2) @ attn.tp_mix[2].weight.T
    yy = torch.cat([y0, y1, y2], dim=1) * torch.tensor(PATH_NORM, dtype=torch.float64)[None, :, None]
    got, want = attn.node_part(U, torch.float64), attn.out(yy)
    assert (got - want).abs().max() <= 1e-12 * want.abs().max(), (got - want).abs().max()
