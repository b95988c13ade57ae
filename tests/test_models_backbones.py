"""torchvision backbones: built offline for any class count, optional local pretrained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision import models

from cnnclinic.config import ModelConfig
from cnnclinic.errors import UserError
from cnnclinic.models import build_model


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0", "mobilenet_v3_small"])
def test_backbone_outputs_one_logit_per_class(arch: str) -> None:
    model = build_model(ModelConfig(arch=arch), 7, 64).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


@pytest.mark.parametrize("arch", ["efficientnet_b0", "mobilenet_v3_small"])
def test_dropout_switch_sets_the_backbone_classifier_dropout(arch: str) -> None:
    model = build_model(ModelConfig(arch=arch, dropout=0.35), 7)
    assert [m.p for m in model.classifier.modules() if isinstance(m, nn.Dropout)] == [0.35]


def _imagenet_resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {k: v.clone() for k, v in models.resnet18(weights=None).state_dict().items()}


def test_pretrained_safetensors_weights_are_loaded_before_the_new_head(tmp_path: Path) -> None:
    state = _imagenet_resnet18_state()
    path = tmp_path / "resnet18.safetensors"
    save_file(state, path)
    model = build_model(ModelConfig(arch="resnet18", pretrained=str(path)), 7)
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"])
    torch.testing.assert_close(model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert model.fc.out_features == 7
    fresh = build_model(ModelConfig(arch="resnet18"), 7)
    assert not torch.equal(fresh.conv1.weight, state["conv1.weight"])


def test_pretrained_torch_state_dict_file_is_loaded(tmp_path: Path) -> None:
    state = _imagenet_resnet18_state()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = build_model(ModelConfig(arch="resnet18", pretrained=str(path)), 7)
    torch.testing.assert_close(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_pretrained_problems_are_one_line_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="file not found"):
        build_model(ModelConfig(arch="resnet18", pretrained=str(tmp_path / "nope.safetensors")), 7)

    wrong = tmp_path / "mobilenet.safetensors"
    save_file(models.mobilenet_v3_small(weights=None).state_dict(), wrong)
    with pytest.raises(UserError, match="does not fit ResNet") as error:
        build_model(ModelConfig(arch="resnet18", pretrained=str(wrong)), 7)
    assert "\n" not in str(error.value)

    for name in ("garbage.safetensors", "garbage.pth", "empty.pt"):
        (tmp_path / name).write_bytes(b"" if name.startswith("empty") else b"not a tensor file")
        with pytest.raises(UserError, match="cannot read"):
            build_model(ModelConfig(arch="resnet18", pretrained=str(tmp_path / name)), 7)
