"""Loading and saving weights — strictly.

Two formats are accepted:

* **official** (UBio-MolFM / E2Former-V2): ``torch.save({"model": state_dict})`` with the flattened
  inference yaml beside it (or given explicitly). Tensors may be stored in bf16/fp16.
* **ours**: one file ``torch.save({"format": "openmm-e2former", "format_version": 1, "config": {...},
  "reference_energies": {...}, "state_dict": {...}, "metadata": {...}})``.

Unlike the official loader (``load_state_dict(strict=False)``, which silently keeps random weights),
any missing, unexpected or mis-shaped tensor raises :class:`CheckpointError` listing every problem.
Official tensors that never influence the output (spec §4.3) are accepted and ignored; the
official constant tables (Clebsch–Gordan weights, Wigner J matrices, ...) are checked against ours.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .config import ConfigError, E2FormerConfig, load_config
from .e2former import E2FormerV2
from .so3 import J_MATRICES, PATH_NORM, SO2_SOURCE_ROWS, SO2_WEIGHTS

FORMAT_NAME = "openmm-e2former"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint does not fit the configuration (or is not a checkpoint at all)."""


def official_reference_energies() -> Dict[str, List[float]]:
    """Per-head reference energies in eV per atom (index Z), as the official calculator adds them."""
    with open(Path(__file__).with_name("reference_energies.json")) as fh:
        raw = json.load(fh)
    out = {}
    for name, entry in raw.items():
        if name.startswith("_"):
            continue
        unit = float(entry["energy_to_eV"])
        out[name] = [float(v) * unit for v in entry["reference_energy_per_element"]]
    return out


# ----------------------------------------------------------------------------- key mapping
_RADIAL = {"0": "lin0", "1": "norm0", "3": "lin1", "4": "norm1", "6": "lin2"}
_QK = {"0": "lin1", "1": "norm", "3": "lin2"}

_UNUSED = re.compile(
    r"^decoder\.(embedding\.weight|unifiedtokentoembedding\.(weight|bias)|decoder\.default_node_embedding\.weight|"
    r"decoder\.heads2basis\.(weight|bias)|decoder\.edge_deg_embed_dense\.proj\.(weight|bias))$")
_CONSTANT = re.compile(
    r"(\.expand_index|\.balance_degree_weight|\.so2_tp\.(path_norm|selected_idx|CG_weight)|"
    r"^decoder\.decoder\.Jd_list\.\d+|^decoder\.decoder\.edge_deg_embed_dense\.sph\.W|^decoder\.decoder\.rbf\.offset)$")


