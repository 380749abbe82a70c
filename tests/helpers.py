"""Shared helpers for the CPU test-suite (fixture paths, cached models)."""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "official_parity"
VARIANTS = ("tiny_qk", "tiny_qkdot", "tiny_direct", "v15")


@functools.lru_cache(maxsize=None)
def model(variant: str = "tiny_qk", eaas: str = "relative", dtype: str = "float32"):
    from openmm_e2former import load_model

    return load_model(FIXTURES / variant / "checkpoint.pt", eaas=eaas, dtype=dtype)


def case(variant: str, name: str):
    d = np.load(FIXTURES / variant / f"{name}.npz")
    return {k: d[k] for k in d.files}


def predict_case(m, c, **kw):
    cell = c["cell"] if c["pbc"].any() else None
    return m.predict(c["atomic_numbers"], c["positions"], cell, c["pbc"], int(c["charge"]),
                     int(c["multiplicity"]), head=str(c["head"]), **kw)


def random_rotation(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def water_box(n_side: int = 2, spacing: float = 3.1, seed: int = 0):
    """Small periodic water box: n_side^3 randomly oriented rigid waters on a jittered grid."""
    rng = np.random.default_rng(seed)
    geom = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [0.9572 * np.cos(np.radians(104.52)),
                                                            0.9572 * np.sin(np.radians(104.52)), 0.0]])
    pos, z = [], []
    for i in range(n_side):
        for j in range(n_side):
            for k in range(n_side):
                c = (np.array([i, j, k]) + 0.5) * spacing + rng.uniform(-0.2, 0.2, 3)
                pos.append(geom @ random_rotation(int(rng.integers(1 << 30))).T + c)
                z += [8, 1, 1]
    return np.array(z), np.concatenate(pos), np.eye(3) * n_side * spacing


def run_under_triton_interpreter(script: str, args, what: str, drop_env=()) -> str:
    """Run ``script`` (python -c) with ``TRITON_INTERPRET=1`` and the repository first on PYTHONPATH, without
    the environment variables in ``drop_env``; it must exit 0 and print "WORST". Without triton the calling
    test is skipped with a visible reason, or fails under ``E2FORMER_REQUIRE_TRITON=1`` (CI)."""
    import pytest

    if importlib.util.find_spec("triton") is None:
        if os.environ.get("E2FORMER_REQUIRE_TRITON") == "1":
            pytest.fail("triton is not installed but E2FORMER_REQUIRE_TRITON=1")
        pytest.skip(f"triton not installed: {what} NOT run (pip install triton==3.6.0)")
    env = dict(os.environ, TRITON_INTERPRET="1")
    for key in drop_env:
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True, text=True,
                         timeout=300, cwd=str(REPO))
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "WORST" in res.stdout
    return res.stdout


def write_raw_shard(raw: Path, name: str, z, P, C, q: int, kind: str) -> None:
    """An unlabelled shard ``raw/name.npz`` (as training.generate writes) of frames P [F, N, 3] Å with cells C
    [F, 3, 3] (None: gas phase), total charge q and system kind."""
    from training.shards import save_shard
    F = len(P)
    save_shard(raw / f"{name}.npz", {
        "Z": np.asarray(z, np.int16), "positions": np.asarray(P, np.float32),
        "cell": np.zeros((F, 3, 3), np.float32) if C is None else np.asarray(C, np.float32),
        "pbc": np.full(3, C is not None), "charge": q, "multiplicity": 1, "system": name, "kind": kind,
        "temperature": 300.0, "source": "test"})


def tiny_train_config(root: Path, out: Path, lab: str = "lab", atoms_per_step: int = 12, max_neighbors: int = 32,
                      *extra: str):
    """training/configs/default.yaml with a tiny model and a 3-step CPU schedule on ``root/lab`` (refs
    ``root/refs.json``); ``extra``: more ``key=value`` overrides."""
    from training import train
    return train.load_config(Path(train.__file__).parent / "configs" / "default.yaml", [
        f"out_dir={out}", f"data.dirs=[{root / lab}]", f"data.refs={root / 'refs.json'}",
        f"data.atoms_per_step={atoms_per_step}", "train.log_every=1", "train.val_every=1000",
        "train.ckpt_every=1000", "train.max_steps=3", "train.warmup_steps=1", "train.device=cpu",
        "model.channels=16", "model.num_layers=1", "model.num_heads=4", "model.head_dim=4",
        "model.num_basis=8", f"model.max_neighbors={max_neighbors}", "model.atom_embed_size=8", *extra])


#: first lines of a model-level script for ``run_under_triton_interpreter`` (argv[1]: this folder, for helpers):
#: checks that the interpreter is on and that the package's Triton kernels imported
def count_calls(monkeypatch, owner, name: str) -> dict:
    """Wrap ``owner.name`` (a function or method) so that its calls are counted in the returned dict's "n"
    (``monkeypatch`` puts it back after the test); the wrapped function still runs."""
    real = getattr(owner, name)
    calls = {"n": 0}

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


def fused_route_on_reference(m, setattr_=setattr) -> None:
    """Put every block of ``m`` on the fused route's code path (``Block.edge_part`` -> ``attn_input_parts`` ->
    ``qkv`` -> ``fused_U_graph``) with the attention itself on its reference backend: the CPU has no fused kernel,
    and under the interpreter it would take most of a test's time.  The reference backend takes float32 q / k / v
    (the GPU kernels take bf16 ones as they are).  ``setattr_``: e.g. ``monkeypatch.setattr``."""
    for blk in m.blocks:
        setattr_(blk.attn, "use_fused", lambda x: True)
        real_rows = blk.attn.fused_U_rows
        setattr_(blk.attn, "fused_U_rows",
                 lambda q, k, v, *rest, f=real_rows: f(q.float(), k.float(), v.float(), *rest))


