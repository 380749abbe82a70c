"""Tests of model/neighbors.py against an independent brute-force reference."""
import itertools
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model"))
from neighbors import _neighbor_list_impl, neighbor_list  # noqa: E402

CUTOFF = 5.0


# --------------------------------------------------------------------------- reference
def reference_candidates(pos, cell, pbc, cutoff, min_dist=1e-4, cell_for_h=None):
    """All edges (no cap) by an explicit loop over images, float64 numpy.

    Returns {centre: [(d, j, shift_key), ...] sorted by d}; shift_key = rounded n @ cell.
    """
    pos = np.asarray(pos, dtype=np.float64)
    n_atoms = len(pos)
    pbc = np.zeros(3, bool) if pbc is None else np.asarray(pbc, bool)
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    ch = cell if cell_for_h is None else np.asarray(cell_for_h, dtype=np.float64)
    ranges = []
    for k in range(3):
        if pbc[k]:
            nrm = np.cross(ch[(k + 1) % 3], ch[(k + 2) % 3])
            nrm = nrm / np.linalg.norm(nrm)
            h = abs(ch[k] @ nrm)
            proj = pos @ nrm / h  # fractional coordinate along k (up to a constant)
            nk = int(np.ceil(cutoff / h + (proj.max() - proj.min()))) + 1
            ranges.append(range(-nk, nk + 1))
        else:
            ranges.append(range(0, 1))
    masked_cell = np.where(pbc[:, None], cell, 0.0)
    out = {i: [] for i in range(n_atoms)}
    for n in itertools.product(*ranges):
        shift = np.asarray(n, dtype=np.float64) @ masked_cell
        d = np.linalg.norm(pos[:, None, :] - pos[None, :, :] - shift, axis=-1)
        ii, jj = np.nonzero((d >= min_dist) & (d <= cutoff))
        key = tuple(np.round(shift, 4) + 0.0)
        for i, j in zip(ii.tolist(), jj.tolist()):
            out[i].append((d[i, j], j, key))
    for i in out:
        out[i].sort()
    return out


def check_against_reference(results, pos, cell, pbc, cutoff, max_neighbors=32, min_dist=1e-4,
                            cell_for_h=None, expect_cap=None, ref=None):
    """Edge set equality with the reference, tolerant only to exact ties at the cap.

    ``results``: one (center, neighbor, shift) triple or a list of them; ``ref``: a
    precomputed reference_candidates(...) for the same arguments.  Returns ``ref``."""
    if isinstance(results, tuple):
        results = [results]
    if ref is None:
        ref = reference_candidates(pos, cell, pbc, cutoff, min_dist, cell_for_h)
    for result in results:
        _check_one(result, ref, pos, max_neighbors, expect_cap)
    return ref


def _check_one(result, ref, pos, max_neighbors, expect_cap):
    center, neighbor, shift = result
    assert center.dtype == torch.int64 and neighbor.dtype == torch.int64
    assert shift.shape == (center.shape[0], 3)
    pos = np.asarray(pos, dtype=np.float64)
    c = center.numpy()
    nb = neighbor.numpy()
    sh = shift.detach().double().numpy()
    d = np.linalg.norm(pos[c] - pos[nb] - sh, axis=-1)
    # sorted by centre, then distance
    assert np.all(np.diff(c) >= 0)
    same = np.diff(c) == 0
    assert np.all(np.diff(d)[same] >= -1e-9)
    capped_any = False
    for i in range(len(pos)):
        cand = ref[i]
        full = {(j, key): dist for dist, j, key in cand}
        assert len(full) == len(cand), "reference produced duplicate keys"
        sel = np.nonzero(c == i)[0]
        expected_n = min(max_neighbors, len(cand))
        assert len(sel) == expected_n, (i, len(sel), expected_n)
        if len(cand) > max_neighbors:
            capped_any = True
        keys = set()
        for e in sel:
            key = (int(nb[e]), tuple(np.round(sh[e], 4) + 0.0))
            assert key in full, (i, key)
            assert abs(full[key] - d[e]) < 1e-9
            keys.add(key)
        assert len(keys) == len(sel), "duplicate edges"
        if expected_n:
            kth = cand[expected_n - 1][0]
            assert d[sel].max() <= kth + 1e-9
            # without ties at the cap the sets are identical
            strict = {(j, key) for dist, j, key in cand if dist < kth - 1e-9}
            assert strict <= keys
    if expect_cap is not None:
        assert capped_any == expect_cap
    return d


