"""Switches, the launch device and the input form shared by the node-level kernels (``cg_triton``,
``pairdot_triton``, ``rmsnorm_triton``, ``gate_triton``) and the model code that calls them."""
from __future__ import annotations

import contextlib
import os

import torch


def env_switch(name: str, default: str = "1") -> bool:
    """A node-level kernel's environment switch: "1" on (the default on CUDA since session 14, when all three were
    checked against float64 and timed on an H200: V1.5 10k TF32 +30 %, 100k bf16 +36 %), "0" off, anything else an
    error naming the variable."""
    val = os.environ.get(name, default)
    if val not in ("0", "1"):
        raise ValueError(f"{name}={val!r}: expected '0' or '1'")
    return val == "1"


def node_kernel_usable(t: torch.Tensor, name: str, cuda_default: str = "1") -> bool:
    """Whether the model may hand ``t`` to the kernel switched by ``name``: triton imports, the switch is on, ``t``
    is on CUDA (on by default) or the Triton interpreter runs (only with the switch set to "1" explicitly, so the
    interpreter's CPU tests of other kernels keep the PyTorch form), and torch.compile is not tracing (set_compile
    fuses the PyTorch form itself).  ``cuda_default``: "0" for a kernel not yet timed on a GPU (opt-in).  The caller
    checks what is particular to its kernel (dtype, route)."""
    from . import HAS_TRITON

    if not HAS_TRITON or torch.compiler.is_compiling():
        return False
    if t.is_cuda:
        return env_switch(name, default=cuda_default)
    return os.environ.get("TRITON_INTERPRET") == "1" and env_switch(name, default="0")


def launch_device(device: torch.device):
    """The launch's device as the current one (a model on cuda:1 while cuda:0 is current)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def float32_or_bf16(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the node-level kernels read it: contiguous float32 or bf16 (each load converted to float32 in the
    kernel, exactly), anything else as float32."""
    return x.contiguous() if x.dtype in (torch.float32, torch.bfloat16) else x.to(torch.float32).contiguous()