def _map_key(key: str) -> Optional[str]:
    """Official key -> our key (None: no rule)."""
    simple = {
        "decoder.embedding_charge.weight": "charge_embedding.weight",
        "decoder.embedding_multiplicity.weight": "multiplicity_embedding.weight",
        "decoder.mix_cm.0.weight": "system_mix.weight",
        "decoder.mix_cm.0.bias": "system_mix.bias",
        "decoder.decoder.edge_deg_embed_dense.source_embedding.weight": "edge_degree.source_embedding.weight",
        "decoder.decoder.edge_deg_embed_dense.target_embedding.weight": "edge_degree.target_embedding.weight",
        "decoder.decoder.norm_final.affine_weight": "norm_final.weight",
        "decoder.decoder.norm_final.affine_bias": "norm_final.bias",
    }
    if key in simple:
        return simple[key]
    m = re.fullmatch(r"decoder\.decoder\.edge_deg_embed_dense\.gbf_projs\.(\d)\.net\.(\d)\.(weight|bias)", key)
    if m and m.group(2) in _RADIAL:
        return f"edge_degree.radial.{m.group(1)}.{_RADIAL[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"decoder\.decoder\.blocks\.(\d+)\.(.*)", key)
    if not m:
        return None
    b, rest = m.group(1), m.group(2)
    pre = f"blocks.{b}."
    m = re.fullmatch(r"(norm_1|norm_ffn)\.affine_(weight|bias)", rest)
    if m:
        return pre + ("norm_attn" if m.group(1) == "norm_1" else "norm_ffn") + "." + m.group(2)
    m = re.fullmatch(r"ffn\.(slinear_1|slinear_2|gate\.gates)\.(weight|bias)", rest)
    if m:
        return pre + "ffn." + {"slinear_1": "lin1", "slinear_2": "lin2", "gate.gates": "gate"}[m.group(1)] + "." + m.group(2)
    m = re.fullmatch(r"ga\.(source_embedding|target_embedding)\.weight", rest)
    if m:
        return pre + f"attn.{m.group(1)}.weight"
    m = re.fullmatch(r"ga\.(fc_easy|rad_func_m0)\.net\.(\d)\.(weight|bias)", rest)
    if m and m.group(2) in _RADIAL:
        mod = "edge_mlp" if m.group(1) == "fc_easy" else "dot_radial"
        return pre + f"attn.{mod}.{_RADIAL[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"ga\.(query|key)_linear\.(weight|weight2|bias)", rest)
    if m:
        return pre + f"attn.{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"ga\.(query|key)_linear\.final_linear\.(\d)\.(weight|bias)", rest)
    if m and m.group(2) in _QK:
        return pre + f"attn.{m.group(1)}.{_QK[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"ga\.(proj_value|proj_first|dot_linear)\.(weight|bias)", rest)
    if m:
        return pre + "attn." + {"proj_value": "value", "proj_first": "out", "dot_linear": "dot_linear"}[m.group(1)] \
            + "." + m.group(2)
    m = re.fullmatch(r"ga\.fc_m0\.(weight|bias)", rest)
    if m:
        return pre + f"attn.dot_out.{m.group(1)}"
    m = re.fullmatch(r"ga\.first_order_tp\.so2_tp\.out_linear\.(\d)\.weight", rest)
    if m:
        return pre + f"attn.tp_mix.{m.group(1)}.weight"
    return None


_HEAD = re.compile(r"head\.(energy_heads|force_heads)\.([^.]+)\.(mlp\.(\d)|sing_linear)\.(weight|bias)")
_HEAD_SLOT = {("0", "weight"): "w0", ("0", "bias"): "b0", ("2", "weight"): "w1", ("2", "bias"): "b1",
              ("4", "weight"): "w2", ("4", "bias"): "b2"}


def _check_constant(key: str, value: torch.Tensor, cfg: E2FormerConfig, problems: List[str]) -> None:
    v = value.detach().to(torch.float64).cpu()

    def expect(ref, tol=1e-6):
        ref = torch.as_tensor(ref, dtype=torch.float64)
        if v.shape != ref.shape or not torch.allclose(v.reshape(ref.shape), ref, atol=tol):
            problems.append(f"constant {key} differs from the E2Former-V2 value (different model?)")

    if key.endswith("so2_tp.CG_weight"):
        expect(SO2_WEIGHTS)
    elif key.endswith("so2_tp.selected_idx"):
        expect([float(i) for i in SO2_SOURCE_ROWS], 0)
    elif key.endswith("so2_tp.path_norm"):
        ref = torch.tensor(PATH_NORM, dtype=torch.float64).view(1, 9, 1)
        expect(ref)
    elif re.search(r"Jd_list\.[0-2]$", key):
        expect(J_MATRICES[int(key[-1])])
    elif key.endswith("rbf.offset"):
        expect(torch.linspace(0.0, cfg.cutoff, cfg.num_basis, dtype=torch.float64), 1e-5)


