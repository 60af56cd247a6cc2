"""Render text lines onto a page aligned to the vision model's token grid.

Why a grid: the embedded model sees an image as merged tokens of 16x16 px (patch 8, merge 2). We draw
every text line in its own 16 px row, with a monospace font whose advance is ~16 px, so one token row
holds one line and one token column about one character. That alignment is what lets a 2 M-parameter
model learn to read in minutes (see shared facts: CTC row by row). Real checkpoints do not need it;
the knobs below (fonts, rotation, noise, ...) exist to make harder sets for them.

Drawing happens at 2x height then squeezes to the grid, which keeps glyphs legible at 16 px rows.
Everything is deterministic for a given style, lines and seed (numpy Generator + Pillow's FreeType).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

TOKEN_PX = 16  # patch 8 x merge 2: one merged vision token covers 16x16 px
ROW_PX = TOKEN_PX  # one text line per token row
MAX_LINE_CHARS = 32  # CTC needs <= 40 frames per row, incl. blanks between repeated characters
FONTS = {  # fonts that ship with matplotlib, so rendering works anywhere
    "mono": "DejaVuSansMono.ttf",
    "mono-bold": "DejaVuSansMono-Bold.ttf",
    "sans": "DejaVuSans.ttf",
    "serif": "DejaVuSerif.ttf",
}


@dataclasses.dataclass(frozen=True)
class RenderStyle:
    """How a page looks. Defaults are the `easy` preset: the one the embedded model is trained on."""

    width_px: int = 640  # a multiple of TOKEN_PX; 640 = 40 token columns
    font: str = "mono"  # key of FONTS
    font_size: int = 26  # at the 2x drawing height; 26 -> advance ~15.7 px, about one token
    jitter_px: int = 6  # random left margin 0..jitter_px, so text is not always column-aligned
    noise: float = 0.0  # std of Gaussian pixel noise, in 0..255 units
    blur: float = 0.0  # Gaussian blur radius in px (after squeezing)
    rotation_deg: float = 0.0  # max absolute page rotation (breaks the row grid: hard sets only)
    contrast: float = 1.0  # ink darkness: 1.0 black ink on white, 0.5 grey ink
    background: str = "white"  # "white" | "paper" (random light tint per page)

    def __post_init__(self):
        if self.width_px % TOKEN_PX:
            raise ValueError(f"width_px must be a multiple of {TOKEN_PX}, got {self.width_px}")
        if self.font not in FONTS:
            raise ValueError(f"font must be one of {sorted(FONTS)}, got {self.font!r}")
        if self.background not in ("white", "paper"):
            raise ValueError(f"background must be 'white' or 'paper', got {self.background!r}")


PRESETS = {
    "easy": RenderStyle(),
    "medium": RenderStyle(noise=12.0, blur=0.4, contrast=0.8, background="paper"),
    "hard": RenderStyle(font="sans", noise=20.0, blur=0.7, rotation_deg=1.5, contrast=0.65,
                        background="paper"),
}


@functools.lru_cache(maxsize=None)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", FONTS[name])
    return ImageFont.truetype(path, size)


def render_page(lines: list[str], style: RenderStyle, rng: np.random.Generator) -> Image.Image:
    """Draw `lines` one per 16 px row on a `style.width_px` wide page; returns an RGB image.

    The page is exactly len(lines) rows tall, so the model sees len(lines) x (width/16) tokens.
    """
    if not lines:
        raise ValueError("a page needs at least one line")
    font = _font(style.font, style.font_size)
    height2x = 2 * ROW_PX * len(lines)
    ink = int(round(255 * (1.0 - style.contrast)))
    if style.background == "paper":
        tint = rng.integers(225, 256, size=3)
        bg = tuple(int(v) for v in tint)
    else:
        bg = (255, 255, 255)
    page = Image.new("L", (style.width_px, height2x), color=255)
    draw = ImageDraw.Draw(page)
    for i, line in enumerate(lines):
        x = int(rng.integers(0, style.jitter_px + 1)) if style.jitter_px else 0
        # baseline: glyph box of ~26 px centred in the 32 px row
        draw.text((x, i * 2 * ROW_PX + 2 * ROW_PX // 2), line, fill=ink, font=font, anchor="lm")
    page = page.resize((style.width_px, ROW_PX * len(lines)), Image.Resampling.BILINEAR)
    if style.rotation_deg:
        angle = float(rng.uniform(-style.rotation_deg, style.rotation_deg))
        page = page.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=255)
    if style.blur:
        page = page.filter(ImageFilter.GaussianBlur(style.blur))
    arr = np.asarray(page, dtype=np.float32) / 255.0  # 1 = background, 0 = ink
    rgb = np.stack([arr * c + (1 - arr) * ink for c in bg], axis=-1)
    if style.noise:
        rgb = rgb + rng.normal(0.0, style.noise, size=rgb.shape)
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), mode="RGB")


def fit_canvas(image, canvas: tuple[int, int] | None):
    """`image` padded with white at the right and bottom to `canvas` (width, height); unchanged when
    `canvas` is None or the image already has its size. A model whose processor resizes every image
    to one area (MiniCPM-V without slicing) keeps the 16 px grid only on its canvas."""
    if canvas is None or image.size == tuple(canvas):
        return image
    width, height = canvas
    if image.size[0] > width or image.size[1] > height:
        raise ValueError(f"a {image.size[0]}x{image.size[1]} image is larger than the model's {width}x{height} canvas")
    out = Image.new("RGB", (width, height), "white")
    out.paste(image.convert("RGB"), (0, 0))
    return out


def image_canvas(model_dir) -> tuple[int, int] | None:
    """The canvas an embedded checkpoint reads its pages on (its lorabench.json), or None."""
    import json
    from pathlib import Path

    try:
        canvas = json.loads((Path(model_dir) / "lorabench.json").read_text()).get("image_canvas")
    except (OSError, ValueError):
        return None
    return tuple(canvas) if canvas else None
