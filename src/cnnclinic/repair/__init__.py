"""Auto-repair: applies the Doctor's prescriptions, verifies the cure on the numbers, keeps what worked."""

from cnnclinic.config import needs_fresh_weights
from cnnclinic.repair.formulary import LR_RANGE_TEST, prescriptions_for
from cnnclinic.repair.treatment import TREATMENT_FILE, RepairResult, auto_repair

__all__ = ["LR_RANGE_TEST", "TREATMENT_FILE", "RepairResult", "auto_repair", "needs_fresh_weights", "prescriptions_for"]
