"""Model shapes for the memory planner: a model's architecture as numbers, no weights needed.

A `Shape` holds, per tower (vision, projector, language model), the LoRA-targetable linear layers of
one block, the other parameters, and the image-token rule. Shipped shapes are JSON files in
`harness/planner/shapes/` (`load_shape`, `builtin_shape`); a local Hugging Face Qwen2-VL
`config.json` (e.g. the embedded tiny model) becomes a Shape through `shape_from_hf_config`, so the
estimate can be checked against measured runs.

Units: counts are parameters.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from harness.errors import UserError

SHAPES_DIR = Path(__file__).with_name("shapes")
BUILTIN_SHAPES = ("minicpm-v-2_6", "qwen2-vl-7b", "qwen2-vl-2b")
TARGET_SETS = ("lm", "lm+vision", "all-linear")
# lorabench's `lora.targets` presets (and their old names) -> the planner's target sets
SPEC_TARGETS = {"lm-linear": "lm", "lm+vision-linear": "lm+vision", "every-linear": "all-linear",
                "lm": "lm", "lm+vision": "lm+vision", "all-linear": "all-linear"}


@dataclasses.dataclass(frozen=True)
class Linear:
    """One nn.Linear: `in_features -> out_features`, with or without bias."""

    name: str
    in_features: int
    out_features: int
    bias: bool

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)

    def lora_params(self, r: int) -> int:
        """LoRA adds A (r x in) and B (out x r): r * (in + out) parameters."""
        return r * (self.in_features + self.out_features)


@dataclasses.dataclass(frozen=True)
class Tower:
    """One part of the model: `layers` identical blocks plus parts outside the blocks.

    params = layers * (sum(block_linears) + block_other_params) + sum(linears) + other_params.
    `linears` are Linear layers outside the blocks that PEFT's all-linear would wrap (e.g. Qwen2-VL's
    merger MLP); `other_params` are everything else (embeddings, lm_head, norms, patch conv, ...).
    The width fields feed the activation formula; a projector leaves them 0.
    """

    hidden: int = 0
    layers: int = 0
    intermediate: int = 0
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    block_linears: tuple[Linear, ...] = ()
    block_other_params: int = 0
    linears: tuple[Linear, ...] = ()
    other_params: int = 0
    largest_module_params: int = 0  # the biggest single module ZeRO-3 must gather at once

    @property
    def params(self) -> int:
        return (self.layers * (sum(l.params for l in self.block_linears) + self.block_other_params)
                + sum(l.params for l in self.linears) + self.other_params)

    def lora_params(self, r: int, include_outer_linears: bool) -> int:
        block = self.layers * sum(l.lora_params(r) for l in self.block_linears)
        outer = sum(l.lora_params(r) for l in self.linears) if include_outer_linears else 0
        return block + outer

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


@dataclasses.dataclass(frozen=True)
class ImageTokens:
    """How many LM tokens an image costs, and how many ViT patches stand behind them.

    mode "slices" (MiniCPM-V): each slice of up to patches_per_slice patches becomes tokens_per_slice
    resampler queries; the ViT attends within a slice. mode "merge" (Qwen2-VL): merge x merge patches
    become one token; the ViT attends over the whole image.
    """

    mode: str
    default_per_sample: int
    tokens_per_slice: int = 0
    patches_per_slice: int = 0
    max_slices: int = 0
    spatial_merge: int = 0
    formula: str = ""

    def vision_groups(self, image_tokens: int) -> tuple[int, int]:
        """-> (patches per attention group, groups per sample) for `image_tokens` LM tokens."""
        if image_tokens <= 0:
            return 0, 0
        if self.mode == "slices":
            return self.patches_per_slice, math.ceil(image_tokens / self.tokens_per_slice)
        return image_tokens * self.spatial_merge**2, 1


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    vision: Tower
    projector: Tower
    language_model: Tower
    vocab: int
    tied_embeddings: bool
    image_tokens: ImageTokens
    source: dict = dataclasses.field(default_factory=dict, compare=False)

    @property
    def total_params(self) -> int:
        return self.vision.params + self.projector.params + self.language_model.params

    @property
    def largest_module_params(self) -> int:
        return max(self.vision.largest_module_params, self.projector.largest_module_params,
                   self.language_model.largest_module_params)

    def lora_params(self, targets: str, r: int) -> int:
        """LoRA parameters for a target set (see TARGET_SETS):
        lm: q,k,v,o,gate,up,down of every LM block (ms-swift's all-linear); lm+vision: plus every
        linear of every ViT block; all-linear: plus the projector's linears (PEFT's all-linear:
        every nn.Linear except lm_head)."""
        if targets not in TARGET_SETS:
            raise ValueError(f"targets must be one of {', '.join(TARGET_SETS)}, got {targets!r}")
        n = self.language_model.lora_params(r, include_outer_linears=False)
        if targets in ("lm+vision", "all-linear"):
            n += self.vision.lora_params(r, include_outer_linears=targets == "all-linear")
        if targets == "all-linear":
            n += self.projector.lora_params(r, include_outer_linears=True)
        return n


def _linear_from_json(d: dict) -> Linear:
    return Linear(d["name"], int(d["in"]), int(d["out"]), bool(d["bias"]))


def _linear_to_json(l: Linear) -> dict:
    return {"name": l.name, "in": l.in_features, "out": l.out_features, "bias": l.bias}


_TOWER_INTS = ("hidden", "layers", "intermediate", "heads", "kv_heads", "head_dim",
               "block_other_params", "other_params", "largest_module_params")


def _tower_from_json(d: dict, where: str) -> Tower:
    unknown = set(d) - set(_TOWER_INTS) - {"block_linears", "linears", "params", "note"}
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    tower = Tower(**{k: int(d.get(k, 0)) for k in _TOWER_INTS},
                  block_linears=tuple(_linear_from_json(x) for x in d.get("block_linears", ())),
                  linears=tuple(_linear_from_json(x) for x in d.get("linears", ())))
    # The stated total is a checksum on the hand-written parts: they must add up.
    if "params" in d and int(d["params"]) != tower.params:
        raise UserError(f"{where}: params says {d['params']} but the parts add up to {tower.params}")
    return tower


def _tower_to_json(t: Tower, note: str = "") -> dict:
    d = {k: getattr(t, k) for k in _TOWER_INTS if getattr(t, k)}
    d["block_linears"] = [_linear_to_json(l) for l in t.block_linears]
    d["linears"] = [_linear_to_json(l) for l in t.linears]
    d["params"] = t.params
    if note:
        d["note"] = note
    return d


def shape_from_dict(d: dict, where: str = "shape") -> Shape:
    """Build a Shape from the JSON layout of harness/planner/shapes/*.json; errors name `where` and the key."""
    try:
        lm = d["language_model"]
        return Shape(
            name=str(d["name"]),
            vision=_tower_from_json(d["vision"], f"{where}: vision"),
            projector=_tower_from_json(d["projector"], f"{where}: projector"),
            language_model=_tower_from_json({k: v for k, v in lm.items()
                                             if k not in ("vocab", "tied_embeddings")},
                                            f"{where}: language_model"),
            vocab=int(lm["vocab"]),
            tied_embeddings=bool(lm["tied_embeddings"]),
            image_tokens=ImageTokens(**d["image_tokens"]),
            source=d.get("source", {}),
        )
    except KeyError as exc:
        raise UserError(f"{where}: missing key {exc.args[0]!r}") from None
    except TypeError as exc:  # ImageTokens(**...) with an unknown key
        raise UserError(f"{where}: {exc}") from None


def shape_to_dict(shape: Shape, notes: dict | None = None) -> dict:
    """The inverse of `shape_from_dict` (what the shipped JSON files hold)."""
    notes = notes or {}
    lm = _tower_to_json(shape.language_model, notes.get("language_model", ""))
    lm.update(vocab=shape.vocab, tied_embeddings=shape.tied_embeddings)
    return {
        "name": shape.name,
        "source": shape.source,
        "total_params": shape.total_params,
        "vision": _tower_to_json(shape.vision, notes.get("vision", "")),
        "projector": _tower_to_json(shape.projector, notes.get("projector", "")),
        "language_model": lm,
        "image_tokens": dataclasses.asdict(shape.image_tokens),
    }


def load_shape(path: str | Path) -> Shape:
    """Load a shape JSON file; a missing or malformed file raises UserError naming it."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such shape file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    shape = shape_from_dict(d, str(path))
    if "total_params" in d and int(d["total_params"]) != shape.total_params:
        raise UserError(f"{path}: total_params says {d['total_params']} but the towers add up "
                        f"to {shape.total_params}")
    return shape


def builtin_shape(name: str) -> Shape:
    if name not in BUILTIN_SHAPES:
        raise UserError(f"unknown model {name!r}; valid names: {', '.join(BUILTIN_SHAPES)} "
                        "(or a path to a shape JSON or to a Hugging Face model directory)")
    return load_shape(SHAPES_DIR / f"{name}.json")


def qwen2_vl_image_tokens(height_px: int, width_px: int, min_pixels: int = 56 * 56,
                          max_pixels: int = 1280 * 28 * 28, factor: int = 28) -> int:
    """LM tokens for one image in Qwen2-VL: (H/28) * (W/28) after the processor's `smart_resize`
    (round H and W to multiples of 28, then scale into [min_pixels, max_pixels] keeping aspect).
    The default max_pixels is the model card's recommended 1280*28*28 (the processor allows more)."""
    h = max(factor, round(height_px / factor) * factor)
    w = max(factor, round(width_px / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height_px * width_px / max_pixels)
        h = math.floor(height_px / beta / factor) * factor
        w = math.floor(width_px / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height_px * width_px))
        h = math.ceil(height_px * beta / factor) * factor
        w = math.ceil(width_px * beta / factor) * factor
    return (h // factor) * (w // factor)


def qwen2_vl_shape(name: str, text: dict, vision: dict, tied_embeddings: bool, source: dict,
                   default_image_tokens: int = 1280) -> Shape:
    """A Shape for transformers' Qwen2VLForConditionalGeneration from its text and vision config
    keys (names as in config.json). Parameter layout as in transformers 5.19:
    LM block: q/k/v_proj (bias), o_proj, gate/up/down_proj, two RMSNorm weights;
    ViT block: attn.qkv, attn.proj, mlp.fc1, mlp.fc2 (all with bias), two LayerNorms (weight+bias);
    ViT stem: Conv3d patch_embed without bias; merger: LayerNorm ln_q + mlp.0 + mlp.2 (bias)."""
    try:
        h, layers = int(text["hidden_size"]), int(text["num_hidden_layers"])
        inter, heads = int(text["intermediate_size"]), int(text["num_attention_heads"])
        kv_heads = int(text.get("num_key_value_heads") or heads)
        vocab = int(text["vocab_size"])
        vd, depth, v_heads = int(vision["embed_dim"]), int(vision["depth"]), int(vision["num_heads"])
        v_out = int(vision["hidden_size"])
        patch = int(vision["patch_size"])
        merge = int(vision["spatial_merge_size"])
    except KeyError as exc:
        raise UserError(f"{source.get('config', 'config')}: missing key {exc.args[0]!r}") from None
    v_inter = int(vd * float(vision.get("mlp_ratio", 4)))
    temporal = int(vision.get("temporal_patch_size", 2))
    channels = int(vision.get("in_channels", vision.get("in_chans", 3)))
    head_dim = h // heads
    lm_block = (
        Linear("self_attn.q_proj", h, heads * head_dim, True),
        Linear("self_attn.k_proj", h, kv_heads * head_dim, True),
        Linear("self_attn.v_proj", h, kv_heads * head_dim, True),
        Linear("self_attn.o_proj", heads * head_dim, h, False),
        Linear("mlp.gate_proj", h, inter, False),
        Linear("mlp.up_proj", h, inter, False),
        Linear("mlp.down_proj", inter, h, False),
    )
    embed = vocab * h
    lm = Tower(hidden=h, layers=layers, intermediate=inter, heads=heads, kv_heads=kv_heads,
               head_dim=head_dim, block_linears=lm_block, block_other_params=2 * h,
               other_params=embed * (1 if tied_embeddings else 2) + h,  # embed (+ lm_head) + norm
               largest_module_params=max([embed] + [l.params for l in lm_block]))
    v_block = (
        Linear("attn.qkv", vd, 3 * vd, True),
        Linear("attn.proj", vd, vd, True),
        Linear("mlp.fc1", vd, v_inter, True),
        Linear("mlp.fc2", v_inter, vd, True),
    )
    patch_embed = channels * temporal * patch * patch * vd
    vis = Tower(hidden=vd, layers=depth, intermediate=v_inter, heads=v_heads, kv_heads=v_heads,
                head_dim=vd // v_heads, block_linears=v_block, block_other_params=4 * vd,
                other_params=patch_embed,
                largest_module_params=max([patch_embed] + [l.params for l in v_block]))
    merged = vd * merge * merge
    proj_linears = (Linear("merger.mlp.0", merged, merged, True),
                    Linear("merger.mlp.2", merged, v_out, True))
    proj = Tower(linears=proj_linears, other_params=2 * vd,  # ln_q weight + bias
                 largest_module_params=max(l.params for l in proj_linears))
    tokens = ImageTokens(
        mode="merge", default_per_sample=default_image_tokens, spatial_merge=merge,
        formula=f"(H/{patch * merge})*(W/{patch * merge}) tokens per image after resizing H and W to "
                f"multiples of {patch * merge} within [min_pixels, max_pixels]; the ViT sees "
                f"{merge * merge}x as many patches")
    return Shape(name=name, vision=vis, projector=proj, language_model=lm, vocab=vocab,
                 tied_embeddings=tied_embeddings, image_tokens=tokens, source=source)


def shape_from_hf_config(path: str | Path) -> Shape:
    """A Shape from a local Hugging Face `config.json` (or the directory holding it) of a Qwen2-VL
    model (`model_type: qwen2_vl`). Text keys may sit under `text_config` (transformers >= 5) or at
    the top level (older saves); embeddings are tied if either level says so."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if cfg.get("model_type") != "qwen2_vl":
        raise UserError(f"{path}: model_type {cfg.get('model_type')!r} is not supported; "
                        "only 'qwen2_vl' configs can be read (write a shape JSON for others)")
    if "vision_config" not in cfg:
        raise UserError(f"{path}: missing key 'vision_config'")
    text = dict(cfg)
    text.update(cfg.get("text_config") or {})
    tied = bool(cfg.get("tie_word_embeddings", False)
                or (cfg.get("text_config") or {}).get("tie_word_embeddings", False))
    vision = cfg["vision_config"]
    source = {"config": str(path),
              "fields": {k: text.get(k) for k in ("hidden_size", "num_hidden_layers",
                                                  "intermediate_size", "num_attention_heads",
                                                  "num_key_value_heads", "vocab_size")}
              | {"tie_word_embeddings": tied, "vision_config": {
                  k: vision.get(k) for k in ("depth", "embed_dim", "hidden_size", "mlp_ratio",
                                             "num_heads", "patch_size", "spatial_merge_size",
                                             "temporal_patch_size")}}}
    # Default image tokens: 1280, the model card's recommended max_pixels = 1280*28*28 for real
    # Qwen2-VL, and also the embedded model's page limit (32 rows x 40 tokens); see --image-tokens.
    return qwen2_vl_shape(path.parent.name or "hf-model", text, vision, tied, source,
                          default_image_tokens=1280)
