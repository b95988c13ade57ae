"""The doctor: watches training, names pathologies from measured evidence and prescribes cures."""

from cnnclinic.doctor.doctor import Doctor
from cnnclinic.doctor.finding import Finding, Prescription
from cnnclinic.doctor.history import RunSoFar
from cnnclinic.doctor.render import render_finding
from cnnclinic.doctor.symptoms import SYMPTOMS

__all__ = ["SYMPTOMS", "Doctor", "Finding", "Prescription", "RunSoFar", "render_finding"]
