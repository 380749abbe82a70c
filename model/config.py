"""Model configuration, read from the official *flattened* yaml (``SmallMolConfig``).

Only the keys that change the network are kept; the official file's dead keys
(``encoder_embed_dim``, ``num_encoder_layers``, ... see spec §2.0) are accepted and ignored.
Settings this implementation does not support raise :class:`ConfigError` naming the key,
instead of silently building a different network.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List

#: official head-name aliases (spec §4.4)
HEAD_ALIASES = {"svp-enhance": "tzvpd", "tzvpd-small": "tzvpd", "tzvpd-forceatomfilter": "tzvpd"}


class ConfigError(ValueError):
    """The configuration describes a model this package cannot build."""


@dataclass
class E2FormerConfig:
    channels: int = 256                 # C, from irreps_node_embedding "Cx0e+Cx1e+Cx2e"
    num_layers: int = 4
    num_heads: int = 128                # H
    head_dim: int = 8                   # attn_scalar_head (q/k dim per head)
    num_basis: int = 256                # Gaussian RBF size
    cutoff: float = 4.5                 # Å
    max_neighbors: int = 32
    logit_form: str = "QK_alpha"        # or "QKdot_alpha"
    autograd_forces: bool = True        # False: direct force head
    heads: List[str] = field(default_factory=lambda: ["omol25"])
    avg_degree: float = 23.01
    atom_embed_size: int = 128          # width of the attention's per-element edge embeddings
    num_elements: int = 256             # rows of the attention's element tables (Z < 256)
    degree_num_elements: int = 300      # rows of the edge-degree element tables
    envelope: str = "polynomial5"       # official main branch; "smoothstep" = e2formerv2 branch
    min_dist: float = 1e-4
    #: attention softmax: "official" (the official model, always used for official checkpoints) or "smooth"
    #: (our own models).  official: alpha = w u exp(a - max a) / (sum u exp(a - max a) + 1e-3), which jumps
    #: when another edge becomes the max logit (e.g. an edge entering the cutoff); smooth:
    #: alpha = w u exp(a) / (sum u exp(a) + 1e-3), continuous (docs/model.md "Attention weights").
    attention_softmax: str = "official"

    @property
    def hidden(self) -> int:
        """Hidden width of the radial MLPs (official: min(128, number_of_basis // 2))."""
        return min(128, self.num_basis // 2)

    @property
    def qk_width(self) -> int:
        return self.num_heads * self.head_dim

    def validate(self) -> None:
        if self.channels % self.num_heads:
            raise ConfigError(f"channels ({self.channels}) must be a multiple of num_attn_heads ({self.num_heads})")
        if self.logit_form not in ("QK_alpha", "QKdot_alpha"):
            raise ConfigError(f"unsupported tp_type logit form {self.logit_form!r}")
        if self.envelope not in ("polynomial5", "smoothstep"):
            raise ConfigError(f"unknown envelope {self.envelope!r}")
        if self.attention_softmax not in ("official", "smooth"):
            raise ConfigError(f"attention_softmax must be 'official' or 'smooth', got {self.attention_softmax!r}")
        if not self.heads:
            raise ConfigError("dataset_name_list names no energy head")
        for k in ("num_layers", "num_heads", "head_dim", "num_basis", "max_neighbors"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be positive")
        if self.cutoff <= 0:
            raise ConfigError("max_radius must be positive")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "E2FormerConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown configuration keys: {sorted(unknown)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg


# values the official code accepts but that would build a network we do not implement
_REQUIRED = {
    "norm_layer": ("rms_norm_sh",),
    "attn_type": ("so2-first-order",),
    "ffn_type": ("s3",),
    "basis_type": ("gaussiansmear",),
    "edge_embedtype": ("default",),
    "encoder": ("default",),
}


def _parse_irreps(text: str) -> int:
    parts = [p.strip() for p in str(text).split("+")]
    muls, ls = [], []
    for p in parts:
        m = re.fullmatch(r"(\d+)x(\d+)([eo])", p)
        if not m:
            raise ConfigError(f"cannot parse irreps_node_embedding {text!r}")
        muls.append(int(m.group(1)))
        ls.append(int(m.group(2)))
    if ls != [0, 1, 2] or len(set(muls)) != 1:
        raise ConfigError(
            f"irreps_node_embedding {text!r}: only 'Cx0e+Cx1e+Cx2e' (lmax 2, equal multiplicities) is supported")
    return muls[0]


def config_from_official(raw: Dict[str, Any]) -> E2FormerConfig:
    """Build the config from an official flattened yaml dict (``SmallMolConfig`` fields)."""
    if not isinstance(raw, dict):
        raise ConfigError("official config must be a mapping")
    if "defaults" in raw:
        raise ConfigError("this is a Hydra root config (has 'defaults'); pass the flattened inference yaml")
    if raw.get("backbone", "e2former") != "e2former":
        raise ConfigError(f"unsupported backbone {raw.get('backbone')!r} (only 'e2former')")
    bc = raw.get("backbone_config")
    if not isinstance(bc, dict):
        raise ConfigError("config has no 'backbone_config' mapping")
    for key, allowed in _REQUIRED.items():
        if key in bc and str(bc[key]) not in allowed:
            raise ConfigError(f"backbone_config.{key} = {bc[key]!r} is not supported (supported: {allowed})")
    wc = bc.get("with_cluster", False)
    if wc not in (False, None, "false", "False", "None", 0):
        raise ConfigError(f"backbone_config.with_cluster = {wc!r}: long-range cluster blocks are not supported")
    moe = raw.get("with_moe", "None")
    if moe not in ("None", None, "none"):
        raise ConfigError(f"with_moe = {moe!r} is not supported")
    if "share" in str(raw.get("head_cfg_str", "")):
        raise ConfigError("head_cfg_str 'share' is not supported")
    tp = str(bc.get("tp_type", "QK_alpha"))
    logit = tp.split("+")[0]
    heads: List[str] = []
    for name in str(raw.get("dataset_name_list", "omol25")).split(","):
        name = HEAD_ALIASES.get(name.strip(), name.strip())
        if name and name not in heads:
            heads.append(name)
    try:
        cfg = E2FormerConfig(
            channels=_parse_irreps(bc.get("irreps_node_embedding", "256x0e+256x1e+256x2e")),
            num_layers=int(bc.get("num_layers", 4)),
            num_heads=int(bc.get("num_attn_heads", 128)),
            head_dim=int(bc.get("attn_scalar_head", 8)),
            num_basis=int(bc.get("number_of_basis", 256)),
            cutoff=float(bc.get("max_radius", 4.5)),
            max_neighbors=int(bc.get("max_neighbors", 32)),
            logit_form=logit,
            autograd_forces=bool(raw.get("AutoGradForce", True)),
            heads=heads,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value in official config: {exc}") from exc
    cfg.validate()
    return cfg


def load_config(source: Any) -> E2FormerConfig:
    """Accept an E2FormerConfig, a dict (official flattened or our own), or a yaml path."""
    if isinstance(source, E2FormerConfig):
        return source
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        import yaml

        with open(source) as fh:
            source = yaml.safe_load(fh)
    if not isinstance(source, dict):
        raise ConfigError("config must be a path, a mapping or an E2FormerConfig")
    if "backbone_config" in source or "backbone" in source:
        return config_from_official(source)
    return E2FormerConfig.from_dict(source)
