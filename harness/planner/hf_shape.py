"""A local Hugging Face checkpoint's config.json as a planner Shape, counted on the meta device.

The model is built from the config with no weights (`torch.device("meta")`), and every count is read
off its modules: no hand formulas. Supported: Qwen2-VL, Qwen2.5-VL, Qwen3-VL, MiniCPM-V 4.6 and 4.7.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from harness.errors import UserError
from harness.planner.shape import ImageTokens, Linear, Shape, Tower


@dataclasses.dataclass(frozen=True)
class HFArchitecture:
    """Where the parts of a transformers model live (module paths of the *ForConditionalGeneration
    class). A parameter belongs to the first part whose module holds it, in the order projector,
    vision tower, language model (so a merger inside the vision tower counts as projector)."""

    vision: str
    vision_blocks: str  # the vision tower's repeated blocks (a ModuleList)
    projector: tuple[str, ...]  # projector / merger / resampler
    language_model: tuple[str, ...]  # the language model, its output layer included
    lm_blocks: str


_QWEN_VL = HFArchitecture(vision="model.visual", vision_blocks="model.visual.blocks",
                          projector=("model.visual.merger",),
                          language_model=("model.language_model", "lm_head"),
                          lm_blocks="model.language_model.layers")
_MINICPMV = HFArchitecture(vision="model.vision_tower", vision_blocks="model.vision_tower.encoder.layers",
                           projector=("model.merger",), language_model=("model.language_model", "lm_head"),
                           lm_blocks="model.language_model.layers")
# model_type -> parts, for transformers 5.19's Qwen2VL / Qwen2_5_VL / Qwen3VL / MiniCPMV4_6
# ForConditionalGeneration (and MiniCPMV4_7's). Qwen3-VL's DeepStack mergers (ViT features into early LM layers) are
# projector; MiniCPM-V 4.6's vit_merger (a window-attention 2x2 merge inside the ViT) is vision tower.
HF_ARCHITECTURES = {
    "qwen2_vl": _QWEN_VL,
    "qwen2_5_vl": _QWEN_VL,
    "qwen3_vl": dataclasses.replace(_QWEN_VL, projector=("model.visual.merger", "model.visual.deepstack_merger_list")),
    "minicpmv4_6": _MINICPMV,
    "minicpmv4_7": _MINICPMV,  # 4.6's modules; 4.7 adds canvas M-RoPE (positions, no weights)
}
# Qwen2-VL's default LM image tokens per sample: the model card's recommended max_pixels =
# 1280*28*28, also the embedded tiny model's page limit (32 rows x 40 tokens); --image-tokens
# overrides. Used for every "merge" architecture (Qwen2-VL, Qwen2.5-VL, Qwen3-VL).
DEFAULT_MERGE_IMAGE_TOKENS = 1280


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _scalar(value) -> int:
    """A config size that may be given per axis ([14, 14]): its first value."""
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _text_widths(text) -> dict:
    heads = int(text.num_attention_heads)
    return dict(hidden=int(text.hidden_size), layers=int(text.num_hidden_layers),
                intermediate=int(text.intermediate_size), heads=heads,
                kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
                head_dim=int(getattr(text, "head_dim", None) or text.hidden_size // heads))


def _vision_widths(model_type: str, vision) -> dict:
    if model_type == "qwen2_vl":  # embed_dim is the ViT width; hidden_size is the merger's output
        hidden, layers, heads = int(vision.embed_dim), int(vision.depth), int(vision.num_heads)
        intermediate = int(hidden * float(vision.mlp_ratio))
    elif model_type.startswith("minicpmv"):
        hidden, layers, heads = int(vision.hidden_size), int(vision.num_hidden_layers), int(vision.num_attention_heads)
        intermediate = int(vision.intermediate_size)
    else:  # qwen2_5_vl, qwen3_vl
        hidden, layers, heads = int(vision.hidden_size), int(vision.depth), int(vision.num_heads)
        intermediate = int(vision.intermediate_size)
    return dict(hidden=hidden, layers=layers, intermediate=intermediate, heads=heads, kv_heads=heads,
                head_dim=hidden // heads)


def _image_tokens(model_type: str, config, image_processor: dict | None = None) -> ImageTokens:
    """`image_processor`: the checkpoint's own image-processor settings (processor_config.json), which
    override the class defaults (MiniCPM-V: scale_resolution, slice_mode, max_slice_nums, downsample_mode)."""
    vision = config.vision_config
    patch = _scalar(vision.patch_size)
    if model_type.startswith("minicpmv"):
        # Slices of up to scale_resolution^2 pixels (the image processor's defaults: 448 px, 9 slices
        # + 1 overview); the ViT's window merger (2x2, skipped in downsample_mode "4x") and the
        # merger's merge_kernel_size (merger_times rounds) shrink each slice's patches to LM tokens.
        from transformers.models.minicpmv4_6.image_processing_minicpmv4_6 import MiniCPMV4_6ImageProcessor

        settings = image_processor or {}
        scale = int(settings.get("scale_resolution", MiniCPMV4_6ImageProcessor.scale_resolution))
        slicing = settings.get("slice_mode", True)
        max_slices = int(settings.get("max_slice_nums", MiniCPMV4_6ImageProcessor.max_slice_nums))
        side = scale // patch
        patches = side * side
        merge_h, merge_w = config.merge_kernel_size
        divisor = (int(merge_h) * int(merge_w)) ** int(config.merger_times)
        if settings.get("downsample_mode", config.downsample_mode) != "4x":
            window_h, window_w = vision.window_kernel_size
            divisor *= int(window_h) * int(window_w)
        per_slice, slices = patches // divisor, (max_slices + 1 if slicing else 1)
        whole = (f"an image is 1 overview + up to {slices - 1} slices of <= {side * patch}x{side * patch} px, "
                 f"so {per_slice} to {per_slice * slices} tokens per image" if slicing else
                 f"an image is one view of about {scale}x{scale} px (no slicing), {per_slice} tokens")
        return ImageTokens(
            mode="slices", default_per_sample=per_slice * slices, tokens_per_slice=per_slice,
            patches_per_slice=patches, max_slices=slices,
            formula=f"{per_slice} tokens per slice ({patches} patches of {patch} px, merged {divisor}x); {whole}")
    merge = _scalar(vision.spatial_merge_size)
    return ImageTokens(
        mode="merge", default_per_sample=DEFAULT_MERGE_IMAGE_TOKENS, spatial_merge=merge,
        formula=f"(H/{patch * merge})*(W/{patch * merge}) tokens per image after resizing H and W to "
                f"multiples of {patch * merge} within [min_pixels, max_pixels]; the ViT sees "
                f"{merge * merge}x as many patches")


def _linear(module) -> tuple[int, int, bool]:
    return int(module.in_features), int(module.out_features), module.bias is not None


def _tower_from_model(model, roots: tuple[str, ...], blocks_path: str | None, owned: dict[str, int],
                      linears: dict[str, tuple[int, int, bool]], largest: int, widths: dict) -> Tower:
    """One part of a meta-device model as a Tower, exactly: `owned` are its parameters (name ->
    count), `linears` its nn.Linear modules (full name -> in, out, bias), lm_head left out.

    The blocks of `blocks_path` contribute the linears and other parameters every block has alike
    (block_linears, block_other_params, x layers); what only some blocks have (e.g. the two
    attention kinds of a hybrid model) goes to `linears` (named by block index) and `other_params`,
    so the parts add up to the model's own count. Linear names outside the blocks are relative to
    the part's parent module (e.g. merger.mlp.0)."""
    import torch

    def short(full: str) -> str:
        root = next(r for r in roots if _under(full, r))
        parent = root.rpartition(".")[0]
        return full[len(parent) + 1:] if parent else full

    block_linears, block_other, layers, in_blocks = (), 0, 0, set()
    outer = []
    if blocks_path:
        blocks = list(model.get_submodule(blocks_path))
        layers = len(blocks)
        found = [({n: _linear(m) for n, m in b.named_modules() if isinstance(m, torch.nn.Linear)},
                  {n: p.numel() for n, p in b.named_parameters()}) for b in blocks]
        first_linears, first_params = found[0]
        common = [n for n, l in first_linears.items() if all(lin.get(n) == l for lin, _ in found)]
        of_linears = {f"{n}.{k}" for n in first_linears for k in ("weight", "bias")}
        common_other = [n for n, c in first_params.items()
                        if n not in of_linears and all(par.get(n) == c for _, par in found)]
        block_linears = tuple(Linear(n, *first_linears[n]) for n in common)
        block_other = sum(first_params[n] for n in common_other)
        for i, (lin, _) in enumerate(found):
            outer += [Linear(short(f"{blocks_path}.{i}.{n}"), *l) for n, l in lin.items() if n not in common]
        in_blocks = {full for full in linears if _under(full, blocks_path)}
    outer += [Linear(short(full), *l) for full, l in linears.items() if full not in in_blocks]
    accounted = layers * (sum(l.params for l in block_linears) + block_other) + sum(l.params for l in outer)
    other = sum(owned.values()) - accounted
    if other < 0:
        raise UserError(f"{', '.join(roots)}: the blocks do not add up ({accounted} > {sum(owned.values())} "
                        "parameters); the planner cannot describe this model")
    return Tower(**widths, block_linears=block_linears, block_other_params=block_other, linears=tuple(outer),
                 other_params=other, largest_module_params=largest)


