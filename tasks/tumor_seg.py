from brainbench.taskspec import TaskSpec, register_task
from brainbench.targets import SegmentationTarget

TASK = register_task(TaskSpec(
    id="tumor_seg",
    endpoint="tumour segmentation (WT / TC / ET)",
    kind="segmentation",
    dataset="brats2021",
    modalities=("t1", "t1c", "t2", "flair"),
    # the label map in targets["seg"]; meta["label_scheme"] says 2021 (ET=4) or 2023 (ET=3)
    target=SegmentationTarget(key="seg", scheme_key="label_scheme", regions=("WT", "TC", "ET")),
    target_description="voxel labels (2021: 1 NCR, 2 oedema, 4 ET; 2023: ET=3) -> regions "
                       "WT, TC, ET",
    primary_metric="dice_wt",
    secondary_metrics=("dice_tc", "dice_et", "hd95_wt", "hd95_tc", "hd95_et", "head_params",
                       "backbone_params"),
    reference="BraTS 2021 (alternates: BraTS 2023 GLI/MEN/MET)",
))
