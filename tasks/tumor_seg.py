from brainbench.metrics import REGION_METRIC_DIRECTION, region_metric
from brainbench.taskspec import TaskSpec, register_task
from brainbench.targets import SegmentationTarget

TARGET = SegmentationTarget(key="seg", scheme_key="label_scheme", regions=("WT", "TC", "ET"))
SCORES = [region_metric(family, region) for family in REGION_METRIC_DIRECTION
          for region in TARGET.regions]  # dice_wt, dice_tc, dice_et, hd95_wt, ...

TASK = register_task(TaskSpec(
    id="tumor_seg",
    endpoint="tumour segmentation (WT / TC / ET)",
    kind="segmentation",
    dataset="brats2021",
    modalities=("t1", "t1c", "t2", "flair"),
    # the label map in targets["seg"]; meta["label_scheme"] says 2021 (ET=4) or 2023 (ET=3)
    target=TARGET,
    target_description="voxel labels (2021: 1 NCR, 2 oedema, 4 ET; 2023: ET=3) -> regions "
                       "WT, TC, ET",
    primary_metric=SCORES[0],
    min_per_stratum=3,  # label floor: >= 3 subjects
    secondary_metrics=(*SCORES[1:], "head_params", "backbone_params"),
    reference="BraTS 2021 (alternates: BraTS 2023 GLI/MEN/MET)",
))
