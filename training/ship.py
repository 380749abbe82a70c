"""Make a trained model the bundled default: carry the training history over from the file it replaces.

``training.train`` exports ``run/model.pt`` with the metadata of that one run (its own data paths, its own
step count).  The bundled file also records the rounds before it (classical-MD round, active learning, ...).
This script writes the new weights with the previous file's history plus one new round, a version string,
and the status / limits texts that ``openmm_e2former.load_model`` shows when the model is loaded.

    python -m training.ship RUN/model.pt --version 0.3-beta --round-note "..." --minutes 4.9 \\
        --data-note "..." --status-note "..." --limits "..." [--previous FILE] [--out FILE]

The weights, config and reference energies come from the new file unchanged; the config and reference
energies must equal the previous file's (a different architecture or reference set is a new model, not a new
round), otherwise it stops with an error.

After a validation campaign, only the texts change (same weights):

    python -m training.ship --update-note --status-note "..." [--limits "..."] [--out FILE]

rewrites the bundled file with the new texts, checks that the weights, config and reference energies are
byte-for-byte the same tensors, and records the previous file's hash as ``metadata['weights_validated_as']`` (runs
record ``water_md.model_sha256`` of the file they used, so the validation runs stay traceable to these weights).
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Optional, Sequence

import torch


def ship(new_path: Path, previous_path: Path, out_path: Path, version: str, round_note: str, minutes: float,
         data_note: str, status_note: str, limits: str) -> dict:
    new = torch.load(new_path, map_location="cpu", weights_only=False)
    old = torch.load(previous_path, map_location="cpu", weights_only=False)
    for key in ("format", "format_version", "config", "reference_energies"):
        if new.get(key) != old.get(key):
            raise ValueError(f"{new_path} and {previous_path} differ in {key!r}: not a new round of the same model")
    meta_new, meta = new["metadata"], copy.deepcopy(old["metadata"])
    rounds = list(meta.get("training", {}).get("rounds", []))
    run = meta_new["training"]
    rounds.append(dict(round=len(rounds), steps=int(run["step"]), minutes=float(minutes),
                       frames=int(meta_new["data"]["frames"]), note=round_note,
                       loss_weights={k: run["config"]["train"].get(k) for k in
                                     ("energy_weight", "force_weight", "stress_weight")},
                       lr=run["config"]["train"].get("lr")))
    cfg = copy.deepcopy(run["config"])
    cfg["out_dir"] = "run"
    cfg["data"]["dirs"] = [data_note]
    cfg["data"]["refs"] = meta["training"]["config"]["data"].get("refs")
    cfg["train"]["init_from"] = f"the {meta.get('version', 'previous')} bundled weights (EMA)"
    meta["training"] = dict(step=int(run["step"]), config=cfg, ema_decay=run.get("ema_decay"), rounds=rounds)
    meta["data"] = dict(meta_new["data"], dirs=[data_note])
    meta["validation"] = meta_new["validation"]
    meta["units"] = meta_new.get("units", meta.get("units"))
    meta.update(version=version, limits=limits, status_note=status_note,
                previous_version=dict(version=old["metadata"].get("version"),
                                      validation=old["metadata"].get("validation")))
    blob = dict(new, metadata=meta)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, out_path)
    return meta


def update_note(path: Path, out_path: Path, status_note: str, limits: Optional[str] = None) -> dict:
    """Replace the status (and optionally limits) text of a model file; the weights stay as they are."""
    import hashlib

    blob = torch.load(path, map_location="cpu", weights_only=False)
    file_hash = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    meta = copy.deepcopy(blob["metadata"])
    hashes = list(meta.get("weights_validated_as", []))
    if file_hash not in hashes:
        hashes.append(file_hash)
    meta.update(status_note=status_note, weights_validated_as=hashes)
    if limits is not None:
        meta["limits"] = limits
    new = dict(blob, metadata=meta)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(new, out_path)
    check = torch.load(out_path, map_location="cpu", weights_only=False)
    for key in ("format", "format_version", "config", "reference_energies"):
        if check.get(key) != blob.get(key):
            raise RuntimeError(f"{out_path}: {key!r} changed while updating the note")
    a, b = blob["state_dict"], check["state_dict"]
    if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
        raise RuntimeError(f"{out_path}: the weights changed while updating the note")
    return meta


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, nargs="?", help="the exported model.pt of the new training run")
    ap.add_argument("--update-note", action="store_true",
                    help="only replace --status-note (and --limits) of --previous, writing --out; same weights")
    here = Path(__file__).resolve().parents[1] / "openmm_e2former" / "data" / "e2formerv2_default.pt"
    ap.add_argument("--previous", type=Path, default=here)
    ap.add_argument("--out", type=Path, default=here)
    ap.add_argument("--version")
    ap.add_argument("--round-note")
    ap.add_argument("--minutes", type=float, help="training wall time of the new round")
    ap.add_argument("--data-note", help="where the training frames came from (no local paths)")
    ap.add_argument("--status-note", required=True)
    ap.add_argument("--limits")
    a = ap.parse_args(argv)
    if a.update_note:
        meta = update_note(a.previous, a.out, a.status_note, a.limits)
        print(f"wrote {a.out}: version {meta['version']}, new status note; weights unchanged "
              f"(validated as {', '.join(meta['weights_validated_as'])})")
        return 0
    missing = [n for n in ("model", "version", "round_note", "minutes", "data_note", "limits")
               if getattr(a, n) is None]
    if missing:
        ap.error("a new round needs " + ", ".join("--" + n.replace("_", "-") if n != "model" else "MODEL"
                                                 for n in missing))
    meta = ship(a.model, a.previous, a.out, a.version, a.round_note, a.minutes, a.data_note, a.status_note,
                a.limits)
    print(f"wrote {a.out}: version {meta['version']}, {len(meta['training']['rounds'])} rounds, "
          f"{a.out.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
