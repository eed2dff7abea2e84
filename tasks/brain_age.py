from brainbench.taskspec import TaskSpec, register_task
from brainbench.targets import NumericTarget

TASK = register_task(TaskSpec(
    id="brain_age",
    endpoint="brain age",
    kind="regression",
    dataset="ixi",
    modalities=("t1",),
    target=NumericTarget(key="age", bins=(30.0, 45.0, 60.0, 75.0), unit="years"),
    target_description="age at scan (years)",
    primary_metric="mae",
    secondary_metrics=("pearson_r", "r2"),
    stratify_meta=("site",),
    reference="IXI (alternates: Pixar ds000228, any BIDS participants.tsv)",
))
