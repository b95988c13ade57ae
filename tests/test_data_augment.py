"""The strong pipeline for lagging classes changes pose, never colour (colour may be the class's only cue)."""

from __future__ import annotations

import torch

from cnnclinic.data.augment import strong_transform


def test_strong_augmentation_moves_the_image_but_keeps_its_colour() -> None:
    torch.manual_seed(0)
    fin = torch.tensor([112, 74, 70], dtype=torch.uint8)
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    image[:, 4:28, 4:28] = fin[:, None, None]  # a warm fin on black
    transform = strong_transform(32)
    outputs = [transform(image) for _ in range(20)]
    assert sum(not torch.equal(out, image) for out in outputs) >= 18  # it does augment
    for out in outputs:
        pixels = out.flatten(1).T.float()
        lit = pixels[pixels.sum(1) > 0]
        # Interpolated edges only scale the colour towards black: its hue (channel ratios) stays the fin's.
        ratios = lit / lit.sum(1, keepdim=True)
        expected = fin.float() / fin.float().sum()
        assert (ratios[lit.sum(1) > 60] - expected).abs().max() < 0.02