def shape_from_model(model, model_type: str, name: str, source: dict, image_processor: dict | None = None) -> Shape:
    """A Shape from an instantiated transformers model (the meta device is enough: only parameter
    shapes are read) of a supported `model_type` (HF_ARCHITECTURES). Counts are the model's own:
    the parts sum to `sum(p.numel() for p in model.parameters())` (tied weights once). Widths for
    the activation terms (hidden, layers, heads, kv heads, intermediate, vocab, vision widths) and
    the image-token rule come from model.config."""
    import torch

    arch = HF_ARCHITECTURES[model_type]
    parts = {"projector": arch.projector, "vision": (arch.vision,), "language_model": arch.language_model}

    def owner(full: str) -> str | None:
        return next((part for part, roots in parts.items() if any(_under(full, r) for r in roots)), None)

    owned = {part: {} for part in parts}
    for full, p in model.named_parameters():  # tied parameters come once
        part = owner(full)
        if part is None:
            raise UserError(f"{model_type}: parameter {full} belongs to no known part of the model")
        owned[part][full] = p.numel()
    linears = {part: {} for part in parts}
    largest = dict.fromkeys(parts, 0)
    for full, module in model.named_modules():
        part = owner(full)
        if part is None:
            continue
        largest[part] = max(largest[part], sum(p.numel() for p in module.parameters(recurse=False)))
        if isinstance(module, torch.nn.Linear) and full != "lm_head":  # the output layer is never a target
            linears[part][full] = _linear(module)

    config = model.config
    text = config.get_text_config()
    lm_widths = _text_widths(text)
    vision_widths = _vision_widths(model_type, config.vision_config)
    for widths, path, what in ((lm_widths, arch.lm_blocks, "text_config.num_hidden_layers"),
                               (vision_widths, arch.vision_blocks, "the vision config's depth")):
        if len(model.get_submodule(path)) != widths["layers"]:
            raise UserError(f"{model_type}: {what} is {widths['layers']} but {path} has "
                            f"{len(model.get_submodule(path))} blocks")
    output = getattr(model, "lm_head", None)
    tied = output is not None and output.weight is model.get_input_embeddings().weight
    return Shape(
        name=name,
        vision=_tower_from_model(model, parts["vision"], arch.vision_blocks, owned["vision"], linears["vision"],
                                 largest["vision"], vision_widths),
        projector=_tower_from_model(model, parts["projector"], None, owned["projector"], linears["projector"],
                                    largest["projector"], {}),
        language_model=_tower_from_model(model, parts["language_model"], arch.lm_blocks, owned["language_model"],
                                         linears["language_model"], largest["language_model"], lm_widths),
        vocab=int(text.vocab_size), tied_embeddings=tied,
        image_tokens=_image_tokens(model_type, config, image_processor), source=source)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _image_processor_settings(directory: Path) -> dict:
    """The image-processor settings a checkpoint ships (processor_config.json's `image_processor`, or
    preprocessor_config.json), for the keys the image-token rule reads; {} when it ships none."""
    keys = ("scale_resolution", "slice_mode", "max_slice_nums", "downsample_mode")
    for name, section in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
        try:
            raw = json.loads((directory / name).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        settings = raw.get(section, {}) if section else raw
        if isinstance(settings, dict):
            return {k: settings[k] for k in keys if k in settings}
    return {}


def shape_from_hf_config(path: str | Path) -> Shape:
    """A Shape from a local Hugging Face checkpoint directory (or its config.json); weights are not
    needed. transformers reads the config (local files only, no remote code) and builds the model
    on the meta device; every count is that model's own (`shape_from_model`). Supported
    model_types: HF_ARCHITECTURES (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, MiniCPM-V 4.6 and 4.7)."""
    path = Path(path)
    directory = path.parent if path.is_file() or path.name == "config.json" else path
    config_file = directory / "config.json"
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{config_file}: no such file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{config_file}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type not in HF_ARCHITECTURES:
        raise UserError(f"{config_file}: model_type {model_type!r} is not supported; the planner reads "
                        f"{', '.join(repr(t) for t in HF_ARCHITECTURES)} (write a shape JSON for others)")
    import torch
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
        with torch.device("meta"):
            model = transformers.AutoModelForImageTextToText.from_config(config)
    except Exception as exc:  # noqa: BLE001 - any failure to build the model is the config's
        raise UserError(f"{config_file}: transformers {transformers.__version__} cannot build a {model_type} "
                        f"model from it ({_first_line(exc)})") from None
    text = config.get_text_config()
    keys = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "head_dim", "vocab_size", "layer_types")
    vision_keys = ("depth", "num_hidden_layers", "embed_dim", "hidden_size", "intermediate_size", "mlp_ratio",
                   "num_heads", "num_attention_heads", "patch_size", "spatial_merge_size", "temporal_patch_size",
                   "out_hidden_size", "num_position_embeddings", "deepstack_visual_indexes", "image_size",
                   "window_kernel_size")
    source = {"config": str(config_file), "model_type": model_type,
              "counted": f"{type(model).__name__} built on the meta device by transformers {transformers.__version__}",
              "fields": {"text_config": {k: getattr(text, k) for k in keys if getattr(text, k, None) is not None},
                         "vision_config": {k: getattr(config.vision_config, k) for k in vision_keys
                                           if getattr(config.vision_config, k, None) is not None}}}
    image_processor = _image_processor_settings(directory)
    if image_processor:
        source["image_processor"] = image_processor
    try:
        return shape_from_model(model, model_type, directory.resolve().name or "hf-model", source, image_processor)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:  # a config key of an unexpected form
        raise UserError(f"{config_file}: cannot read its {model_type} sizes ({_first_line(exc)})") from None
