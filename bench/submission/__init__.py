"""Submitting a backbone that is not built in: a card or Python file, validated, benchmarked,
bundled (see SUBMITTING.md at the repository root)."""

from brainbench.submission.source import backbone_from_path, is_submission_path, submission_kind

__all__ = ["backbone_from_path", "is_submission_path", "submission_kind"]
