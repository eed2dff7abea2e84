"""Built-in backbones; importing this package registers them (see brainbench.backbone)."""

from brainbench.baselines import braindino, random_init  # noqa: F401  (registration)
from brainbench.baselines import intensity, oracle  # noqa: F401  (the controls)
from brainbench.baselines import brainiac, clip, dinov2, dinov3_natural, swinunetr_ssl  # noqa: F401

clip.register_biomedclip_if_cached()  # only when its files are in the local HF cache
