"""The register tests hand over what the eval stage passed: they reuse its reversal split and students."""

from tests.evaluate.conftest import memorized_student_dir, reversal_data_dir

__all__ = ["memorized_student_dir", "reversal_data_dir"]
