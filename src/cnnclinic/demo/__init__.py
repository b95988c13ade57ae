"""The five case studies of the analysis: each pathology reproduced, named by the Doctor and cured."""

from cnnclinic.demo.runner import DemoData, ScenarioResult, run_demo, select_scenarios
from cnnclinic.demo.scenarios import SCENARIOS, Scenario

__all__ = ["SCENARIOS", "DemoData", "Scenario", "ScenarioResult", "run_demo", "select_scenarios"]