def t(x, dtype=torch.float64):
    return None if x is None else torch.as_tensor(np.asarray(x), dtype=dtype)


def tb(x):
    return None if x is None else torch.as_tensor(np.asarray(x, dtype=bool))


def run(pos, cell, pbc, cutoff=CUTOFF, max_neighbors=32, min_dist=1e-4, method=0, dtype=torch.float64,
        chunk_entries=1 << 22):
    return _neighbor_list_impl(t(pos, dtype), t(cell, dtype), tb(pbc), cutoff, max_neighbors, min_dist,
                               method, 100000, chunk_entries)


def both_methods(pos, cell, pbc, cutoff=CUTOFF, max_neighbors=32, **kw):
    """Run brute force and the cell list; both go to the reference check (their order
    may differ only among exactly tied edges).  Returns [brute, cell_list]."""
    a = run(pos, cell, pbc, cutoff, max_neighbors, method=1, **kw)
    b = run(pos, cell, pbc, cutoff, max_neighbors, method=2, **kw)
    assert torch.equal(a[0], b[0])
    return [a, b]


RNG = np.random.default_rng(1234)
TRICLINIC = np.array([[11.0, 0.0, 0.0], [8.5, 9.0, 0.0], [-7.0, 6.0, 10.0]])  # strongly skewed


def random_in_cell(n, cell, rng=RNG):
    return rng.random((n, 3)) @ np.asarray(cell)


# --------------------------------------------------------------------------- tests
def test_nonperiodic_cluster_no_cap():
    pos = RNG.random((60, 3)) * 15.0
    res = both_methods(pos, None, None)
    check_against_reference(res, pos, None, None, CUTOFF, expect_cap=False)
    assert torch.all(res[1][2] == 0)


def test_nonperiodic_dense_cluster_cap_active():
    pos = RNG.random((300, 3)) * 7.0
    both = both_methods(pos, None, [False, False, False])
    check_against_reference(both, pos, None, None, CUTOFF, expect_cap=True)
    res = both[1]
    counts = torch.bincount(res[0], minlength=300)
    assert int(counts.min()) == 32 and int(counts.max()) == 32
    assert torch.all(res[2] == 0)
    # the cell is ignored when no direction is periodic
    res2 = run(pos, np.eye(3) * 3.0, [False, False, False])
    for x, y in zip(res, res2):
        assert torch.equal(x, y)


def test_empty_and_trivial():
    for dtype in (torch.float32, torch.float64):
        c, n, s = neighbor_list(torch.zeros(0, 3, dtype=dtype), None, None, CUTOFF)
        assert c.shape == (0,) and n.shape == (0,) and s.shape == (0, 3)
        assert c.dtype == torch.int64 and n.dtype == torch.int64 and s.dtype == dtype
        c, n, s = neighbor_list(torch.ones(1, 3, dtype=dtype), None, None, CUTOFF)
        assert c.shape == (0,) and s.shape == (0, 3) and s.dtype == dtype
        far = torch.tensor([[0.0, 0.0, 0.0], [100.0, -50.0, 3.0]], dtype=dtype)
        for method in (1, 2):
            c, n, s = _neighbor_list_impl(far, None, None, CUTOFF, 32, 1e-4, method, 100000, 1 << 22)
            assert c.shape == (0,) and n.shape == (0,) and s.shape == (0, 3) and s.dtype == dtype
        # empty periodic system
        c, n, s = neighbor_list(torch.zeros(0, 3, dtype=dtype), torch.eye(3, dtype=dtype) * 10,
                                torch.tensor([True, True, True]), CUTOFF)
        assert c.shape == (0,) and s.shape == (0, 3)


