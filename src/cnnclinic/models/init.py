"""Weight initialisation schemes for conv and linear layers.

``default`` leaves PyTorch's own initialisation untouched. Every other scheme also sets biases to zero:

- ``he``: ``kaiming_normal_`` (fan_in), std = sqrt(2 / fan_in) for ReLU-like activations; for
  leaky_relu/prelu the gain uses their negative slope (0.01 / 0.25). He et al. derived it for
  rectifiers, so the other activations get the ReLU gain too.
- ``xavier``: ``xavier_normal_``, std = gain * sqrt(2 / (fan_in + fan_out)) with the gain of the
  activation (``torch.nn.init.calculate_gain``: 1 for sigmoid, 5/3 for tanh, sqrt(2) for relu, elu and
  gelu, which torch has no gain for, ...).
- ``normal``: N(0, init_std).
- ``orthogonal``: ``orthogonal_`` (each weight, flattened to out x fan_in, has orthonormal rows or columns).
"""

from __future__ import annotations

from torch import nn

from cnnclinic.errors import UserError

INIT_SCHEMES = ("default", "he", "xavier", "normal", "orthogonal")

# Activation -> (nonlinearity name for torch.nn.init, negative slope).
_GAIN_NONLINEARITY: dict[str, tuple[str, float | None]] = {
    "sigmoid": ("sigmoid", None),
    "tanh": ("tanh", None),
    "relu": ("relu", None),
    "leaky_relu": ("leaky_relu", 0.01),  # nn.LeakyReLU's default slope
    "prelu": ("leaky_relu", 0.25),  # nn.PReLU's initial slope
    "elu": ("relu", None),
    "gelu": ("relu", None),
    "selu": ("selu", None),
}


def activation_gain(activation: str) -> float:
    nonlinearity, slope = _GAIN_NONLINEARITY[activation]
    return nn.init.calculate_gain(nonlinearity, slope)


def init_weights(model: nn.Module, scheme: str, activation: str = "relu", std: float = 0.01) -> nn.Module:
    """Re-initialise every Conv2d and Linear of ``model`` in place with ``scheme``; returns the model."""
    if scheme not in INIT_SCHEMES:
        raise UserError(f"model.init={scheme!r} is not known (allowed: {', '.join(INIT_SCHEMES)})")
    if scheme == "default":
        return model
    nonlinearity, slope = _GAIN_NONLINEARITY[activation]
    rectifier = "leaky_relu" if nonlinearity == "leaky_relu" else "relu"
    for module in model.modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        weight = module.weight
        if scheme == "he":
            nn.init.kaiming_normal_(weight, a=slope or 0.0, mode="fan_in", nonlinearity=rectifier)
        elif scheme == "xavier":
            nn.init.xavier_normal_(weight, gain=activation_gain(activation))
        elif scheme == "normal":
            nn.init.normal_(weight, mean=0.0, std=std)
        else:
            nn.init.orthogonal_(weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    return model