def convert_official_state_dict(sd: Dict[str, torch.Tensor], model: E2FormerV2) -> Dict[str, torch.Tensor]:
    """Map an official state dict onto ``model``'s parameters; raise CheckpointError on any mismatch."""
    cfg = model.config
    ours = model.state_dict()
    out: Dict[str, torch.Tensor] = {}
    problems: List[str] = []
    unexpected: List[str] = []
    head_parts: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if not torch.is_tensor(value):
            unexpected.append(f"{key} (not a tensor)")
            continue
        if _UNUSED.match(key):
            continue
        if _CONSTANT.search(key):
            _check_constant(key, value, cfg, problems)
            continue
        m = _HEAD.fullmatch(key)
        if m:
            kind, name, part, idx, wb = m.groups()
            if name not in model.head_names:
                unexpected.append(f"{key} (head {name!r} is not in dataset_name_list {model.head_names})")
                continue
            if kind == "force_heads":
                if part != "sing_linear" or wb != "weight" or model.heads.force is None:
                    unexpected.append(f"{key} (direct force head, but the config has AutoGradForce: true)"
                                      if model.heads.force is None else key)
                    continue
                head_parts.setdefault(name, {})["force"] = value
            elif idx is not None and (idx, wb) in _HEAD_SLOT:
                head_parts.setdefault(name, {})[_HEAD_SLOT[(idx, wb)]] = value
            else:
                unexpected.append(key)
            continue
        mine = _map_key(key)
        if mine is None or mine not in ours:
            unexpected.append(key)
            continue
        target = ours[mine]
        if mine.endswith((".query.bias", ".key.bias")):
            value = value.reshape(-1)
        if tuple(value.shape) != tuple(target.shape):
            problems.append(f"{key}: checkpoint shape {tuple(value.shape)} != model shape {tuple(target.shape)}")
            continue
        out[mine] = value
    # assemble stacked heads
    slots = ["w0", "b0", "w1", "b1", "w2", "b2"] + (["force"] if model.heads.force is not None else [])
    official_name = {"w0": "mlp.0.weight", "b0": "mlp.0.bias", "w1": "mlp.2.weight", "b1": "mlp.2.bias",
                     "w2": "mlp.4.weight", "b2": "mlp.4.bias", "force": "sing_linear.weight"}
    missing: List[str] = []
    for slot in slots:
        target = ours[f"heads.{slot}"]
        pieces = []
        for name in model.head_names:
            piece = head_parts.get(name, {}).get(slot)
            kind = "force_heads" if slot == "force" else "energy_heads"
            if piece is None:
                missing.append(f"head.{kind}.{name}.{official_name[slot]}")
                continue
            want = tuple(target.shape[1:])
            if slot == "force":
                piece = piece.reshape(-1) if piece.numel() == want[0] else piece
            if tuple(piece.shape) != want:
                problems.append(f"head.{kind}.{name}.{official_name[slot]}: checkpoint shape "
                                f"{tuple(piece.shape)} != model shape {want}")
                continue
            pieces.append(piece.to(target.dtype))
        if len(pieces) == len(model.head_names):
            out[f"heads.{slot}"] = torch.stack(pieces)
    persistent_buffers = {"rbf_offsets"}
    for key in ours:
        if key.startswith("heads.") or key in persistent_buffers or key in out:
            continue
        missing.append(f"{key} (our name)")
    _raise_if(problems, missing, unexpected)
    return out


def _raise_if(problems: List[str], missing: List[str], unexpected: List[str]) -> None:
    if not (problems or missing or unexpected):
        return
    lines = ["checkpoint does not fit the model configuration:"]
    if missing:
        lines.append(f"  missing ({len(missing)}): " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    if unexpected:
        lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected[:20])
                     + (" ..." if len(unexpected) > 20 else ""))
    if problems:
        lines.append(f"  mismatched ({len(problems)}): " + "; ".join(problems[:20]) + (" ..." if len(problems) > 20 else ""))
    lines.append("  (is the yaml the one that belongs to this checkpoint?)")
    raise CheckpointError("\n".join(lines))


def _load_into(model: E2FormerV2, state: Dict[str, torch.Tensor]) -> None:
    ref = model.state_dict()
    with torch.no_grad():
        for k, v in state.items():
            ref[k].copy_(v.to(ref[k].dtype))


# ----------------------------------------------------------------------------- public API

def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - report what the file is not
        try:
            torch.serialization.add_safe_globals([slice])
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc


