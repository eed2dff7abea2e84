from brainbench.taskspec import TaskSpec, register_task
from brainbench.targets import ClassTarget

TASK = register_task(TaskSpec(
    id="idh_status",
    endpoint="molecular status (IDH mutant vs wildtype)",
    kind="classification",
    dataset="ucsf_pdgm",
    modalities=("t1c", "flair"),
    target=ClassTarget(key="idh", classes=("wildtype", "mutant")),
    target_description="IDH status",
    primary_metric="auc",
    min_per_stratum=5,  # label floor: >= 5 per class
    secondary_metrics=("balanced_accuracy",),
    reference="UCSF-PDGM (T1c + FLAIR)",
))
