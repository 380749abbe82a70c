"""Own single-file format and the official formats (bf16 / fp16 tensors, config sources)."""
import numpy as np
import pytest
import torch
import yaml

from helpers import FIXTURES, case, model, predict_case

from openmm_e2former import load_model, save_model
from openmm_e2former.model import CheckpointError


def test_own_format_round_trip(tmp_path):
    m = model("tiny_qk")
    path = tmp_path / "mine.pt"
    save_model(m, path, metadata={"note": "round trip"})
    m2 = load_model(path)
    assert m2.metadata["note"] == "round trip"
    assert m2.head_names == m.head_names and m2.config == m.config
    c = case("tiny_qk", "water7_cubic6_pbc")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # multi-threaded CPU scatter sums are not bitwise reproducible
    try:
        a, b = predict_case(m, c), predict_case(m2, c)
    finally:
        torch.set_num_threads(threads)
    assert a["energy"] == b["energy"]
    np.testing.assert_array_equal(a["forces"], b["forces"])


def test_own_format_is_strict(tmp_path):
    m = model("tiny_qk")
    path = tmp_path / "mine.pt"
    save_model(m, path)
    blob = torch.load(path, weights_only=True)
    blob["state_dict"].pop("blocks.0.attn.value.bias")
    blob["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="missing.*blocks.0.attn.value.bias.*|unexpected.*extra.weight"):
        load_model(path)


def test_fp16_official_tensors(tmp_path):
    sd = torch.load(FIXTURES / "tiny_qk" / "checkpoint.pt", weights_only=True)["model"]
    half = {k: (v.half() if v.is_floating_point() and "Jd_list" not in k and "CG_weight" not in k
                and "path_norm" not in k and "rbf.offset" not in k else v) for k, v in sd.items()}
    torch.save({"model": half}, tmp_path / "half.pt")
    (tmp_path / "config.yaml").write_text((FIXTURES / "tiny_qk" / "config.yaml").read_text())
    m = load_model(tmp_path / "half.pt")
    p = dict(m.named_parameters())
    w = p["blocks.0.attn.value.weight"]
    assert w.dtype == torch.float32
    ref = sd["decoder.decoder.blocks.0.ga.proj_value.weight"].half().float()
    assert torch.equal(w, ref)


def test_config_as_dict_and_explicit_path():
    raw = yaml.safe_load((FIXTURES / "tiny_qk" / "config.yaml").read_text())
    a = load_model(FIXTURES / "tiny_qk" / "checkpoint.pt", config=raw)
    b = load_model(FIXTURES / "tiny_qk" / "checkpoint.pt", config=FIXTURES / "tiny_qk" / "config.yaml")
    c = load_model(FIXTURES / "tiny_qk")  # directory with one .pt and one yaml
    z, pos = [8, 1, 1], [[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]
    assert a.predict(z, pos)["energy"] == b.predict(z, pos)["energy"] == c.predict(z, pos)["energy"]


def test_bf16_v15_checkpoint_loads_exactly():
    sd = torch.load(FIXTURES / "v15" / "checkpoint.pt", weights_only=True)["model"]
    m = model("v15")
    assert sum(p.numel() for p in m.parameters()) > 2.3e7
    w = dict(m.named_parameters())["blocks.3.ffn.gate.weight"]
    assert torch.equal(w, sd["decoder.decoder.blocks.3.ffn.gate.gates.weight"].float())


def test_load_on_float64_and_eaas_option():
    m = load_model(FIXTURES / "tiny_qk" / "checkpoint.pt", dtype="float64", eaas="so2")
    assert m.dtype == torch.float64 and m.eaas == "so2"
    with pytest.raises(ValueError, match="eaas"):
        m.set_eaas("bogus")


def test_own_format_keeps_attention_softmax(tmp_path):
    """attention_softmax round-trips through save_model / load_model; files written before the field existed
    (no key in the stored config) load as "official"."""
    import dataclasses
    from openmm_e2former.model import E2FormerV2

    m = model("tiny_qk")
    smooth = E2FormerV2(dataclasses.replace(m.config, attention_softmax="smooth"))
    smooth.load_state_dict(m.state_dict())
    path = tmp_path / "smooth.pt"
    save_model(smooth, path)
    assert torch.load(path, weights_only=True)["config"]["attention_softmax"] == "smooth"
    back = load_model(path)
    assert back.config.attention_softmax == "smooth" and back.blocks[0].attn.smooth_softmax
    z, pos = [8, 1, 1, 8], [[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0], [2.9, 0.3, 0.1]]
    e_smooth = back.predict(z, pos)["energy_model"]
    assert abs(e_smooth - m.predict(z, pos)["energy_model"]) > 1e-6       # really the other softmax
    blob = torch.load(path, weights_only=True)
    del blob["config"]["attention_softmax"]                              # an older file
    torch.save(blob, tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt")
    assert old.config.attention_softmax == "official" and not old.blocks[0].attn.smooth_softmax
    assert abs(old.predict(z, pos)["energy_model"] - m.predict(z, pos)["energy_model"]) < 1e-6
