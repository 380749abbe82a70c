"""E2Former-V2 network in pure PyTorch (installed as ``openmm_e2former.model``; no OpenMM here)."""
from .checkpoint import CheckpointError, load_model, save_model, official_reference_energies
from .config import ConfigError, E2FormerConfig, config_from_official, load_config
from .e2former import E2FormerV2
from .neighbors import neighbor_list

__all__ = ["E2FormerV2", "E2FormerConfig", "ConfigError", "CheckpointError", "load_model", "save_model",
           "load_config", "config_from_official", "official_reference_energies", "neighbor_list"]