def tiny_kernel_model(**cfg):
    """For the Triton-interpreter model scripts: the smallest model the kernels take (H, hid, C powers of two
    >= 16; one block; ``cfg`` overrides), seeded, weights perturbed and frozen, and 21 atoms of a periodic water
    box in float32.  Returns (model, z, pos, cell, pbc)."""
    import torch
    from openmm_e2former.model import E2FormerConfig, E2FormerV2

    torch.manual_seed(0)
    m = E2FormerV2(E2FormerConfig(**dict(dict(channels=32, num_layers=1, num_heads=16, head_dim=4, num_basis=64,
                                              atom_embed_size=16, max_neighbors=10), **cfg)))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.requires_grad_(False)
    z, pos, cell = water_box(2, 3.1, seed=3)           # 24 atoms, periodic
    z, pos = torch.tensor(z)[:21], torch.tensor(pos, dtype=torch.float32)[:21]
    return m, z, pos, torch.tensor(cell, dtype=torch.float32), torch.tensor([True, True, True])


def kernel_test_script(name: str, body: str) -> str:
    """An interpreter script checking ``<name>_triton`` against ``<name>_reference`` (``run_under_triton_interpreter``
    with the kernels' package as argv[1]): a head that asserts the interpreter is on and defines ``K``, ``R`` (the two
    modules), ``worst = 0.0`` and ``rel(a, b)`` (the largest difference relative to the largest |b|, in float64),
    followed by ``body`` (dedented)."""
    head = textwrap.dedent(f"""\
        import os, sys
        assert os.environ.get("TRITON_INTERPRET") == "1"
        import torch
        from importlib import import_module
        K = import_module(sys.argv[1] + ".{name}_triton")
        R = import_module(sys.argv[1] + ".{name}_reference")
        worst = 0.0


        def rel(a, b):
            a, b = a.detach(), b.detach()
            return float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30))
        """)
    return head + textwrap.dedent(body)


TRITON_MODEL_SCRIPT_HEAD = """import os, sys
assert os.environ.get("TRITON_INTERPRET") == "1"
import torch
sys.path.insert(0, sys.argv[1])
from helpers import tiny_kernel_model, water_box
from openmm_e2former.model import E2FormerConfig, E2FormerV2
from openmm_e2former.model import e2former as E2
import openmm_e2former.kernels as K
assert K.HAS_TRITON, "triton imported but the kernels did not"
"""


def kernels_package() -> str:
    """The kernels' import name: ``openmm_e2former.kernels`` when the package is installed, else the plain
    checkout's ``kernels`` (the repository root put on sys.path)."""
    try:
        importlib.import_module("openmm_e2former.kernels")
        return "openmm_e2former.kernels"
    except ImportError:
        sys.path.insert(0, str(REPO))
        return "kernels"


def assert_env_switch(monkeypatch, enabled, name: str, default: bool, bad: str = "yes") -> None:
    """A node-level kernel's environment switch ``name`` as ``enabled()`` reads it: ``default`` when unset, "0" off,
    "1" on, and ``bad`` an error naming the variable and the value."""
    import pytest

    monkeypatch.delenv(name, raising=False)
    assert enabled() is default
    monkeypatch.setenv(name, "0")
    assert enabled() is False
    monkeypatch.setenv(name, "1")
    assert enabled() is True
    monkeypatch.setenv(name, bad)
    with pytest.raises(ValueError, match=f"{name}='{bad}'"):
        enabled()


_NODE_KERNEL_MODEL_SCRIPT = textwrap.dedent(r"""
    from openmm_e2former.kernels import @MODULE@
    m, z, pos, cell, pbc = tiny_kernel_model()
    # (the attention and edge-degree embedding on their PyTorch routes: this checks the node-level kernel, whose
    # input does not depend on the route, and the fused attention under the interpreter would take most of the time)
    calls = []
    real = @MODULE@.@FUNC@
    @MODULE@.@FUNC@ = lambda *a, **k: calls.append(@RECORD@) or real(*a, **k)
    out = {}
    for flag in ("0", "1"):
        os.environ["@ENV@"] = flag
        calls.clear()
        out[flag] = m.energy_and_forces(z, pos, cell, pbc)
        assert bool(calls) == (flag == "1"), (flag, calls)
    @CHECKS@
    e0, e1 = float(out["0"][1]), float(out["1"][1])
    f0, f1 = out["0"][2], out["1"][2]
    err = float((f1 - f0).abs().max() / f0.abs().max())
    assert abs(e1 - e0) <= 1e-5 * abs(e0), (e0, e1)
    print("WORST", err)
    assert err < 1e-5, err
""")


def node_kernel_model_script(module: str, func: str, env: str, record: str = "a[0].shape", checks: str = "") -> str:
    """The interpreter script of a node-level kernel's model test: the tiny model's energy and forces with the
    switch ``env`` off and on; ``module.func`` (spied on, each call appending ``record``, an expression of its
    arguments ``a``) must run only when it is on, ``checks`` (top-level statements on ``calls`` and ``m``) must
    hold, and the two results must agree to float32 rounding."""
    body = _NODE_KERNEL_MODEL_SCRIPT
    for key, val in (("@MODULE@", module), ("@FUNC@", func), ("@ENV@", env), ("@RECORD@", record),
                     ("@CHECKS@", textwrap.dedent(checks).strip())):
        body = body.replace(key, val)
    return TRITON_MODEL_SCRIPT_HEAD + body