def test_far_apart_atoms_extreme_coordinates():
    # dense group plus far outliers: bins are hashed, no dense grid
    pos = np.concatenate([RNG.random((40, 3)) * 6.0, [[1e6, -1e6, 5e5], [-3e5, 0.0, 0.0]]])
    res = both_methods(pos, None, None)
    check_against_reference(res, pos, None, None, CUTOFF)
    assert not np.isin(res[1][0].numpy(), [40, 41]).any()


def test_coincident_atoms_removed():
    pos = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0 + 5e-5, 0.0, 0.0]])
    res = both_methods(pos, None, None)
    check_against_reference(res, pos, None, None, CUTOFF)
    c, n, _ = res[1]
    pairs = set(zip(c.tolist(), n.tolist()))
    assert (0, 1) not in pairs and (2, 3) not in pairs and (0, 0) not in pairs
    assert (0, 2) in pairs and (1, 3) in pairs
    # min_dist = 0 keeps coincident atoms (d = 0 >= 0), including the self copy
    res0 = run(pos, None, None, min_dist=0.0)
    assert (0, 1) in set(zip(res0[0].tolist(), res0[1].tolist()))


def test_cubic_box():
    cell = np.eye(3) * 12.0
    pos = random_in_cell(150, cell)
    res = both_methods(pos, cell, [True, True, True])
    ref = check_against_reference(res, pos, cell, [True] * 3, CUTOFF, expect_cap=True)
    res_all = both_methods(pos, cell, [True, True, True], max_neighbors=1000)
    check_against_reference(res_all, pos, cell, [True] * 3, CUTOFF, max_neighbors=1000, expect_cap=False,
                            ref=ref)


def test_triclinic_box():
    pos = random_in_cell(120, TRICLINIC)
    res = both_methods(pos, TRICLINIC, [True, True, True], cutoff=6.0)
    ref = check_against_reference(res, pos, TRICLINIC, [True] * 3, 6.0, expect_cap=True)
    res = both_methods(pos, TRICLINIC, [True, True, True], cutoff=6.0, max_neighbors=500)
    check_against_reference(res, pos, TRICLINIC, [True] * 3, 6.0, max_neighbors=500, expect_cap=False, ref=ref)


@pytest.mark.parametrize("n_atoms", [1, 4])
def test_box_smaller_than_cutoff(n_atoms):
    cell = np.array([[3.0, 0.0, 0.0], [0.4, 3.2, 0.0], [-0.3, 0.5, 2.9]])
    pos = random_in_cell(n_atoms, cell)
    ref = None
    for max_nb in (32, 1000):
        res = both_methods(pos, cell, [True, True, True], cutoff=4.5, max_neighbors=max_nb)
        ref = check_against_reference(res, pos, cell, [True] * 3, 4.5, max_neighbors=max_nb, ref=ref)
        if n_atoms == 1:
            assert torch.all(res[1][1] == 0) and len(res[1][0]) > 0  # only self images


def test_tiny_cell_many_images():
    cell = np.eye(3) * 1.1
    pos = random_in_cell(2, cell)
    res = both_methods(pos, cell, [True, True, True], cutoff=4.0, max_neighbors=2000)
    check_against_reference(res, pos, cell, [True] * 3, 4.0, max_neighbors=2000)


