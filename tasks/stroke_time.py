from brainbench.taskspec import SiteHeldOut, TaskSpec, register_task
from brainbench.targets import NumericTarget

TASK = register_task(TaskSpec(
    id="stroke_time",
    endpoint="post-stroke temporal prediction",
    kind="regression",
    dataset="atlas2",
    modalities=("t1",),
    # days since onset span 0.5-1000: the probe fits log1p(days) as the reference does
    target=NumericTarget(key="days", bins=(7.0, 90.0, 365.0), unit="days", transform="log1p"),
    target_description="days post stroke",
    primary_metric="mae",
    min_per_stratum=3,  # label floor: >= 3 per time bin (4 bins: >= 12 people)
    secondary_metrics=("pearson_r",),
    split_variants=(SiteHeldOut(),),  # train on the other sites, test on one unseen
    reference="ATLAS R2.0",
))
