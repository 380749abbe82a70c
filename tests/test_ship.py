"""training.ship: a new training round becomes the bundled default with the earlier history kept."""
import copy
import hashlib

import pytest
import torch

from openmm_e2former import default_model_path, load_model
from training.ship import ship


def _run_export(tmp_path, **change):
    """A stand-in for ``training.train``'s export: the bundled file with one run's own metadata."""
    blob = torch.load(default_model_path(), map_location="cpu", weights_only=False)
    meta = blob["metadata"]
    run = dict(step=123, config=copy.deepcopy(meta["training"]["config"]), ema_decay=0.999)
    run["config"]["train"]["stress_weight"] = 3e4
    blob["metadata"] = dict(name=meta["name"], data=dict(meta["data"], frames=777, dirs=["/tmp/somewhere"]),
                            training=run, validation={"all": {"force_mae_meV_per_A": 1.0}}, units=meta["units"])
    with torch.no_grad():
        for v in blob["state_dict"].values():
            if v.is_floating_point():
                v.mul_(1.01)
    blob.update(change)
    path = tmp_path / "model.pt"
    torch.save(blob, path)
    return path, blob


def test_ship_keeps_history_and_new_weights(tmp_path):
    new, blob = _run_export(tmp_path)
    out = tmp_path / "default.pt"
    old_meta = torch.load(default_model_path(), map_location="cpu", weights_only=False)["metadata"]
    meta = ship(new, default_model_path(), out, "9.9-test", "a test round", 1.5, "labelled (test)", "note", "limits")
    rounds = meta["training"]["rounds"]
    assert len(rounds) == len(old_meta["training"]["rounds"]) + 1
    assert rounds[-1]["steps"] == 123 and rounds[-1]["frames"] == 777 and rounds[-1]["note"] == "a test round"
    assert rounds[-1]["loss_weights"]["stress_weight"] == 3e4
    assert meta["data"]["dirs"] == ["labelled (test)"]                    # no local paths shipped
    assert meta["previous_version"]["version"] == old_meta["version"]
    m = load_model(out)
    assert m.metadata["version"] == "9.9-test" and m.metadata["status_note"] == "note"
    sd = m.state_dict()
    for k, v in blob["state_dict"].items():
        torch.testing.assert_close(sd[k], v.to(sd[k].dtype), rtol=0, atol=0)


def test_ship_refuses_a_different_model(tmp_path):
    cfg = dict(torch.load(default_model_path(), map_location="cpu", weights_only=False)["config"], channels=32)
    new, _ = _run_export(tmp_path, config=cfg)
    with pytest.raises(ValueError, match="config"):
        ship(new, default_model_path(), tmp_path / "x.pt", "v", "r", 1.0, "d", "s", "l")


def test_update_note_keeps_the_weights(tmp_path):
    from training.ship import main

    out = tmp_path / "default.pt"
    src = torch.load(default_model_path(), map_location="cpu", weights_only=False)
    assert main(["--update-note", "--status-note", "validated over 100 ps", "--out", str(out)]) == 0
    new = torch.load(out, map_location="cpu", weights_only=False)
    assert new["metadata"]["status_note"] == "validated over 100 ps"
    assert new["metadata"]["version"] == src["metadata"]["version"]
    assert new["metadata"]["limits"] == src["metadata"]["limits"]
    h = hashlib.sha256(default_model_path().read_bytes()).hexdigest()[:16]
    before = list(src["metadata"].get("weights_validated_as", []))
    assert new["metadata"]["weights_validated_as"] == before + [h]     # earlier hashes kept, this file's added
    assert new["config"] == src["config"] and new["reference_energies"] == src["reference_energies"]
    for k, v in src["state_dict"].items():
        assert torch.equal(new["state_dict"][k], v), k
    # a second update keeps the first hash and adds the intermediate file's
    out2 = tmp_path / "default2.pt"
    assert main(["--update-note", "--status-note", "again", "--previous", str(out), "--out", str(out2)]) == 0
    hashes = torch.load(out2, map_location="cpu", weights_only=False)["metadata"]["weights_validated_as"]
    h2 = hashlib.sha256(out.read_bytes()).hexdigest()[:16]
    assert hashes == before + [h, h2]
    with pytest.raises(SystemExit):                      # a new round still needs its arguments
        main(["--status-note", "x", "--out", str(tmp_path / "y.pt")])
