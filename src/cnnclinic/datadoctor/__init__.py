"""The data doctor: leakage between splits, suspicious labels, imbalance, small classes, per-class image
quality and corrupt files, as Findings before training starts (``cnnclinic inspect``)."""

# Importing the check modules registers them (in this order, which is the order of the findings).
from cnnclinic.datadoctor import corrupt_files, class_imbalance, small_class, image_quality, leakage, label_issues  # noqa: F401, I001
from cnnclinic.datadoctor.base import DATA_CHECKS, DataCheck
from cnnclinic.datadoctor.inspection import InspectionReport, check_labels, class_data_facts, inspect_data

__all__ = ["DATA_CHECKS", "DataCheck", "InspectionReport", "check_labels", "class_data_facts", "inspect_data"]
