"""Built-in backbones; importing this package registers them (see brainbench.backbone)."""

from brainbench.baselines import braindino, random_init  # noqa: F401  (registration)
