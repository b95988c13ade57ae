"""Procedural fish photos: a stand-in data set that needs no download and has a known ground truth.

Each species is a recipe: body shape (length/height), tail shape, skin pattern, body colour and
fin colour. Body colours are shared between species and the water dominates the frame, so mean
colour alone says little; shape and pattern are what a CNN has to learn. Every photo varies in pose
(flip, rotation, position), scale, lighting, blur and sensor noise over a water-like background
(depth gradient + caustic light web). ``hard_species=k`` replaces species k by "species_x", a copy of
species 0 whose small dorsal and pectoral fins are rust red: a small local detail, hard but learnable.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps
from rich.console import Console

from cnnclinic.data.progress import progress_bar
from cnnclinic.errors import UserError

# Part of the synthetic-fish cache key: bump whenever the drawing changes.
GENERATOR_VERSION = 3

RGB = tuple[int, int, int]
BRONZE, OLIVE, SILVER, BROWN = (160, 125, 70), (105, 118, 62), (168, 172, 178), (125, 92, 62)
DARK_FIN, GREY_FIN, ORANGE_FIN, RED_FIN, OLIVE_FIN = (
    (72, 72, 82), (135, 135, 140), (205, 112, 50), (185, 58, 48), (98, 100, 56)
)
# Species X's dorsal and pectoral fins: rust red where species 0 has dark grey - the only thing that tells
# them apart, a few pixels at 32 px. A darker red (112, 74, 70) on every fin was never learned by the demo's
# CNN (twin AUC 0.88, that of a coin toss between the twins); a bright one (195, 65, 45) is learned at once.
HARD_FIN = (175, 75, 55)
HARD_SPECIES_NAME = "species_x"


@dataclass(frozen=True)
class Species:
    name: str
    aspect: float  # body length / body height
    tail: Literal["fork", "round", "square", "pointed"]
    pattern: Literal["plain", "bars", "spots", "stripe"]
    body: RGB
    fins: RGB
    # Dorsal fin as (start, end, height) in body lengths, measured from the body centre towards the head.
    dorsal: tuple[float, float, float]
    # Colour of the dorsal and pectoral fins when it differs from the tail's and anal fin's (species X).
    accent_fins: RGB | None = None


SPECIES: tuple[Species, ...] = (
    Species("bream", 2.1, "fork", "plain", BRONZE, DARK_FIN, (-0.05, 0.12, 0.16)),
    Species("perch", 2.9, "square", "bars", OLIVE, ORANGE_FIN, (-0.15, 0.25, 0.10)),
    Species("pike", 4.8, "round", "spots", OLIVE, OLIVE_FIN, (-0.40, -0.25, 0.08)),
    Species("trout", 3.5, "square", "spots", SILVER, GREY_FIN, (-0.02, 0.14, 0.09)),
    Species("carp", 2.5, "round", "stripe", BRONZE, ORANGE_FIN, (-0.25, 0.20, 0.07)),
    Species("tench", 2.9, "round", "plain", OLIVE, DARK_FIN, (-0.05, 0.10, 0.08)),
    Species("roach", 2.6, "fork", "stripe", SILVER, RED_FIN, (-0.05, 0.10, 0.11)),
    Species("chub", 3.5, "fork", "plain", SILVER, DARK_FIN, (-0.05, 0.10, 0.08)),
    Species("zander", 4.2, "fork", "bars", BROWN, GREY_FIN, (-0.20, 0.22, 0.08)),
    Species("barbel", 4.2, "pointed", "spots", BRONZE, ORANGE_FIN, (-0.02, 0.12, 0.10)),
    Species("grayling", 3.5, "pointed", "stripe", OLIVE, GREY_FIN, (-0.25, 0.15, 0.14)),
    Species("rudd", 2.3, "pointed", "bars", BROWN, RED_FIN, (-0.10, 0.05, 0.10)),
)
MAX_SPECIES = len(SPECIES)

_WATER = np.array([(38, 92, 140), (48, 104, 82), (92, 96, 58), (22, 44, 66), (70, 120, 130)], dtype=np.float64)
SUPERSAMPLE = 2  # drawn at twice the size, then downsampled: smooth edges at any output size


def species_roster(species: int, hard_species: int | None = None) -> list[Species]:
    """The first ``species`` recipes, with ``hard_species`` replaced by species X (species 0, red small fins)."""
    roster = list(SPECIES[:species])
    if hard_species is not None:
        roster[hard_species] = replace(SPECIES[0], name=HARD_SPECIES_NAME, accent_fins=HARD_FIN)
    return roster


def _jitter_colour(rng: np.random.Generator, colour: RGB, spread: float) -> np.ndarray:
    return np.clip(
        np.asarray(colour, dtype=np.float64) * rng.uniform(1 - spread, 1 + spread) + rng.normal(0, 6, 3), 0, 255
    )


def _smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """Random values on a ``cells`` x ``cells`` grid, bicubically upsampled: smooth blobs in [0, 1]."""
    grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64) / 255.0


def _water(rng: np.random.Generator, size: int) -> np.ndarray:
    """Depth gradient (lighter at the surface) plus a web of caustic light."""
    mix = rng.dirichlet(np.ones(len(_WATER)) * 0.6)
    base = mix @ _WATER * rng.uniform(0.7, 1.3)
    depth = np.linspace(1.25, 0.7, size)[:, None, None] * rng.uniform(0.85, 1.15)
    image = base[None, None, :] * depth * np.ones((size, size, 1))
    cells = int(rng.integers(4, 8))
    web = np.clip(1.0 - np.abs(_smooth_noise(rng, cells, size) - _smooth_noise(rng, cells, size)) * 7.0, 0, 1) ** 3
    strength = rng.uniform(20, 60) * np.linspace(1.0, 0.3, size)[:, None]
    return image + (web * strength)[:, :, None] * np.array([0.9, 1.0, 0.95])


def _dorsal_polygon(start: float, end: float, height: float, length: float, a: float, b: float, ox: float, oy: float):
    def top(x: float) -> float:
        return oy - b * np.sqrt(max(0.0, 1 - (x / a) ** 2)) * 0.92

    x0, x1 = start * length, end * length
    peak = x0 + (x1 - x0) * 0.35
    return [(ox + x0, top(x0)), (ox + peak, top(peak) - height * length), (ox + x1, top(x1))]


def _tail_polygon(shape: str, tail: float, spread: float, peduncle: float, px: float, oy: float):
    """The tail fin, symmetric about the body axis, from the peduncle at ``px`` backwards (to the left)."""
    if shape == "fork":
        upper = [(0.0, peduncle), (tail, spread), (tail * 0.55, 0.0)]
    elif shape == "square":
        upper = [(0.0, peduncle), (tail, spread * 0.85), (tail, 0.0)]
    elif shape == "round":
        upper = [(0.0, peduncle)] + [
            (-tail * np.cos(t), -spread * 1.1 * np.sin(t)) for t in np.linspace(1.3 * np.pi, np.pi, 5)
        ]
    else:  # pointed
        upper = [(0.0, peduncle), (tail * 0.6, spread * 0.45), (tail * 1.15, 0.0)]
    lower = [(back, -down) for back, down in reversed(upper) if down > 1e-9]
    return [(px - back, oy - up) for back, up in upper + lower]


def _draw_fish(rng: np.random.Generator, recipe: Species, length: float) -> Image.Image:
    """One fish facing right on a transparent canvas, cropped to its outline."""
    canvas = int(length * 1.9)
    ox, oy = canvas * 0.55, canvas / 2
    a = length / 2
    b = a / (recipe.aspect * rng.uniform(0.9, 1.1))
    body_colour = _jitter_colour(rng, recipe.body, 0.12)
    fin_colour = _jitter_colour(rng, recipe.fins, 0.08)
    # Only species X draws one, so every other species' photos stay as they were.
    accent_colour = fin_colour if recipe.accent_fins is None else _jitter_colour(rng, recipe.accent_fins, 0.08)

    def mask() -> tuple[Image.Image, ImageDraw.ImageDraw]:
        layer = Image.new("L", (canvas, canvas), 0)
        return layer, ImageDraw.Draw(layer)

    fins, draw = mask()
    peduncle, spread, tail = 0.07 * length, max(b * 1.05, 0.17 * length), 0.26 * length * rng.uniform(0.85, 1.15)
    draw.polygon(_tail_polygon(recipe.tail, tail, spread, peduncle, ox - a * 0.9, oy), fill=225)
    narrow, wide = (ox - a * 0.95, peduncle), (ox - a * 0.6, b * 0.7)  # the tail's root, joining the body
    draw.polygon(
        [(narrow[0], oy - narrow[1]), (wide[0], oy - wide[1]), (wide[0], oy + wide[1]), (narrow[0], oy + narrow[1])],
        fill=255,
    )
    dorsal, draw_dorsal = mask()
    draw_dorsal.polygon(_dorsal_polygon(*recipe.dorsal, length, a, b, ox, oy), fill=225)
    anal = _dorsal_polygon(-0.28, -0.12, 0.07, length, a, b, ox, oy)
    draw.polygon([(x, 2 * oy - y) for x, y in anal], fill=225)

    body, draw = mask()
    draw.ellipse([ox - a, oy - b, ox + a, oy + b], fill=255)
    # Countershading: dark back, pale belly.
    rows = np.clip((np.arange(canvas) - (oy - b)) / (2 * b), 0, 1)[:, None, None]
    shading = body_colour * (0.6 + 0.55 * rows) + np.clip(rows - 0.7, 0, 1) * 120
    body_rgb = Image.fromarray(np.clip(shading * np.ones((1, canvas, 1)), 0, 255).astype(np.uint8))

    pattern, draw = mask()
    if recipe.pattern == "bars":
        for x in np.linspace(-0.3, 0.25, int(rng.integers(5, 8))) * length:
            w = 0.03 * length
            bar = [(ox + x - w, oy - b), (ox + x + w, oy - b), (ox + x + w * 0.4, oy + b), (ox + x - w * 0.4, oy + b)]
            draw.polygon(bar, fill=210)
    elif recipe.pattern == "spots":
        for _ in range(int(rng.integers(18, 34))):
            x, y = rng.uniform(-0.8, 0.7) * a, rng.uniform(-0.8, 0.5) * b
            r = rng.uniform(0.012, 0.028) * length
            draw.ellipse([ox + x - r, oy + y - r, ox + x + r, oy + y + r], fill=230)
    elif recipe.pattern == "stripe":
        half = max(0.09 * b, 0.012 * length)
        draw.rectangle([ox - a, oy - b * 0.15 - half, ox + a * 0.75, oy - b * 0.15 + half], fill=220)
    pattern = ImageChops.multiply(pattern, body)

    fish = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    fish.paste(Image.new("RGB", fish.size, tuple(int(c) for c in fin_colour)), mask=fins)
    fish.paste(Image.new("RGB", fish.size, tuple(int(c) for c in accent_colour)), mask=dorsal)
    fish.paste(body_rgb, mask=body)
    fish.paste(Image.new("RGB", fish.size, tuple(int(c) for c in body_colour * 0.4)), mask=pattern)

    draw = ImageDraw.Draw(fish)
    pectoral = [(ox + a * 0.45, oy + b * 0.2), (ox + a * 0.05, oy + b * 0.45), (ox + a * 0.15, oy + b * 0.65)]
    draw.polygon(pectoral, fill=tuple(int(c) for c in accent_colour) + (235,))
    gill = [ox + a * 0.35, oy - b * 0.7, ox + a * 0.65, oy + b * 0.7]
    draw.arc(gill, 120, 240, fill=tuple(int(c) for c in body_colour * 0.55) + (255,), width=max(1, int(length * 0.01)))
    eye_x, eye_y, eye_r = ox + a * 0.72, oy - b * 0.22, 0.035 * length
    draw.ellipse([eye_x - eye_r, eye_y - eye_r, eye_x + eye_r, eye_y + eye_r], fill=(225, 220, 190, 255))
    draw.ellipse(
        [eye_x - eye_r * 0.55, eye_y - eye_r * 0.55, eye_x + eye_r * 0.55, eye_y + eye_r * 0.55], fill=(15, 15, 15, 255)
    )
    return fish.crop(fish.getbbox())


def render_fish_photo(rng: np.random.Generator, recipe: Species, size: int, extra_blur: float = 0.0) -> Image.Image:
    """One photo of one fish of ``recipe``: water, pose, scale, lighting, blur and noise all drawn from ``rng``."""
    work = size * SUPERSAMPLE
    scene = Image.fromarray(np.clip(_water(rng, work), 0, 255).astype(np.uint8))
    fish = _draw_fish(rng, recipe, length=work * rng.uniform(0.45, 0.68))
    if rng.random() < 0.5:
        fish = ImageOps.mirror(fish)
    fish = fish.rotate(float(np.clip(rng.normal(0, 12), -30, 30)), resample=Image.Resampling.BICUBIC, expand=True)
    low_x, low_y = -0.1 * fish.width, -0.1 * fish.height
    x = int(rng.uniform(low_x, max(low_x, work - 0.9 * fish.width)))
    y = int(rng.uniform(low_y, max(low_y, work - 0.9 * fish.height)))
    scene.paste(fish, (x, y), mask=fish)

    # Lighting: overall exposure, a colour cast and a soft directional fall-off.
    pixels = np.asarray(scene, dtype=np.float64)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * np.linspace(-1, 1, work)[None, :] + np.sin(angle) * np.linspace(-1, 1, work)[:, None]
    light = rng.uniform(0.7, 1.25) * (1 + rng.uniform(0, 0.25) * ramp)[:, :, None] * (1 + rng.normal(0, 0.05, 3))
    scene = Image.fromarray(np.clip(pixels * light, 0, 255).astype(np.uint8))

    photo = scene.resize((size, size), Image.Resampling.LANCZOS)
    blur = rng.uniform(0.0, 0.6) + extra_blur
    if blur > 0.05:
        photo = photo.filter(ImageFilter.GaussianBlur(blur * size / 64))
    noisy = np.asarray(photo, dtype=np.float64) + rng.normal(0, rng.uniform(2, 7), (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))


def _filed_under(roster: list[Species], index: int, mislabelled: float, rng: np.random.Generator) -> str:
    """The species folder a photo of ``roster[index]`` is saved in: its own, or with probability ``mislabelled``
    one of the others. A generator of its own, so the photos are the same bytes at any ``mislabelled``."""
    if rng.random() >= mislabelled:
        return roster[index].name
    others = [recipe.name for number, recipe in enumerate(roster) if number != index]
    return others[int(rng.integers(len(others)))]


def _validate(
    species: int, per_class: int, size: int, seed: int,
    class_counts: list[int] | None, hard_species: int | None, hard_blur: float,
) -> list[int]:
    if not 2 <= species <= MAX_SPECIES:
        raise UserError(f"synthetic fish: species must be between 2 and {MAX_SPECIES}, got {species}")
    if not 16 <= size <= 512:
        raise UserError(f"synthetic fish: size must be between 16 and 512 pixels, got {size}")
    if class_counts is None:
        if per_class < 1:
            raise UserError(f"synthetic fish: per_class must be at least 1, got {per_class}")
        class_counts = [per_class] * species
    if len(class_counts) != species or min(class_counts) < 1:
        raise UserError(
            f"synthetic fish: class_counts needs {species} positive counts (one per species), got {class_counts}"
        )
    if hard_species is not None and not 1 <= hard_species < species:
        raise UserError(
            f"synthetic fish: hard_species must be between 1 and {species - 1} (species 0 is its twin), "
            f"got {hard_species}"
        )
    if seed < 0:
        raise UserError(f"synthetic fish: seed must be >= 0, got {seed}")
    if hard_blur < 0:
        raise UserError(f"synthetic fish: hard_blur must be >= 0, got {hard_blur}")
    return list(class_counts)


def generate_synthetic_fish(
    out_dir: str | Path,
    *,
    species: int,
    per_class: int,
    size: int,
    seed: int,
    class_counts: list[int] | None = None,
    hard_species: int | None = None,
    hard_blur: float = 0.0,
    mislabelled: float = 0.0,
    console: Console | None = None,
) -> Path:
    """Write an ImageFolder of fish photos (PNG) into ``out_dir``; the same arguments give the same bytes.

    ``mislabelled``: each photo lands in another species' folder with this probability (its file name keeps
    the species it shows)."""
    counts = _validate(species, per_class, size, seed, class_counts, hard_species, hard_blur)
    if not 0 <= mislabelled < 1:
        raise UserError(f"synthetic fish: mislabelled must be a share in [0, 1), got {mislabelled}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"synthetic fish: {out} already exists and is not an empty folder; choose a new one")
    roster = species_roster(species, hard_species)
    with progress_bar(console, "drawing fish") as progress:
        task = progress.add_task("fish", total=sum(counts))
        try:
            for recipe in roster:
                (out / recipe.name).mkdir(parents=True, exist_ok=True)
            for index, (recipe, count) in enumerate(zip(roster, counts)):
                extra_blur = hard_blur if index == hard_species else 0.0
                for number in range(count):
                    # One generator per photo: changing one class's count leaves every other photo as it was.
                    rng = np.random.default_rng([seed, index, number])
                    folder = out / _filed_under(
                        roster, index, mislabelled, np.random.default_rng([seed, index, number, 1])
                    )
                    render_fish_photo(rng, recipe, size, extra_blur).save(folder / f"{recipe.name}_{number:04d}.png")
                    progress.advance(task)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
    return out
