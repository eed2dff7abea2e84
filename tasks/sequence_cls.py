from brainbench.taskspec import TaskSpec, register_task
from brainbench.targets import ModalityTarget

TASK = register_task(TaskSpec(
    id="sequence_cls",
    endpoint="MRI sequence classification (T1, T1c, T2, FLAIR)",
    kind="classification",
    dataset="brats2021",
    modalities=("t1", "t1c", "t2", "flair"),
    # every modality image of a subject is its own sample; all four stay on one side of the split
    target=ModalityTarget(classes=("t1", "t1c", "t2", "flair")),
    target_description="sequence of the image",
    primary_metric="auc",
    min_per_stratum=5,  # label floor: >= 5 people (each gives 4 images)
    secondary_metrics=("balanced_accuracy",),
    reference="BraTS 2021",
))
