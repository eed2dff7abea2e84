"""Representation analyses of frozen backbones (issue 18), on cached features and patch tokens.

What a probe score cannot show: whether patch tokens are organised by anatomy (PCA maps, a
tissue-class probe), whether they separate lesions from healthy tissue (a patch-level lesion
probe, AUC), how much volume features encode the acquisition site (lower = more invariant), and
how similar two backbones' representations are (linear CKA, kNN retrieval agreement). Also the
pretraining-contamination declarations (`brainbench.analyses.contamination`).

`brainbench.analyses.run.analyze` is the entry point of ``brainbench analyze`` / ``make
analyze``; its rows go into the store's analyses table (`brainbench.store.AnalysisResult`).
"""

ANALYSES = ("pca_map", "tissue_probe", "lesion_probe", "site_probe", "cka", "knn_agreement")
