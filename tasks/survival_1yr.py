from brainbench.taskspec import PrecisionRule, TaskSpec, register_task
from brainbench.targets import SurvivalHorizonTarget

TASK = register_task(TaskSpec(
    id="survival_1yr",
    endpoint="binary survival (died <= 365 d vs alive > 365 d)",
    kind="classification",
    dataset="upenn_gbm",
    modalities=("t1c", "flair"),
    target=SurvivalHorizonTarget(time_key="os_days", event_key="event", horizon_days=365.0),
    target_description="death within 365 days of surgery (censored before 365 d excluded)",
    primary_metric="auc",
    min_per_stratum=5,  # label floor: >= 5 per class
    precision_rule=PrecisionRule((1.0,), "bf16 moved AUC by +1.20 fp32 seed sd at fraction 1 "
                                 "(0.757 -> 0.781) in the default sweep"),
    secondary_metrics=("balanced_accuracy",),
    select={"session": "11"},  # pre-operative baseline scan; follow-ups are another time point
    reference="UPENN-GBM",
))