@pytest.mark.parametrize("third_row", [[0.0, 0.0, 0.0], [1.0, 2.0, 10.0]])
def test_mixed_pbc(third_row):
    cell = np.array([[9.0, 0.0, 0.0], [3.0, 8.0, 0.0], third_row])
    pos = random_in_cell(100, np.array([[9.0, 0.0, 0.0], [3.0, 8.0, 0.0], [0.0, 0.0, 9.0]]))
    pos[:5, 2] += 30.0  # far along the non-periodic direction
    pbc = [True, True, False]
    res = both_methods(pos, cell, pbc)
    cell_h = cell.copy()
    cell_h[2] = np.cross(cell[0], cell[1])
    check_against_reference(res, pos, cell, pbc, CUTOFF, cell_for_h=cell_h)
    assert torch.all(res[1][2][:, 2] == 0)
    # one periodic direction only
    pbc1 = [False, True, False]
    res1 = both_methods(pos, cell, pbc1)
    cell_h1 = np.array([[1.0, 0.0, 0.0], cell[1], [0.0, 0.0, 1.0]])
    cell_h1[0] = np.cross(cell[1], [0.0, 0.0, 1.0])
    cell_h1[2] = np.cross(cell_h1[0], cell[1])
    check_against_reference(res1, pos, cell, pbc1, CUTOFF, cell_for_h=cell_h1)


def edge_vectors(res, pos):
    c, n, s = res
    pos = torch.as_tensor(pos, dtype=s.dtype)
    return pos[c] - pos[n] - s


def test_unwrapped_positions():
    cell = TRICLINIC
    pos = random_in_cell(90, cell)
    k = RNG.integers(-3, 4, size=(90, 3)).astype(np.float64)
    pos_u = pos + k @ cell - np.array([40.0, 25.0, 70.0]) @ np.eye(3)  # also negative coordinates
    pbc = [True, True, True]
    ref = both_methods(pos, cell, pbc)
    check_against_reference(ref, pos, cell, pbc, CUTOFF)
    ref = ref[1]
    res = run(pos_u, cell, pbc, method=2)
    assert torch.equal(ref[0], res[0]) and torch.equal(ref[1], res[1])
    assert torch.allclose(edge_vectors(ref, pos), edge_vectors(res, pos_u), atol=1e-9)
    # the shift is an integer combination of the cell rows
    nvec = res[2].numpy() @ np.linalg.inv(cell)
    assert np.allclose(nvec, np.round(nvec), atol=1e-9)


def test_float32_matches_float64():
    cell = np.eye(3) * 14.0
    pos = random_in_cell(200, cell) + np.array([-20.0, 3.0, 15.0])  # partly outside the cell
    pos32 = pos.astype(np.float32).astype(np.float64)
    pbc = [True, True, True]
    r32 = run(pos32, cell, pbc, dtype=torch.float32)
    r64 = run(pos32, cell, pbc, dtype=torch.float64)
    r64o = run(pos, cell, pbc, dtype=torch.float64)
    assert r32[2].dtype == torch.float32
    for r in (r64, r64o):
        assert torch.equal(r32[0], r[0]) and torch.equal(r32[1], r[1])
        assert torch.equal(r32[2], r[2].float())
    check_against_reference(r32, pos32, cell, pbc, CUTOFF, expect_cap=True)


@pytest.mark.parametrize("cell", [np.eye(3) * 93.7, TRICLINIC * 8.3], ids=["cubic", "triclinic"])
def test_float32_shift_is_exact_under_low_precision_matmul(cell):
    """The float32 shift is n @ cell formed in float64 and rounded once, so a reduced-precision matrix-product setting
    cannot touch it.  A float32 product would run on TF32 tensor cores under allow_tf32 on CUDA (the 'tf32' / 'bf16'
    modes; edges across a 112 A box were 0.0275 A off on an H200, tests/gpu/check_tf32_shift.py) or in bf16 under autocast; CPU
    bf16 autocast stands in for both here."""
    k = RNG.integers(-3, 4, size=(1500, 3)).astype(np.float64)
    pos = random_in_cell(1500, cell) + k @ cell                           # unwrapped: most edges get an offset
    pos32 = pos.astype(np.float32).astype(np.float64)
    cell32 = cell.astype(np.float32).astype(np.float64)
    pbc = [True, True, True]
    r64 = run(pos32, cell32, pbc, cutoff=6.0, dtype=torch.float64)
    nvec = np.round(r64[2].numpy() @ np.linalg.inv(cell32))
    exact = torch.from_numpy(nvec @ cell32).float()               # integer offsets times the float32 cell, rounded once
    assert (nvec != 0).any(axis=1).mean() > 0.5
    for low in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low):
            r32 = run(pos32, cell32, pbc, cutoff=6.0, dtype=torch.float32)
        assert torch.equal(r32[0], r64[0]) and torch.equal(r32[1], r64[1])
        assert r32[2].dtype == torch.float32
        assert torch.equal(r32[2], exact), float((r32[2] - exact).abs().max())


