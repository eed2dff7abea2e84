from brainbench.taskspec import TaskSpec, register_task
from brainbench.targets import SurvivalTarget

TASK = register_task(TaskSpec(
    id="survival_cox",
    endpoint="survival modelling (Cox)",
    kind="survival",
    dataset="upenn_gbm",
    modalities=("t1c", "flair"),
    target=SurvivalTarget(time_key="os_days", event_key="event"),
    target_description="overall survival from surgery (days, event)",
    primary_metric="c_harrell",
    min_per_stratum=5,  # label floor: >= 5 per event status
    secondary_metrics=("c_uno", "logrank_p"),
    select={"session": "11"},
    reference="UPENN-GBM",
))
