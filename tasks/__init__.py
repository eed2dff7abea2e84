"""Task cards: one declarative module per endpoint. Importing this package registers them all."""

from brainbench.tasks import (  # noqa: F401
    brain_age,
    idh_status,
    neurodegen_cls,
    neurodev_cls,
    sequence_cls,
    stroke_time,
    survival_1yr,
    survival_cox,
    tumor_seg,
)