def test_large_cell_list_vs_brute_force():
    rho = 0.1
    n_atoms = 3000
    length = (n_atoms / rho) ** (1.0 / 3.0)
    cell = np.array([[length, 0.0, 0.0], [0.1 * length, length, 0.0], [0.0, -0.05 * length, length]])
    pos = random_in_cell(n_atoms, cell) + RNG.normal(scale=length, size=(1, 3))
    pbc = [True, True, True]
    cl = run(pos, cell, pbc, method=2)
    bf = run(pos, cell, pbc, method=1)
    auto = neighbor_list(t(pos), t(cell), tb(pbc), CUTOFF)
    small_chunks = run(pos, cell, pbc, method=2, chunk_entries=100000)
    for x, y, z, w in zip(cl, bf, auto, small_chunks):
        assert torch.equal(x, y) and torch.equal(x, z) and torch.equal(x, w)
    counts = torch.bincount(cl[0], minlength=n_atoms)
    assert int(counts.max()) == 32 and int(counts.min()) > 0
    d = edge_vectors(cl, pos).norm(dim=-1)
    assert float(d.max()) <= CUTOFF and float(d.min()) >= 1e-4


def test_no_autograd_through_positions():
    cell = torch.eye(3, dtype=torch.float64) * 10.0
    pos = torch.rand(50, 3, dtype=torch.float64) * 10.0
    pos.requires_grad_(True)
    c, n, s = neighbor_list(pos, cell, torch.tensor([True, True, True]), CUTOFF)
    assert not s.requires_grad
    vec = pos[c] - pos[n] - s
    vec.norm(dim=-1).sum().backward()
    assert pos.grad is not None


def test_torchscript_matches_eager():
    scripted = torch.jit.script(neighbor_list)
    pos = random_in_cell(120, TRICLINIC) + 37.0
    cases = [
        (t(pos), t(TRICLINIC), tb([True, True, True])),
        (t(pos, torch.float32), t(TRICLINIC, torch.float32), tb([True, False, True])),
        (t(pos), None, None),
        (t(pos[:10]), t(TRICLINIC), tb([False, False, False])),
        (torch.zeros(0, 3), None, None),
    ]
    for p, c, b in cases:
        for max_nb in (32, 8):
            e = neighbor_list(p, c, b, CUTOFF, max_nb)
            s = scripted(p, c, b, CUTOFF, max_nb)
            for x, y in zip(e, s):
                assert x.dtype == y.dtype and torch.equal(x, y)
    # the cell-list path too
    big = t(random_in_cell(600, np.eye(3) * 18.0))
    e = neighbor_list(big, t(np.eye(3) * 18.0), tb([True] * 3), CUTOFF)
    s = scripted(big, t(np.eye(3) * 18.0), tb([True] * 3), CUTOFF)
    for x, y in zip(e, s):
        assert torch.equal(x, y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu():
    cell = TRICLINIC
    pos = random_in_cell(1500, cell * 1.6)
    for method in (1, 2):
        cpu = _neighbor_list_impl(t(pos), t(cell * 1.6), tb([True] * 3), CUTOFF, 32, 1e-4, method, 100000, 1 << 22)
        gpu = _neighbor_list_impl(t(pos).cuda(), t(cell * 1.6).cuda(), tb([True] * 3).cuda(), CUTOFF, 32, 1e-4,
                                  method, 100000, 1 << 22)
        for x, y in zip(cpu, gpu):
            assert y.is_cuda and torch.equal(x, y.cpu())
