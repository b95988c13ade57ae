"""Activation statistics for one sampled forward pass.

Activation *modules* (``nn.ReLU``, ``nn.Sigmoid``, ``nn.Tanh``, ...) are measured with forward hooks and
named after the module. Functional calls (``F.relu(x)``, ``torch.sigmoid(x)``, ``x.tanh()``) are caught by
a ``TorchFunctionMode`` that is active only during the sampled forward pass of the model (entered by a
forward pre-hook on the model, left by its forward hook); they are named ``relu#0``, ``sigmoid#1``, ... in
call order. When the first sampled pass finds no functional activation calls, later passes skip the
function mode (it costs a Python call per operation). Every hook is removed as soon as the sampled pass
is over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

# Module classes and function names -> kind of activation.
ACTIVATION_MODULES: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu",
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
}
ACTIVATION_FUNCTIONS: dict[str, str] = {
    "relu": "relu",
    "relu_": "relu",
    "relu6": "relu",
    "sigmoid": "sigmoid",
    "sigmoid_": "sigmoid",
    "tanh": "tanh",
    "tanh_": "tanh",
}
# An output counts as saturated where the activation's slope is below 5% of its maximum:
# sigmoid'(x) = y(1-y) < 0.0125 (|x| > 4.4), tanh'(x) = 1-y^2 < 0.05 (|x| > 2.2).
SIGMOID_TAIL = 0.0127
TANH_TAIL = 0.975


def activation_modules(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    found: dict[str, tuple[nn.Module, str]] = {}
    for name, module in model.named_modules():
        kind = ACTIVATION_MODULES.get(type(module))
        if kind is not None:
            found[name or type(module).__name__.lower()] = (module, kind)
    return found


@torch.no_grad()
def measure(output: torch.Tensor, kind: str) -> dict[str, Any]:
    """Scalar statistics of one activation output, plus the per-unit dead mask for zeroing kinds.
    Reductions only (no copies of the activation), so a sampled step stays cheap."""
    y = output.detach()
    numel = y.numel()
    if kind == "relu":
        # A unit (channel of a conv, feature of a linear layer) is dead for this batch when it outputs zero
        # for every sample and position. ReLU outputs are >= 0, so "zero" is "not positive".
        per_unit = y.amax(dim=[0, *range(2, y.dim())]) if y.dim() >= 2 else y.amax().reshape(1)
        zeros = numel - torch.count_nonzero(y > 0).item()
        return {"dead_mask": (per_unit <= 0).cpu().numpy(), "zero_share": zeros / numel}
    if kind == "sigmoid":
        saturated = torch.count_nonzero((y - 0.5).abs() > 0.5 - SIGMOID_TAIL)
    else:
        saturated = torch.count_nonzero(y.abs() > TANH_TAIL)
    return {"saturation": saturated.item() / numel}


class _FunctionalActivations(TorchFunctionMode):
    def __init__(self, capture: ActivationCapture):
        super().__init__()
        self.capture = capture

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        kind = ACTIVATION_FUNCTIONS.get(getattr(func, "__name__", ""))
        if kind is not None and self.capture.inside_module == 0 and isinstance(out, torch.Tensor):
            self.capture.record(f"{kind}#{self.capture.functional_calls}", kind, out)
            self.capture.functional_calls += 1
        return out


class ActivationCapture:
    """Hooks for exactly one training forward pass; ``results`` maps activation name -> (kind, stats)."""

    def __init__(self, model: nn.Module, modules: dict[str, tuple[nn.Module, str]], functional: bool = True):
        self.functional = functional
        self.results: dict[str, tuple[str, dict[str, Any]]] = {}
        self.inside_module = 0
        self.functional_calls = 0
        self.done = False
        self._mode: _FunctionalActivations | None = None
        self._handles: list[RemovableHandle] = [
            model.register_forward_pre_hook(self._enter_model),
            model.register_forward_hook(self._leave_model),
        ]
        for name, (module, kind) in modules.items():
            self._handles.append(module.register_forward_pre_hook(self._enter_activation))
            self._handles.append(module.register_forward_hook(self._activation_hook(name, kind)))

    @staticmethod
    def _is_training_pass(module: nn.Module) -> bool:
        # Validation passes (eval mode or no_grad) between arming and the training step are not sampled.
        return module.training and torch.is_grad_enabled()

    def _enter_model(self, module: nn.Module, args: Any) -> None:
        if self.done or not self._is_training_pass(module) or self._mode is not None:
            return
        self._mode = _FunctionalActivations(self)
        if self.functional:
            self._mode.__enter__()

    def _leave_model(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._mode is None:
            return
        self._exit_mode()
        self.done = True
        self.remove()

    def _enter_activation(self, module: nn.Module, args: Any) -> None:
        if self._mode is not None:
            self.inside_module += 1

    def _activation_hook(self, name: str, kind: str) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._mode is None:
                return
            self.inside_module -= 1
            if isinstance(output, torch.Tensor):
                self.record(name, kind, output)

        return hook

    def record(self, name: str, kind: str, output: torch.Tensor) -> None:
        if name not in self.results and output.numel() > 0:
            self.results[name] = (kind, measure(output, kind))

    def _exit_mode(self) -> None:
        if self._mode is not None:
            mode, self._mode = self._mode, None
            if self.functional:
                mode.__exit__(None, None, None)

    def remove(self) -> None:
        """Remove every hook (and leave the function mode if the forward pass raised inside it)."""
        self._exit_mode()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