def _find_yaml(path: Path) -> Path:
    cands = sorted(path.parent.glob("*.yaml")) + sorted(path.parent.glob("*.yml"))
    if len(cands) == 1:
        return cands[0]
    if not cands:
        raise CheckpointError(f"{path}: official checkpoint without a config; put its flattened yaml next to it "
                              "or pass config=")
    raise CheckpointError(f"{path}: several yaml files next to the checkpoint ({[c.name for c in cands]}); "
                          "pass config= to choose one")


def load_model(path: Optional[os.PathLike] = None, config: Any = None, device: Any = "cpu",
               dtype: torch.dtype = torch.float32, eaas: str = "relative", trainable: bool = False) -> E2FormerV2:
    """Load an official checkpoint or one of ours; see the module docstring. ``path=None`` is
    handled by :func:`openmm_e2former.load_model` (bundled default model).

    The model is returned in eval mode with ``requires_grad=False`` on its parameters (inference:
    forces need gradients with respect to positions only, which also lets the GPU kernels take their
    fully fused backward); pass ``trainable=True`` to fine-tune."""
    if path is None:
        raise CheckpointError("no checkpoint path given")
    path = Path(path)
    if path.is_dir():
        pts = sorted(path.glob("*.pt")) + sorted(path.glob("*.pth"))
        if len(pts) != 1:
            raise CheckpointError(f"{path}: directory must contain exactly one .pt checkpoint, found {len(pts)}")
        path = pts[0]
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    blob = _torch_load(path)
    if not isinstance(blob, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(blob).__name__}")
    if blob.get("format") == FORMAT_NAME:
        if int(blob.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(f"{path}: format version {blob.get('format_version')} is newer than this package")
        cfg = load_config(blob["config"]) if config is None else load_config(config)
        model = E2FormerV2(cfg, blob.get("reference_energies"))
        sd = blob["state_dict"]
        missing, unexpected, problems = [], [], []
        ours = model.state_dict()
        for k, v in sd.items():
            if k not in ours:
                unexpected.append(k)
            elif tuple(v.shape) != tuple(ours[k].shape):
                problems.append(f"{k}: checkpoint shape {tuple(v.shape)} != model shape {tuple(ours[k].shape)}")
        missing = [k for k in ours if k not in sd]
        _raise_if(problems, missing, unexpected)
        _load_into(model, sd)
        model.metadata = dict(blob.get("metadata") or {})
    elif "model" in blob and isinstance(blob["model"], dict):
        try:
            cfg = load_config(config if config is not None else _find_yaml(path))
        except ConfigError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
        model = E2FormerV2(cfg, official_reference_energies())
        _load_into(model, convert_official_state_dict(blob["model"], model))
        model.metadata = {"source": "official", "checkpoint": str(path)}
    else:
        raise CheckpointError(f"{path}: neither an official checkpoint (no 'model' state dict) nor an "
                              f"{FORMAT_NAME} file (keys: {sorted(blob)[:10]})")
    model.set_eaas(eaas)
    # E2FORMER_ALLOW_TF32=1: TF32 tensor cores inside the fused GPU edge MLP (for models created out of
    # reach of the caller, e.g. inside an OpenMM PythonForce); exact fp32 dots by default
    model.set_attention_backend("auto", allow_tf32=os.environ.get("E2FORMER_ALLOW_TF32", "0") == "1")
    model.requires_grad_(bool(trainable))
    return model.to(device=device, dtype=dtype).eval()


def save_model(model: E2FormerV2, path: os.PathLike, metadata: Optional[Dict[str, Any]] = None) -> None:
    """Write the project's single-file format (config + weights + reference energies + metadata)."""
    refs = {}
    for h, name in enumerate(model.head_names):
        n = int(model.reference_length[h])
        refs[name] = model.reference_energy[h, :n].cpu().tolist()
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    blob = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": model.config.to_dict(),
            "reference_energies": refs, "state_dict": sd,
            "metadata": dict(metadata or getattr(model, "metadata", {}) or {})}
    torch.save(blob, path)
