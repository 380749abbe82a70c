"""Switches and the launch device shared by the opt-in node-level kernels (``cg_triton``, ``pairdot_triton``,
``rmsnorm_triton``) and the model code that calls them."""
from __future__ import annotations

import contextlib
import os

import torch


def env_switch(name: str) -> bool:
    """An opt-in kernel's environment switch: "1" on, "0" (the default until it is timed on a GPU) off, anything
    else an error naming the variable."""
    val = os.environ.get(name, "0")
    if val not in ("0", "1"):
        raise ValueError(f"{name}={val!r}: expected '0' or '1'")
    return val == "1"


def node_kernel_usable(t: torch.Tensor, name: str) -> bool:
    """Whether the model may hand ``t`` to the kernel switched by ``name``: triton imports, the switch is on, ``t``
    is on CUDA (or the Triton interpreter runs), and torch.compile is not tracing (set_compile fuses the PyTorch
    form itself).  The caller checks what is particular to its kernel (dtype, route)."""
    from . import HAS_TRITON

    if not HAS_TRITON or torch.compiler.is_compiling():
        return False
    return env_switch(name) and (t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def launch_device(device: torch.device):
    """The launch's device as the current one (a model on cuda:1 while cuda:0 is current)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
