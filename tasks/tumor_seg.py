from brainbench.taskspec import TaskSpec, register_task
from brainbench.targets import ClassTarget

TASK = register_task(TaskSpec(
    id="tumor_seg",
    endpoint="tumour segmentation (WT / TC / ET)",
    kind="segmentation",
    dataset="brats2021",
    modalities=("t1", "t1c", "t2", "flair"),
    target=ClassTarget(key="seg", classes=("WT", "TC", "ET")),
    target_description="voxel labels 1 NCR, 2 oedema, 4 ET -> regions WT, TC, ET",
    primary_metric="dice_wt",
    secondary_metrics=("dice_tc", "dice_et", "hd95_wt"),
    status="pending",
    pending_reason="segmentation heads on frozen patch tokens are delivered by issue #3",
    reference="BraTS 2021 (alternates: BraTS 2023 GLI/MEN/MET)",
))
