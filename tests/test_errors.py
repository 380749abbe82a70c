"""Bad input gets a clear error naming the problem."""
import numpy as np
import pytest
import torch

from helpers import FIXTURES, model

from openmm_e2former import load_model
from openmm_e2former.model import CheckpointError, ConfigError

WATER_Z = [8, 1, 1]
WATER = [[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.24, 0.927, 0.0]]


@pytest.mark.parametrize("z,pattern", [([0, 1, 1], "Z=0"), ([8, 1, 300], "Z=300"), ([8, 1, 100], "Fm|Z=100"),
                                       ([8, 1, -1], "Z=-1")])
def test_unsupported_element(z, pattern):
    with pytest.raises(ValueError, match="unsupported element") as exc:
        model().predict(z, WATER)
    assert any(p in str(exc.value) for p in pattern.split("|"))


def test_element_beyond_reference_table_of_head():
    """Z = 100..127 exist in the svp table but not in omol25's (length 100)."""
    m = model()
    with pytest.raises(ValueError, match="omol25"):
        m.predict([8, 1, 101], WATER, head="omol25")
    assert np.isfinite(m.predict([8, 1, 101], WATER, head="svp")["energy"])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_positions(bad):
    pos = np.array(WATER)
    pos[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or infinite.*atoms \\[1\\]"):
        model().predict(WATER_Z, pos)


def test_empty_system():
    """No atoms: a clear error, not a reshape failure deep in the model."""
    m = model()
    with pytest.raises(ValueError, match="no atoms"):
        m.predict(np.zeros(0, dtype=int), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="no atoms"):
        m.energy_and_forces(torch.zeros(0, dtype=torch.long), torch.zeros(0, 3, dtype=m.dtype))


def test_coincident_and_overlapping_atoms():
    with pytest.raises(ValueError, match="atoms 0 and 3 overlap|atoms 3 and 0 overlap"):
        model().predict(WATER_Z + [8], WATER + [[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="overlap.*0.1000"):
        model().predict([8, 8], [[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]])


def test_overlap_through_periodic_boundary():
    cell = np.eye(3) * 5.0
    with pytest.raises(ValueError, match="overlap"):
        model().predict([8, 8], [[0.05, 1.0, 1.0], [4.95 + 0.05, 1.0, 1.0]], cell)


@pytest.mark.parametrize("cell", [np.zeros((3, 3)) + np.diag([5.0, 5.0, 0.0]),
                                  np.array([[5.0, 0, 0], [0, 5.0, 0], [5.0, 5.0, 0]])])
def test_degenerate_cell(cell):
    with pytest.raises(ValueError, match="degenerate cell|singular|zero"):
        model().predict(WATER_Z, WATER, cell, [True, True, True])


def test_pbc_without_cell():
    with pytest.raises(ValueError, match="no cell"):
        model().predict(WATER_Z, WATER, None, [True, True, True])


def test_unknown_head():
    with pytest.raises(ValueError, match="unknown head 'tzvpd'.*omol25"):
        model().predict(WATER_Z, WATER, head="tzvpd")


@pytest.mark.parametrize("kw,pattern", [({"charge": 11}, "charge 11"), ({"charge": -11}, "charge -11"),
                                        ({"multiplicity": 0}, "multiplicity 0"),
                                        ({"multiplicity": 21}, "multiplicity 21")])
def test_charge_multiplicity_range(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        model().predict(WATER_Z, WATER, **kw)


def test_shape_errors():
    with pytest.raises(ValueError, match="positions must have shape"):
        model().predict(WATER_Z, WATER[:2])
    with pytest.raises(ValueError, match="cell must be a 3x3"):
        model().predict(WATER_Z, WATER, np.eye(2))


# ------------------------------------------------------------------ checkpoints
def test_config_checkpoint_mismatch_qkdot_config():
    with pytest.raises(CheckpointError) as exc:
        load_model(FIXTURES / "tiny_qk" / "checkpoint.pt", config=FIXTURES / "tiny_qkdot" / "config.yaml")
    msg = str(exc.value)
    assert "missing" in msg and "dot_" in msg


def test_config_checkpoint_mismatch_shapes():
    with pytest.raises(CheckpointError, match="shape"):
        load_model(FIXTURES / "tiny_qk" / "checkpoint.pt", config=FIXTURES / "v15" / "config.yaml")


def test_direct_head_checkpoint_with_autograd_config():
    with pytest.raises(CheckpointError, match="force_heads.*AutoGradForce"):
        load_model(FIXTURES / "tiny_direct" / "checkpoint.pt", config=FIXTURES / "tiny_qkdot" / "config.yaml")


def _write(tmp_path, sd, variant="tiny_qk"):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": sd}, path)
    (tmp_path / "config.yaml").write_text((FIXTURES / variant / "config.yaml").read_text())
    return path


def test_missing_key_is_reported(tmp_path):
    sd = torch.load(FIXTURES / "tiny_qk" / "checkpoint.pt", weights_only=True)["model"]
    del sd["decoder.decoder.blocks.1.ga.proj_value.weight"]
    del sd["head.energy_heads.svp.mlp.4.bias"]
    with pytest.raises(CheckpointError) as exc:
        load_model(_write(tmp_path, sd))
    assert "blocks.1.attn.value.weight" in str(exc.value) and "head.energy_heads.svp.mlp.4.bias" in str(exc.value)


def test_unexpected_key_is_reported(tmp_path):
    sd = torch.load(FIXTURES / "tiny_qk" / "checkpoint.pt", weights_only=True)["model"]
    sd["decoder.decoder.long_blocks.0.ga.proj_zero.weight"] = torch.zeros(3, 32, 32)
    with pytest.raises(CheckpointError, match="unexpected.*long_blocks"):
        load_model(_write(tmp_path, sd))


def test_wrong_constant_is_reported(tmp_path):
    sd = torch.load(FIXTURES / "tiny_qk" / "checkpoint.pt", weights_only=True)["model"]
    sd["decoder.decoder.blocks.0.ga.first_order_tp.so2_tp.CG_weight"] *= -1
    with pytest.raises(CheckpointError, match="CG_weight"):
        load_model(_write(tmp_path, sd))


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "junk.pt"
    p.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_model(p)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nothing.pt")


def test_official_checkpoint_without_yaml(tmp_path):
    p = tmp_path / "c.pt"
    p.write_bytes((FIXTURES / "tiny_qk" / "checkpoint.pt").read_bytes())
    with pytest.raises(CheckpointError, match="without a config"):
        load_model(p)


def test_unsupported_config_values(tmp_path):
    import yaml

    raw = yaml.safe_load((FIXTURES / "tiny_qk" / "config.yaml").read_text())
    for key, value, pattern in [("with_cluster", "node", "with_cluster"), ("norm_layer", "layer_norm", "norm_layer"),
                                ("irreps_node_embedding", "32x0e+32x1e", "irreps")]:
        bad = {**raw, "backbone_config": {**raw["backbone_config"], key: value}}
        with pytest.raises((ConfigError, CheckpointError), match=pattern):
            load_model(FIXTURES / "tiny_qk" / "checkpoint.pt", config=bad)
    with pytest.raises((ConfigError, CheckpointError), match="Hydra"):
        load_model(FIXTURES / "tiny_qk" / "checkpoint.pt", config={"defaults": [], "backbone_config": {}})


def test_errors_leave_model_usable():
    m = model()
    with pytest.raises(ValueError):
        m.predict(WATER_Z, [[np.nan] * 3] * 3)
    assert np.isfinite(m.predict(WATER_Z, WATER)["energy"])
