"""openmm-e2former: the E2Former-V2 equivariant transformer potential for OpenMM.

Importing this package is cheap (no torch, no triton): openmm-ml imports every installed
plugin, so heavy modules load only when a model is actually used.

    >>> from openmm_e2former import load_model
    >>> model = load_model("checkpoint.pt")          # official (+ yaml beside it) or ours
    >>> out = model.predict(atomic_numbers, positions_angstrom)
    >>> out["energy"], out["forces"]                   # eV, eV/Å
"""
from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.1.0"
__all__ = ["load_model", "save_model", "default_model_path", "DefaultModelUnavailable", "__version__"]

#: file name of the bundled default model inside the package
DEFAULT_MODEL_FILE = "e2formerv2_default.pt"


class DefaultModelUnavailable(RuntimeError):
    """No bundled default model is installed; pass a checkpoint path instead."""


def default_model_path() -> Path:
    """Path of the bundled default model (it may not exist yet)."""
    return Path(__file__).with_name("data") / DEFAULT_MODEL_FILE


def _dtype(dtype):
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        table = {"float32": torch.float32, "single": torch.float32, "float64": torch.float64,
                 "double": torch.float64}
        if dtype not in table:
            raise ValueError(f"unknown dtype {dtype!r}; use 'float32' or 'float64'")
        return table[dtype]
    return dtype


def load_model(path: "os.PathLike | str | None" = None, config=None, device="cpu", dtype=None,
               eaas: str = "relative", trainable: bool = False):
    """Load an E2Former-V2 model.

    path:   an official checkpoint (``{"model": state_dict}``; its flattened yaml beside it or given
            as ``config``) or a file in this project's format; ``None`` loads the bundled default model.
    config: yaml path / dict / E2FormerConfig (only needed for official checkpoints without a yaml beside).
    device, dtype: where and in which precision to run (float32 default, float64 supported).
    eaas:   'relative' (default, exact and translation-safe) or 'so2' (the official absolute-position route).
    trainable: keep ``requires_grad`` on the parameters (default False: an inference model).

    Loading is strict: a checkpoint that does not fit the configuration raises CheckpointError listing
    the missing / unexpected / mis-shaped tensors.
    """
    from .model.checkpoint import load_model as _load

    if path is None:
        path = default_model_path()
        if not path.exists():
            raise DefaultModelUnavailable(
                "no bundled default E2Former-V2 model is installed with this version of openmm-e2former; "
                "pass a checkpoint explicitly (load_model(path) / MLPotential('e2formerv2', modelPath=...))")
        model = _load(path, config=config, device=device, dtype=_dtype(dtype), eaas=eaas, trainable=trainable)
        _warn_if_preview(model)
        return model
    return _load(path, config=config, device=device, dtype=_dtype(dtype), eaas=eaas, trainable=trainable)


_PREVIEW_WARNED = False


def _warn_if_preview(model) -> None:
    """Say once per process what the bundled model is validated for, when its metadata ``status`` is
    "preview" or "beta" (a released model has status "stable" and stays silent)."""
    global _PREVIEW_WARNED
    meta = getattr(model, "metadata", None) or {}
    status = meta.get("status")
    if status in ("preview", "beta") and not _PREVIEW_WARNED:
        import warnings

        _PREVIEW_WARNED = True
        warnings.warn(f"the bundled default E2Former-V2 model {meta.get('version', '')} is a {status.upper()}: "
                      + str(meta.get("status_note", "")), UserWarning, stacklevel=3)


def save_model(model, path, metadata=None) -> None:
    """Save ``model`` in the project's single-file format (config + weights + reference energies)."""
    from .model.checkpoint import save_model as _save

    _save(model, path, metadata)
