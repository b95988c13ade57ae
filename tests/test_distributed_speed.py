"""The speed switches (bf16 autocast, channels_last) train as well as fp32 and leave ordinary checkpoints."""

from __future__ import annotations

import io
import json

import torch
from rich.console import Console

from cnnclinic.config import build_config
from cnnclinic.training.trainer import load_trained_model, predict_probs, train
from test_distributed import MATCH

# Digits at 8 x 8 px, the set-up of test_distributed: fp32 reaches ~0.74 val accuracy in 2 epochs.
FAST = MATCH


def step_losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "steps.jsonl").read_text().splitlines()]


def test_bf16_channels_last_run_learns_and_its_checkpoint_is_ordinary(tmp_path):
    quiet = Console(file=io.StringIO())
    fp32 = tmp_path / "fp32"
    train(build_config(overrides={**FAST, "train.epochs": 1}), fp32, console=quiet, report=False)
    fast = tmp_path / "bf16"
    cfg = build_config(overrides={**FAST, "train.precision": "bf16", "train.channels_last": True, "train.epochs": 2})
    result = train(cfg, fast, console=quiet, report=False)
    assert result.history[-1]["val_acc"] > 0.5  # chance is 0.1
    # bf16 autocast took effect: same start and batches, slightly different losses (bf16 keeps 8 bits of mantissa).
    first_fp32, first_bf16 = step_losses(fp32)[:5], step_losses(fast)[:5]
    assert all(1e-5 < abs(a - b) < 0.05 for a, b in zip(first_fp32, first_bf16))
    conv = next(m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)

    # The checkpoint loads into a fresh fp32, NCHW model and gives the trained model's predictions.
    trained = load_trained_model(fast)
    loaded = next(m for m in trained.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert loaded.weight.dtype == torch.float32 and loaded.weight.is_contiguous()
    images = torch.utils.data.TensorDataset(torch.randn(16, 3, 8, 8), torch.zeros(16, dtype=torch.int64))
    assert torch.allclose(
        torch.from_numpy(predict_probs(trained.model, images)),
        torch.from_numpy(predict_probs(result.model, images)),
        atol=1e-5,
    )


def test_compiled_model_never_runs_the_doctors_sampled_passes(tmp_path, monkeypatch):
    # torch.compile cannot trace the Doctor's activation hooks; a stand-in records what the compiled model saw.
    seen = {"calls": 0, "with_hooks": 0}

    class CompiledStandIn(torch.nn.Module):
        def __init__(self, module: torch.nn.Module):
            super().__init__()
            self.module = module

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            seen["calls"] += 1
            hooked = any(m._forward_hooks for m in self.module.modules()) or torch._C._is_torch_function_mode_enabled()
            seen["with_hooks"] += hooked
            return self.module(images)

    monkeypatch.setattr(torch, "compile", CompiledStandIn)
    cfg = build_config(overrides={**FAST, "data.max_per_class": 40, "train.epochs": 2, "train.compile": True})
    train(cfg, tmp_path, console=Console(file=io.StringIO()), report=False)
    sampled = len((tmp_path / "layer_stats.jsonl").read_text().splitlines())
    steps = len(step_losses(tmp_path))
    assert sampled > 0 and seen["with_hooks"] == 0
    assert seen["calls"] == steps - sampled  # every other step ran compiled
