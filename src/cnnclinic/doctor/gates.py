"""Gating branches: small sub-networks that end in a sigmoid and scale the features they were computed from.

Squeeze-and-excitation, CBAM (channel and spatial gates), torchvision's ``SqueezeExcitation`` (sigmoid or
hardsigmoid) and hand-written variants compute a few numbers per sample (one per channel, or one per pixel)
and multiply the feature map by them. Their layers naturally get tiny gradients (the gate's slope and the
pooling divide them) and their narrow bottleneck ReLUs are often silent, so the gradient and activation
symptoms judge the main path only and leave these branches out.

A branch is found from one training forward pass, without naming any class: for each sigmoid or hardsigmoid
module, its *block* is the nearest enclosing module whose output is a product with the gate's output (seen in
the autograd graph, through reshapes); the branch is every layer and activation of that block whose output
has at most as many values per sample as the gate (the pooled bottleneck, not the block's own convs). A
sigmoid in a plain stack or a residual block feeds the next layer or a sum, never a product: it is no gate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

GATE_MODULES: tuple[type[nn.Module], ...] = (nn.Sigmoid, nn.Hardsigmoid)
# Autograd nodes that only reshape: a gate may be viewed or broadcast before it multiplies the features.
RESHAPES = frozenset({"ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0", "UnsqueezeBackward0",
                      "ExpandBackward0", "SqueezeBackward0", "SqueezeBackward1", "PermuteBackward0"})


def _per_sample(shape: torch.Size) -> int:
    """Values per sample of a batched tensor shape (N x ...)."""
    return int(torch.Size(shape[1:]).numel()) if len(shape) > 1 else 1


def _multiplies(node: Any, gate_node: Any) -> bool:
    """Whether autograd node ``node`` is a product with ``gate_node`` (possibly reshaped first)."""
    if node is None or node.name() != "MulBackward0":
        return False
    for operand, _ in node.next_functions:
        while operand is not None and operand is not gate_node and operand.name() in RESHAPES:
            operand = operand.next_functions[0][0]
        if operand is not None and operand is gate_node:
            return True
    return False


def _first_tensor(args: Any) -> torch.Tensor | None:
    for value in args if isinstance(args, tuple) else (args,):
        if isinstance(value, torch.Tensor):
            return value
    return None


class GateFinder:
    """Hooks for one training forward pass; afterwards ``members()`` names the layers of gating branches."""

    def __init__(self, model: nn.Module, watched: set[str]):
        """``watched``: names of the modules to classify (weight layers and measured activations)."""
        self.done = False
        # name -> (values per sample of its output, autograd node of its output)
        self._outputs: dict[str, tuple[int, Any]] = {}
        self._handles: list[RemovableHandle] = []
        modules = dict(model.named_modules())
        gates = [name for name, module in modules.items() if name and isinstance(module, GATE_MODULES)]
        # Every ancestor of a gate (the root excluded: it maps images to logits) and every watched module
        # inside one; a model without gates gets no hooks at all.
        ancestors = {".".join(gate.split(".")[:depth]) for gate in gates for depth in range(1, gate.count(".") + 1)}
        inside = {name for name in watched if any(name.startswith(a + ".") for a in ancestors)}
        self._gates = gates
        self._ancestors = ancestors
        for name in set(gates) | ancestors | inside:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))
        if self._handles:
            self._handles.append(model.register_forward_hook(self._leave_model))
        else:
            self.done = True

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not (module.training and torch.is_grad_enabled()) or name in self._outputs:
                return
            produced = _first_tensor(output)
            if produced is not None:
                self._outputs[name] = (_per_sample(produced.shape), produced.grad_fn)

        return hook

    def _leave_model(self, module: nn.Module, args: Any, output: Any) -> None:
        if module.training and torch.is_grad_enabled() and self._outputs:
            self.done = True
            self.remove()

    def members(self) -> set[str]:
        """Names of the watched modules that belong to a gating branch."""
        found: set[str] = set()
        for gate in self._gates:
            if gate not in self._outputs:
                continue
            gate_size, gate_node = self._outputs[gate]
            block = self._block_of(gate, gate_node)
            if block is None:
                continue
            found.add(gate)
            for name, (size, _) in self._outputs.items():
                if name.startswith(block + ".") and name not in self._ancestors and size <= gate_size:
                    found.add(name)
        return found

    def _block_of(self, gate: str, gate_node: Any) -> str | None:
        """The nearest module around ``gate`` whose output is the gate times something."""
        if gate_node is None:
            return None
        parts = gate.split(".")
        for depth in range(len(parts) - 1, 0, -1):
            name = ".".join(parts[:depth])
            if name in self._outputs and _multiplies(self._outputs[name][1], gate_node):
                return name
        return None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
