from brainbench.taskspec import DatasetVariant, SiteHeldOut, TaskSpec, register_task
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
    min_per_stratum=2,  # label floor: >= 2 per age bin (5 bins: >= 10 people)
    secondary_metrics=("pearson_r", "r2"),
    split_variants=(SiteHeldOut(),),  # train on the other sites, test on one unseen
    stratify_meta=("site",),
    reference="IXI (alternates: Pixar ds000228, any BIDS participants.tsv)",
    alternates=(DatasetVariant(
        dataset="bids",
        # bins only balance the split; these cover child (ds000228) and adult BIDS studies
        target=NumericTarget(key="age", bins=(6.0, 9.0, 18.0, 40.0, 65.0), unit="years"),
        target_description="age (years) from the BIDS participants.tsv age column",
        stratify_meta=("site",),
        reference="OpenNeuro ds000228 (Pixar) or any BIDS dataset with an age column",
    ),),
))
