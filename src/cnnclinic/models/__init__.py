"""Models: the plain CNN with every switch, torchvision backbones, weight init and attention blocks."""

from cnnclinic.models import backbones, plain_cnn  # noqa: F401  (registers the builders)
from cnnclinic.models.init import init_weights
from cnnclinic.models.layers import make_activation
from cnnclinic.models.plain_cnn import PlainCNN
from cnnclinic.models.registry import MODELS, build_model, count_parameters, register_model

__all__ = [
    "MODELS",
    "PlainCNN",
    "build_model",
    "count_parameters",
    "init_weights",
    "make_activation",
    "register_model",
]
