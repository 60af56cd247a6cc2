"""`lorabench plan`: will a LoRA fine-tuning run of a real VLM fit in GPU memory? (No weights needed.)

Three parts, top to bottom:

1. Shapes. A `Shape` holds a model's architecture as numbers: per tower (vision, projector, language
   model) the LoRA-targetable linear layers of one block, the other parameters, and the image-token
   rule. Shipped shapes are JSON files in `harness/shapes/` (`load_shape`, `builtin_shape`); a local
   Hugging Face Qwen2-VL `config.json` (e.g. the embedded tiny model) becomes a Shape through
   `shape_from_hf_config`, so the estimate can be checked against measured runs.
2. Estimate. `estimate(PlanInput) -> Plan`: bytes per GPU by component (frozen weights, LoRA weights,
   gradients, optimizer states, ZeRO buffers, stored activations, the transient peak (loss buffers
   or one recomputed block), fragmentation, CUDA context) and CPU RAM for offloaded states. Every
   formula is written out in docs/plan.md, with measurements on an H200 it was checked against.
3. Answers. `fits`, `verdict` ("fits on 3 x 24 GiB (headroom 5.21 GiB)"), `search_fits` (largest
   max_length per batch size over a grid) and `deepspeed_crosscheck` (DeepSpeed's own cold
   estimators next to ours, for full fine-tuning, which is all DeepSpeed's estimators know).

Units: counts are parameters or elements; memory is bytes internally, GiB (2**30 bytes) on output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import sys
from pathlib import Path

from harness.errors import UserError

GIB = 2**30
SHAPES_DIR = Path(__file__).with_name("shapes")
BUILTIN_SHAPES = ("minicpm-v-2_6", "qwen2-vl-7b", "qwen2-vl-2b")
TARGET_SETS = ("lm", "lm+vision", "all-linear")
PRECISIONS = {"fp32": 4, "bf16": 2, "fp16": 2}  # bytes per weight / activation element

# Defaults that stand for a real software stack; each is documented in docs/plan.md.
CUDA_CONTEXT_GIB = 0.75  # GPU memory used outside PyTorch's allocator: measured 0.75 GiB (H200, torch 2.11)
FRAGMENTATION_FACTOR = 1.10  # peak reserved / peak allocated of PyTorch's allocator: measured 1.03-1.20
PROCESS_BASELINE_CPU_GIB = 0.5  # RSS of torch + transformers + peft + Trainer + deepspeed (measured 507 MB)
ZERO3_MAX_LIVE_PARAMS = 1_000_000_000  # DeepSpeed stage3_max_live_parameters default (also HF's configs)
ZERO12_ALLGATHER_BUCKET = 200_000_000  # allgather_bucket_size in the usual HF/DeepSpeed zero2 configs
DEFAULT_MAX_LENGTH_GRID = (256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384,
                           24576, 32768)
DEFAULT_BATCH_GRID = (1, 2, 4, 8, 16)


# --------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------

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
    """Build a Shape from the JSON layout of harness/shapes/*.json; errors name `where` and the key."""
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


# --------------------------------------------------------------------------------------------------
# Estimate
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PlanInput:
    """One training set-up. Defaults: bf16, ZeRO off, 1 GPU of 24 GiB, LoRA r=8 on the LM."""

    shape: Shape
    lora_r: int = 8
    targets: str = "lm"  # see TARGET_SETS
    freeze_vision: bool = True  # False: the ViT and projector are trained in full (tune_vision)
    micro_batch_size: int = 1
    max_length: int = 2048  # text tokens per sample; the LM sequence adds image_tokens
    image_tokens: int | None = None  # LM tokens from images per sample; None: the shape's default
    grad_checkpointing: bool = True
    flash_attention: bool = True  # FlashAttention / SDPA: no s x s score matrix is stored
    precision: str = "bf16"  # fp32 | bf16 | fp16
    lora_dropout: float = 0.05  # > 0 adds a 1-byte dropout mask per LoRA input element (swift, MiniCPM-V default)
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False
    world_size: int = 1
    gpu_mem_gib: float = 24.0
    full_finetune: bool = False  # train every parameter (the DeepSpeed cross-check uses this)
    adapter_fp32: bool | None = None  # None: fp32 without DeepSpeed (stage 0), compute dtype with it
    zero3_max_live_params: int = ZERO3_MAX_LIVE_PARAMS
    cuda_context_gib: float = CUDA_CONTEXT_GIB
    fragmentation_factor: float = FRAGMENTATION_FACTOR

    def __post_init__(self):
        checks = [
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
            (self.targets in TARGET_SETS, f"targets must be one of {', '.join(TARGET_SETS)}"),
            (self.zero_stage in (0, 1, 2, 3), "zero_stage must be 0, 1, 2 or 3"),
            (not self.offload_params or self.zero_stage == 3, "offload_params needs ZeRO stage 3"),
            (not self.offload_optimizer or self.zero_stage >= 1, "offload_optimizer needs ZeRO stage >= 1"),
            (self.world_size >= 1, "world_size must be >= 1"),
            (self.micro_batch_size >= 1, "micro_batch_size must be >= 1"),
            (self.max_length >= 1, "max_length must be >= 1"),
            (self.lora_r >= 1, "lora_r must be >= 1"),
            (self.image_tokens is None or self.image_tokens >= 0, "image_tokens must be >= 0"),
            (0.0 <= self.lora_dropout < 1.0, "lora_dropout must be in [0, 1)"),
            (self.fragmentation_factor >= 1.0, "fragmentation_factor must be >= 1"),
            (self.freeze_vision or self.targets == "lm" or self.full_finetune,
             "freeze_vision=False trains the vision tower and projector in full; LoRA on them as "
             "well would be redundant: use targets 'lm'"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def image_tokens_per_sample(self) -> int:
        return self.shape.image_tokens.default_per_sample if self.image_tokens is None else self.image_tokens

    @property
    def fp32_adapters(self) -> bool:
        """LoRA weights in fp32? PEFT keeps them fp32 on a 16-bit model (autocast_adapter_dtype);
        DeepSpeed (modelled for ZeRO >= 1) casts the whole module to the 16-bit dtype."""
        if self.precision == "fp32":
            return True
        return self.zero_stage == 0 if self.adapter_fp32 is None else self.adapter_fp32

    @property
    def lm_seq_len(self) -> int:
        return self.max_length + self.image_tokens_per_sample


@dataclasses.dataclass(frozen=True)
class Plan:
    """An estimate. `gpu_bytes` and `cpu_bytes` are ordered breakdowns; `params` counts parameters.
    GPU figures are per GPU; CPU figures are for the whole node (all world_size processes)."""

    inputs: PlanInput
    params: dict
    gpu_bytes: dict
    cpu_bytes: dict
    details: dict

    @property
    def gpu_total_bytes(self) -> int:
        return self.gpu_bytes["total"]

    @property
    def gpu_total_gib(self) -> float:
        return self.gpu_total_bytes / GIB

    @property
    def gpu_gib(self) -> dict:
        return {k: v / GIB for k, v in self.gpu_bytes.items()}

    @property
    def cpu_gib(self) -> dict:
        return {k: v / GIB for k, v in self.cpu_bytes.items()}

    def to_dict(self) -> dict:
        inputs = {f.name: getattr(self.inputs, f.name) for f in dataclasses.fields(self.inputs)
                  if f.name != "shape"}
        inputs.update(model=self.inputs.shape.name, image_tokens=self.inputs.image_tokens_per_sample)
        return {"inputs": inputs, "params": self.params,
                "gpu_gib": {k: round(v, 4) for k, v in self.gpu_gib.items()},
                "cpu_gib": {k: round(v, 4) for k, v in self.cpu_gib.items()},
                "details": self.details,
                "fits": fits(self), "verdict": verdict(self)}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


LOGITS_BYTES_PER_ELEMENT = 12  # three fp32 (token x vocab) buffers at the start of backward (measured)


def decoder_block_bytes_per_token(t: Tower, w: int, linear_input_bytes: int) -> int:
    """Bytes one decoder block (Qwen2/Llama: RMSNorm, GQA attention, SwiGLU MLP) keeps for backward,
    per token, with flash/SDPA attention. Korthikanti et al. 2022's per-layer count (34 sbh bytes for a
    GPT block) redone for this block with frozen base weights:
    - 2 RMSNorms upcast to fp32 and keep that fp32 input: 2 x 4h;
    - SDPA keeps Q, K, V and its output: w (h + 2 h_kv + h) (GQA: K, V stay h_kv wide);
    - SwiGLU keeps gate output (SiLU input), SiLU output and up output: w 3I;
    - frozen linears keep nothing; inputs of LoRA'd (or trained) linears: `linear_input_bytes`."""
    return 2 * 4 * t.hidden + w * (2 * t.hidden + 2 * t.kv_dim) + w * 3 * t.intermediate + linear_input_bytes


def vit_block_bytes_per_token(t: Tower, w: int, linear_input_bytes: int) -> int:
    """Bytes one ViT block (LayerNorm, MHA, GELU MLP) keeps for backward, per patch, flash/SDPA:
    - 2 LayerNorms keep their input: w 2h;
    - SDPA keeps Q, K, V and its output: w 4h; with a fused qkv projection (Qwen2-VL) V is a view
      of the whole 3h qkv output, which stays alive: + w 2h;
    - the MLP keeps fc1's output and the GELU's intermediate (QuickGELU's sigmoid): w 2I;
    - inputs of LoRA'd (or trained) linears: `linear_input_bytes`."""
    fused_qkv = any(l.name.endswith("qkv") for l in t.block_linears)
    attention = 4 * t.hidden + (2 * t.hidden if fused_qkv else 0)
    return w * (2 * t.hidden + attention + 2 * t.intermediate) + linear_input_bytes


def linear_input_bytes_per_token(t: Tower, mode: str, w: int, lora_input_bytes: int) -> int:
    """What the block's linear layers keep of their inputs, per token.
    mode 'full' (weights trained): each distinct input once in the compute dtype: the attention
    input (shared by q/k/v), the attention output, the MLP input (shared by gate/up), the MLP
    intermediate = 3h + I. mode 'lora': PEFT casts each LoRA layer's input to the adapter dtype
    (and applies dropout) separately, so every LoRA'd linear keeps its own copy: lora_input_bytes
    per input feature. mode 'frozen': a frozen linear keeps nothing (only its weight is needed)."""
    if mode == "full":
        return w * (3 * t.hidden + t.intermediate)
    if mode == "lora":
        return lora_input_bytes * sum(l.in_features for l in t.block_linears)
    return 0


@dataclasses.dataclass(frozen=True)
class _TowerActivations:
    stored: int  # kept from the forward pass until backward reaches the block
    recompute: int  # one block's full activations, alive only while checkpointing recomputes it


def _tower_activations(t: Tower, per_token: int, seq: int, batch: int, w: int, flash: bool,
                       ckpt: bool) -> _TowerActivations:
    """Checkpointing keeps each block's input (w*s*b*h) and recomputes one block at a time.
    Without flash/SDPA (eager), attention also keeps the fp32 softmax and its 16-bit copy,
    (4 + w) a s^2 b, and K, V are repeated to all heads: + w 2 (h - h_kv) per token."""
    if not t.layers or not seq:
        return _TowerActivations(0, 0)
    tokens = seq * batch
    full_block = tokens * per_token
    if not flash:
        full_block += (4 + w) * t.heads * seq * seq * batch + tokens * w * 2 * (t.hidden - t.kv_dim)
    if ckpt:
        return _TowerActivations(stored=t.layers * tokens * t.hidden * w, recompute=full_block)
    return _TowerActivations(stored=t.layers * full_block, recompute=0)


def estimate(inputs: PlanInput) -> Plan:
    """Per-GPU and CPU memory for one training set-up. See docs/plan.md for every term."""
    shape, p = inputs.shape, inputs
    n_gpus = p.world_size
    w = PRECISIONS[p.precision]  # bytes per weight, gradient and activation element
    mixed = p.precision != "fp32"

    # --- what is trained ---------------------------------------------------------------------
    total = shape.total_params
    lora = 0 if p.full_finetune else shape.lora_params(p.targets, p.lora_r)
    if p.full_finetune:
        trained_base = total
        largest_trained_module = shape.largest_module_params
    elif not p.freeze_vision:
        trained_base = shape.vision.params + shape.projector.params
        largest_trained_module = max(shape.vision.largest_module_params,
                                     shape.projector.largest_module_params)
    else:
        trained_base, largest_trained_module = 0, 0
    frozen = total - trained_base
    trainable = lora + trained_base

    # --- model states (bytes per parameter) -------------------------------------------------
    # DeepSpeed casts the whole module, LoRA included, to the 16-bit dtype and keeps an fp32 master
    # copy plus an fp32 gradient partition for the step (its own accounting: "18 = 2 grads16 +
    # 4 grads32 + 4 params32 + 8 optimizer states"); in fp32 there is no second copy. Without
    # DeepSpeed, PEFT keeps adapters in fp32 (autocast_adapter_dtype) and AdamW needs no master.
    adam = 8  # m and v in fp32
    optimizer_per_param = adam + (8 if mixed else 0)
    lora_weight_b, lora_grad_b, lora_opt_b = (4, 4, adam) if p.fp32_adapters else (w, w, optimizer_per_param)
    param_div = n_gpus if p.zero_stage == 3 else 1
    grad_div = n_gpus if p.zero_stage >= 2 else 1
    opt_div = n_gpus if p.zero_stage >= 1 else 1

    params_on_gpu = not p.offload_params
    optimizer_bytes = lora * lora_opt_b + trained_base * optimizer_per_param
    gradient_bytes = lora * lora_grad_b + trained_base * w
    gpu = {
        "frozen_weights": _ceil_div(frozen * w, param_div) if params_on_gpu else 0,
        "lora_weights": _ceil_div(lora * lora_weight_b, param_div) if params_on_gpu else 0,
        "trained_base_weights": _ceil_div(trained_base * w, param_div) if params_on_gpu else 0,
        # With offload_optimizer, gradients stream to the CPU optimizer through the reduce bucket.
        "gradients": 0 if p.offload_optimizer else _ceil_div(gradient_bytes, grad_div),
        "optimizer_states": 0 if p.offload_optimizer else _ceil_div(optimizer_bytes, opt_div),
    }

    # --- ZeRO buffers ----------------------------------------------------------------------------
    hidden = shape.language_model.hidden
    reduce_bucket = w * min(trainable, hidden * hidden)  # HF "auto": reduce_bucket_size = h^2
    if p.zero_stage in (1, 2):
        zero_buffers = reduce_bucket + w * min(trainable, ZERO12_ALLGATHER_BUCKET)
    elif p.zero_stage == 3:
        # Gathered (un-partitioned) parameters: DeepSpeed keeps up to stage3_max_live_parameters
        # live and must hold at least the largest module; plus the full gradient of the largest
        # trained base module before its reduce-scatter.
        gathered = min(total, max(p.zero3_max_live_params, shape.largest_module_params))
        zero_buffers = reduce_bucket + w * gathered + w * largest_trained_module
    else:
        zero_buffers = 0
    gpu["zero_buffers"] = zero_buffers

    # --- activations -----------------------------------------------------------------------------
    lm_t, vit_t = shape.language_model, shape.vision
    seq, batch = p.lm_seq_len, p.micro_batch_size
    # Per input feature of a LoRA'd linear: its cast copy in the adapter dtype (+ 1 B dropout mask).
    lora_input_b = (4 if p.fp32_adapters else w) + (1 if p.lora_dropout > 0 else 0)
    lm_mode = "full" if p.full_finetune else "lora"
    lm_per_token = decoder_block_bytes_per_token(
        lm_t, w, linear_input_bytes_per_token(lm_t, lm_mode, w, lora_input_b))
    # The ViT keeps activations when it is trained (in full or by LoRA) and also when frozen under
    # gradient checkpointing: transformers 5's gradient_checkpointing_enable() hooks the input
    # embeddings of every sub-model, the ViT's patch embedding included, so the frozen ViT runs
    # under autograd (measured: docs/plan.md).
    if p.full_finetune or not p.freeze_vision:
        vit_mode = "full"
    elif p.targets != "lm":
        vit_mode = "lora"
    else:
        vit_mode = "frozen"
    vit_keeps = vit_mode != "frozen" or p.grad_checkpointing
    v_seq, groups = shape.image_tokens.vision_groups(p.image_tokens_per_sample)
    v_per_token = vit_block_bytes_per_token(
        vit_t, w, linear_input_bytes_per_token(vit_t, vit_mode, w, lora_input_b))
    logits = seq * batch * shape.vocab * LOGITS_BYTES_PER_ELEMENT

    def activations(ckpt: bool) -> tuple[int, int]:
        """-> (stored activations, transient peak) for a checkpointing choice. The transient is the
        larger of the loss buffers (alive at the start of backward) and one recomputed block (alive
        later): they never coexist."""
        lm_a = _tower_activations(lm_t, lm_per_token, seq, batch, w, p.flash_attention, ckpt)
        vit_a = (_tower_activations(vit_t, v_per_token, v_seq, batch * groups, w, p.flash_attention, ckpt)
                 if vit_keeps else _TowerActivations(0, 0))
        return lm_a.stored + vit_a.stored, max(logits, lm_a.recompute, vit_a.recompute)

    stored, transient = activations(p.grad_checkpointing)
    gpu["activations"] = stored
    gpu["transient"] = transient

    allocated = sum(gpu.values())
    gpu["fragmentation"] = int(allocated * (p.fragmentation_factor - 1.0))
    gpu["cuda_context"] = int(p.cuda_context_gib * GIB)
    gpu["total"] = sum(gpu.values())

    # --- CPU RAM, whole node ------------------------------------------------------------------
    cpu = {
        "offloaded_optimizer": optimizer_bytes if p.offload_optimizer else 0,
        # In fp32 the offloaded gradients are a separate fp32 buffer; in 16-bit they are the fp32
        # gradient already counted in the optimizer states.
        "offloaded_gradients": trainable * 4 if p.offload_optimizer and not mixed else 0,
        "offloaded_params": (frozen * w + lora * lora_weight_b + trained_base * w) if p.offload_params else 0,
        "process_baseline": int(n_gpus * PROCESS_BASELINE_CPU_GIB * GIB),
    }
    cpu["total"] = sum(cpu.values())

    params = {"total": total, "frozen": frozen, "lora": lora, "trained_base": trained_base,
              "trainable": trainable, "largest_module": shape.largest_module_params}
    no_ckpt, ckpt = activations(False), activations(True)
    details = {
        "lm_seq_len": seq, "image_tokens": p.image_tokens_per_sample,
        "vision_patches_per_group": v_seq, "vision_groups_per_sample": groups,
        "vision_activations_kept": bool(vit_keeps and v_seq),
        "fp32_adapters": p.fp32_adapters,
        "logits_gib": round(logits / GIB, 4),
        "activations_no_ckpt_gib": round(sum(no_ckpt) / GIB, 4),
        "activations_ckpt_gib": round(sum(ckpt) / GIB, 4),
        "model_states_gpu_gib": round((sum(gpu[k] for k in (
            "frozen_weights", "lora_weights", "trained_base_weights", "gradients",
            "optimizer_states", "zero_buffers"))) / GIB, 4),
    }
    return Plan(inputs=inputs, params=params, gpu_bytes=gpu, cpu_bytes=cpu, details=details)


# --------------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------------

def fits(plan: Plan, gpu_gib: float | None = None) -> bool:
    """True when the per-GPU total is within `gpu_gib` (default: the plan's gpu_mem_gib)."""
    gpu_gib = plan.inputs.gpu_mem_gib if gpu_gib is None else gpu_gib
    return plan.gpu_total_bytes <= gpu_gib * GIB


def verdict(plan: Plan, gpu_gib: float | None = None) -> str:
    """'fits on 3 x 24 GiB (headroom 5.21 GiB)' or 'does not fit on 3 x 24 GiB (short by 1.32 GiB)'."""
    gpu_gib = plan.inputs.gpu_mem_gib if gpu_gib is None else gpu_gib
    margin = gpu_gib - plan.gpu_total_gib
    where = f"{plan.inputs.world_size} x {gpu_gib:g} GiB"
    if fits(plan, gpu_gib):
        return f"fits on {where} (headroom {margin:.2f} GiB)"
    return f"does not fit on {where} (short by {-margin:.2f} GiB)"


def search_fits(inputs: PlanInput, batches=DEFAULT_BATCH_GRID,
                max_lengths=DEFAULT_MAX_LENGTH_GRID) -> list[dict]:
    """For each micro batch size, the largest max_length on the grid that fits inputs.gpu_mem_gib
    (None if even the smallest does not), with its total and headroom in GiB."""
    rows = []
    for batch in batches:
        best = None
        for max_length in sorted(max_lengths):
            plan = estimate(dataclasses.replace(inputs, micro_batch_size=batch, max_length=max_length))
            if not fits(plan):
                break  # memory grows with max_length: nothing longer fits either
            best = plan
        rows.append({"batch": batch,
                     "max_length": best.inputs.max_length if best else None,
                     "total_gib": round(best.gpu_total_gib, 2) if best else None,
                     "headroom_gib": round(inputs.gpu_mem_gib - best.gpu_total_gib, 2) if best else None})
    return rows


def deepspeed_cold_estimate(zero_stage: int, total_params: int, largest_layer_params: int,
                            world_size: int, offload_optimizer: bool, offload_params: bool) -> dict:
    """DeepSpeed's own model-states estimate (full training, 16-bit) for one configuration.

    Calls the `*_all_cold` printer (captured as `table`) and the function it prints from for the
    row that matches our options. Raises ImportError when deepspeed is absent, ValueError for a
    stage DeepSpeed has no estimator for (0, 1). GiB: DeepSpeed divides by 2**30 and prints 'GB'."""
    if zero_stage == 2:
        with contextlib.redirect_stdout(sys.stderr):  # its import logs to stdout: keep --json clean
            from deepspeed.runtime.zero.stage_1_and_2 import (
                estimate_zero2_model_states_mem_needs, estimate_zero2_model_states_mem_needs_all_cold)
        with contextlib.redirect_stdout(io.StringIO()) as table:
            estimate_zero2_model_states_mem_needs_all_cold(total_params, num_gpus_per_node=world_size)
        cpu_b, gpu_b = estimate_zero2_model_states_mem_needs(
            total_params, num_gpus_per_node=world_size, cpu_offload=offload_optimizer)
    elif zero_stage == 3:
        with contextlib.redirect_stdout(sys.stderr):
            from deepspeed.runtime.zero.stage3 import (
                estimate_zero3_model_states_mem_needs, estimate_zero3_model_states_mem_needs_all_cold)
        with contextlib.redirect_stdout(io.StringIO()) as table:
            estimate_zero3_model_states_mem_needs_all_cold(total_params, largest_layer_params,
                                                           num_gpus_per_node=world_size)
        cpu_b, gpu_b, _ = estimate_zero3_model_states_mem_needs(
            total_params, largest_layer_params, num_gpus_per_node=world_size,
            cpu_offload=offload_optimizer, cpu_offload_params=offload_params)
    else:
        raise ValueError(f"DeepSpeed has estimators for ZeRO stages 2 and 3 only, not {zero_stage}")
    return {"gpu_gib": gpu_b / GIB, "cpu_gib": cpu_b / GIB, "table": table.getvalue()}


def deepspeed_crosscheck(inputs: PlanInput) -> dict:
    """DeepSpeed's cold estimate next to ours, both for FULL fine-tuning of the same model (what
    DeepSpeed's estimators assume: every parameter trained; they know nothing of LoRA) and for model
    states only (weights, gradients, optimizer, ZeRO buffers: no activations, no overhead)."""
    full = dataclasses.replace(inputs, full_finetune=True, freeze_vision=True, targets="lm")
    ours = estimate(full)
    ours_cpu = ours.cpu_bytes["total"] - ours.cpu_bytes["process_baseline"]
    result = {"zero_stage": inputs.zero_stage, "world_size": inputs.world_size,
              "total_params": ours.params["total"], "largest_layer_params": ours.params["largest_module"],
              "ours_gpu_gib": ours.details["model_states_gpu_gib"], "ours_cpu_gib": round(ours_cpu / GIB, 4)}
    try:
        ds = deepspeed_cold_estimate(inputs.zero_stage, ours.params["total"],
                                     ours.params["largest_module"], inputs.world_size,
                                     inputs.offload_optimizer, inputs.offload_params)
    except ImportError:
        return result | {"available": False, "reason": "deepspeed is not installed"}
    except ValueError as exc:
        return result | {"available": False, "reason": str(exc)}
    return result | {"available": True, "deepspeed_gpu_gib": round(ds["gpu_gib"], 4),
                     "deepspeed_cpu_gib": round(ds["cpu_gib"], 4), "deepspeed_table": ds["table"]}
