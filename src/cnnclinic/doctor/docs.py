"""Generate ``docs/symptoms.md`` from the symptom registry: ``python -m cnnclinic.doctor.docs [PATH]``."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from pathlib import Path

from cnnclinic.doctor.symptoms import SYMPTOMS

HEADER = """# Symptoms the doctor recognises

Generated from the detector docstrings in `src/cnnclinic/doctor/symptoms/` by
`python -m cnnclinic.doctor.docs`; do not edit by hand (a test fails when this file is stale).

Every threshold can be overridden, e.g. `Doctor(model, optimizer, num_classes=K,
thresholds={"dying_relu": {"dead_unit_fraction": 0.6}})` or in the run config
`doctor.thresholds: {dying_relu: {dead_unit_fraction: 0.6}}`. Unknown names are an error.

How the doctor measures: every step it reads the loss and the total gradient norm (one device sync);
every `sample_every` steps (default 10; also steps 0, 2, 4, 6, 8, and at least once per epoch when
epochs are shorter) it measures per-layer gradient and weight norms, the update-to-weight ratio
‖Δw‖/‖w‖ of the following optimizer step (weights copied before the step and compared at the next
`after_backward`) and activation statistics from hooks that exist only for that one forward pass.
Activation modules (`nn.ReLU`, `nn.ReLU6`, `nn.Sigmoid`, `nn.Tanh`) are hooked directly; functional calls
(`F.relu`, `torch.sigmoid`, `x.tanh()`, ...) are seen through a `TorchFunctionMode` active only during
the sampled forward pass and are named `relu#0`, `sigmoid#1`, ... in call order. At the end of each epoch
it summarises training loss/accuracy and, when validation logits are given, validation loss, accuracy,
one-vs-rest ROC AUC per class and the confusion matrix. `epoch` in a finding is 1-based, `step` counts
`after_backward` calls from 0.

Root causes over echoes: when `exploding_gradient`, `vanishing_gradient`, `dying_relu` or
`saturated_activation` is found, `loss_stagnation` and `oscillating_loss` are not reported separately but
appear in the root finding's `evidence.also_seen`. Each (symptom, subject) is reported once, with the
epoch it was first seen and the latest evidence. NaN/Inf is critical and sets `doctor.should_stop`.
"""


def render_markdown() -> str:
    parts = [HEADER]
    for symptom_id in sorted(SYMPTOMS):
        cls = SYMPTOMS[symptom_id]
        parts.append(f"\n## `{symptom_id}`\n\n{inspect.getdoc(cls)}\n")
        rows = ["| threshold | default | meaning |", "|---|---|---|"]
        for field in dataclasses.fields(cls.Thresholds):
            rows.append(f"| `{field.name}` | {field.default:g} | {field.metadata.get('help', '')} |")
        parts.append("\n**Thresholds** (`" + symptom_id + ".<name>`)\n\n" + "\n".join(rows) + "\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=Path("docs/symptoms.md"))
    path = parser.parse_args(argv).path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
