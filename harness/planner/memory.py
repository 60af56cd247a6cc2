"""The memory estimate of the planner: `estimate(PlanInput) -> Plan`, and what it answers.

`estimate` gives bytes per GPU by component (frozen weights, LoRA weights, gradients, optimizer
states, ZeRO buffers, stored activations, the transient peak (loss buffers or one recomputed block),
fragmentation, CUDA context) and CPU RAM for offloaded states. Every formula is written out in
docs/plan.md, with measurements on an H200 it was checked against. What DeepSpeed ZeRO adds (buffers,
persistent parameters, the optimizer-step transient, pinned host buffers) is in
harness.planner.zero_memory; the verdict and the error band are in harness.planner.answers.

Units: counts are parameters or elements; memory is bytes internally, GiB (2**30 bytes) on output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from harness.planner.shape import (LM_ONLY_TARGETS, SPEC_TARGETS, TARGET_PRESETS, TARGET_SETS, Shape, Tower,
                                   lm_lora_filter)
from harness.planner.zero_memory import (parameter_tensors, persistent_elements, pinned_partitions_bytes,
                                         stage3_offload_cpu_bytes, stage3_optimizer_step_bytes, zero_buffer_bytes,
                                         zero_get, zero_section)
from harness.run_spec import Spec

GIB = 2**30
PRECISIONS = {"fp32": 4, "bf16": 2, "fp16": 2}  # bytes per weight / activation element

# Defaults that stand for a real software stack; each is documented in docs/plan.md.
CUDA_CONTEXT_GIB = 0.75  # GPU memory used outside PyTorch's allocator: measured 0.75 GiB (H200, torch 2.11)
# peak reserved / peak allocated of PyTorch's allocator: measured 1.03-1.20 on an H200; 1.20 is the value
# harness.planner.published.fit_fragmentation picks on the 'fit' half of the published measurements
FRAGMENTATION_FACTOR = 1.20
PROCESS_BASELINE_CPU_GIB = 0.5  # RSS of torch + transformers + peft + Trainer + deepspeed (measured 507 MB)
DEFAULT_MAX_LENGTH_GRID = (256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384,
                           24576, 32768)
DEFAULT_BATCH_GRID = (1, 2, 4, 8, 16)


@dataclasses.dataclass(frozen=True)
class PlanInput:
    """One training set-up. Defaults: bf16, ZeRO off, 1 GPU of 24 GiB, LoRA r=8 on the LM."""

    shape: Shape
    lora_r: int = 8
    targets: str = "lm"  # see TARGET_SETS
    freeze_vision: bool = True  # False: the ViT and projector are trained in full (tune_vision)
    train_embeddings: bool = False  # the input embeddings trained in full (modules_to_save: embed_tokens)
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
    # the DeepSpeed zero_optimization section (resolved: numbers, no "auto"); None: the one runs get
    # (harness.planner.zero_templates.zero_optimization for this shape), i.e. ms-swift's templates
    zero_config: Mapping | None = None
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
            (self.zero_config is None or self.zero_config.get("stage", 0) == self.zero_stage,
             "zero_config's stage differs from zero_stage"),
            (self.freeze_vision or self.targets in LM_ONLY_TARGETS or self.full_finetune,
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


def plan_input_from_spec(spec: Spec, shape: Shape, *, max_length: int, image_tokens: int | None,
                         **overrides) -> PlanInput:
    """The set-up a lorabench run spec (harness.config.spec) describes: LoRA r, targets preset and
    dropout, micro batch (train.batch_size), precision, gradient checkpointing, freeze_vision, ZeRO
    stage (none: 0) and offloads, world size. `max_length` is text tokens (the LM sequence adds
    `image_tokens`). `overrides` set any other PlanInput field. ValueError for what the planner does
    not model (lora.targets as a list of module names) or an invalid combination."""
    lora, train, dist = spec.lora, spec.train, spec.distributed
    targets = lora.targets
    if not (isinstance(targets, str) and targets in SPEC_TARGETS):
        raise ValueError(f"lora.targets {targets!r}: the planner models the presets only "
                         f"({', '.join(TARGET_PRESETS)})")
    # modules trained in full beside LoRA: the embeddings, and the projector (trained anyway with the
    # vision tower when freeze_vision is off; on its own it is small and not modelled)
    saved = list(lora.modules_to_save)
    unmodelled = [m for m in saved
                  if m != "embed_tokens" and not (m.endswith("merger") and not train.freeze_vision)]
    if unmodelled:
        raise ValueError(f"lora.modules_to_save {unmodelled}: the planner models embed_tokens (and the "
                         f"projector with freeze_vision off) only")
    fields = dict(
        shape=shape, lora_r=lora.r, targets=SPEC_TARGETS[targets], lora_dropout=lora.dropout,
        freeze_vision=train.freeze_vision, train_embeddings="embed_tokens" in saved,
        micro_batch_size=train.batch_size, max_length=max_length,
        image_tokens=image_tokens, grad_checkpointing=train.grad_checkpointing, precision=train.precision,
        zero_stage=dist.zero_stage or 0, offload_optimizer=dist.offload_optimizer,
        offload_params=dist.offload_params, world_size=dist.world_size)
    return PlanInput(**(fields | overrides))


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
                "details": self.details}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


LOGITS_BYTES_PER_ELEMENT = 12  # three fp32 (token x vocab) buffers at the start of backward (measured)


def decoder_block_bytes_per_token(t: Tower, w: int, linear_input_bytes: int) -> int:
    """Bytes one decoder block (Qwen2/Llama: RMSNorm, GQA attention, SwiGLU MLP) keeps for backward,
    per token, with flash/SDPA attention. Korthikanti et al. 2022's per-layer count (34 sbh bytes for a
    GPT block) redone for this block with frozen base weights:
    - 2 RMSNorms upcast to fp32 and keep that fp32 input: 2 x 4h;
    - SDPA keeps Q, K, V and its output: w (h_q + 2 h_kv + h_q) (GQA: K, V stay h_kv wide; h_q =
      heads x head_dim, the hidden size h unless the config sets head_dim apart);
    - SwiGLU keeps gate output (SiLU input), SiLU output and up output: w 3I;
    - frozen linears keep nothing; inputs of LoRA'd (or trained) linears: `linear_input_bytes`."""
    return 2 * 4 * t.hidden + w * (2 * t.q_dim + 2 * t.kv_dim) + w * 3 * t.intermediate + linear_input_bytes


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


def linear_input_bytes_per_token(t: Tower, mode: str, w: int, lora_input_bytes: int, only=None) -> int:
    """What the block's linear layers keep of their inputs, per token.
    mode 'full' (weights trained): each distinct input once in the compute dtype: the attention
    input (shared by q/k/v), the attention output, the MLP input (shared by gate/up), the MLP
    intermediate = 3h + I. mode 'lora': PEFT casts each LoRA layer's input to the adapter dtype
    (and applies dropout) separately, so every LoRA'd linear keeps its own copy: lora_input_bytes
    per input feature, for the block's linears and, spread over the blocks, the tower's other
    linears (those only some blocks have, e.g. a hybrid LM's two attention kinds; none in the
    Qwen2-VL and MiniCPM-V 2.6 towers); `only(linear)` selects the LoRA'd ones when not all are.
    mode 'frozen': a frozen linear keeps nothing (only its weight is needed)."""
    if mode == "full":
        return w * (3 * t.hidden + t.intermediate)
    if mode == "lora":
        block, other = t.lora_linears(only)
        outer = _ceil_div(sum(l.in_features for l in other), t.layers) if t.layers else 0
        return lora_input_bytes * (sum(l.in_features for l in block) + outer)
    return 0


@dataclasses.dataclass(frozen=True)
class _TowerActivations:
    stored: int  # kept from the forward pass until backward reaches the block
    recompute: int  # one block's full activations, alive only while checkpointing recomputes it


def _tower_activations(t: Tower, per_token: int, seq: int, batch: int, w: int, flash: bool,
                       ckpt: bool) -> _TowerActivations:
    """Checkpointing keeps each block's input (w*s*b*h) and recomputes one block at a time.
    Without flash/SDPA (eager), attention also keeps the fp32 softmax and its 16-bit copy,
    (4 + w) a s^2 b, and K, V are repeated to all heads: + w 2 (h_q - h_kv) per token."""
    if not t.layers or not seq:
        return _TowerActivations(0, 0)
    tokens = seq * batch
    full_block = tokens * per_token
    if not flash:
        full_block += (4 + w) * t.heads * seq * seq * batch + tokens * w * 2 * (t.q_dim - t.kv_dim)
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
    if p.train_embeddings and not p.full_finetune:
        embeddings = shape.vocab * shape.language_model.hidden
        trained_base += embeddings
        largest_trained_module = max(largest_trained_module, embeddings)
    frozen = total - trained_base
    trainable = lora + trained_base

    # --- model states (bytes per parameter) -------------------------------------------------
    # DeepSpeed casts the whole module, LoRA included, to the 16-bit dtype and keeps an fp32 master
    # copy plus an fp32 gradient partition for the step (its own accounting: "18 = 2 grads16 +
    # 4 grads32 + 4 params32 + 8 optimizer states"); in fp32 there is no second copy. At stage 3 the
    # fp32 gradient exists only during the step (the optimizer-step transient below). Without
    # DeepSpeed, PEFT keeps adapters in fp32 (autocast_adapter_dtype) and AdamW needs no master.
    adam = 8  # m and v in fp32
    optimizer_per_param = adam + (8 if mixed else 0)
    if p.zero_stage == 3 and mixed:
        optimizer_per_param -= 4
    lora_weight_b, lora_grad_b, lora_opt_b = (4, 4, adam) if p.fp32_adapters else (w, w, optimizer_per_param)
    param_div = n_gpus if p.zero_stage == 3 else 1
    grad_div = n_gpus if p.zero_stage >= 2 else 1
    opt_div = n_gpus if p.zero_stage >= 1 else 1

    zero = zero_section(p)
    # ZeRO-3 keeps parameters at or below stage3_param_persistence_threshold whole on every GPU
    tensors = parameter_tensors(shape, p.targets, p.lora_r, with_lora=not p.full_finetune) if p.zero_stage == 3 else []
    threshold = zero_get(zero, "stage3_param_persistence_threshold") if p.zero_stage == 3 else 0
    persist_base, persist_lora = persistent_elements(tensors, threshold)
    persist_base = min(persist_base, frozen)
    params_on_gpu = not p.offload_params
    optimizer_bytes = lora * lora_opt_b + trained_base * optimizer_per_param
    gradient_bytes = lora * lora_grad_b + trained_base * w
    gpu = {
        "frozen_weights": _ceil_div((frozen - persist_base) * w, param_div) if params_on_gpu else 0,
        "lora_weights": _ceil_div((lora - persist_lora) * lora_weight_b, param_div) if params_on_gpu else 0,
        "trained_base_weights": _ceil_div(trained_base * w, param_div) if params_on_gpu else 0,
        "persistent_params": persist_base * w + persist_lora * lora_weight_b,
        # With offload_optimizer, gradients stream to the CPU optimizer through the reduce bucket
        # (ZeRO-3's gradient partitions live on the CPU then: stage3.py, self.device is cpu).
        "gradients": 0 if p.offload_optimizer else _ceil_div(gradient_bytes, grad_div),
        "optimizer_states": 0 if p.offload_optimizer else _ceil_div(optimizer_bytes, opt_div),
    }

    # --- ZeRO buffers ----------------------------------------------------------------------------
    gpu["zero_buffers"] = zero_buffer_bytes(zero, w, total, shape.largest_module_params, largest_trained_module,
                                            persist_base + persist_lora)

    # --- activations -----------------------------------------------------------------------------
    lm_t, vit_t = shape.language_model, shape.vision
    seq, batch = p.lm_seq_len, p.micro_batch_size
    # Per input feature of a LoRA'd linear: its cast copy in the adapter dtype (+ 1 B dropout mask).
    lora_input_b = (4 if p.fp32_adapters else w) + (1 if p.lora_dropout > 0 else 0)
    lm_mode = "full" if p.full_finetune else "lora"
    lm_per_token = decoder_block_bytes_per_token(
        lm_t, w, linear_input_bytes_per_token(lm_t, lm_mode, w, lora_input_b, lm_lora_filter(p.targets)))
    # The ViT keeps activations when it is trained (in full or by LoRA) and also when frozen under
    # gradient checkpointing: transformers 5's gradient_checkpointing_enable() hooks the input
    # embeddings of every sub-model, the ViT's patch embedding included, so the frozen ViT runs
    # under autograd (measured: docs/plan.md).
    if p.full_finetune or not p.freeze_vision:
        vit_mode = "full"
    elif p.targets not in LM_ONLY_TARGETS:
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
    # ZeRO-3's optimizer step converts a sub-group's gradients to fp32 on the GPU after backward has
    # freed the activations: it raises the peak only by what exceeds them.
    step = (stage3_optimizer_step_bytes(zero, _ceil_div(trainable, n_gpus))
            if p.zero_stage == 3 and mixed and not p.offload_optimizer else 0)
    gpu["optimizer_step"] = max(0, step - stored - transient)

    allocated = sum(gpu.values())
    gpu["fragmentation"] = int(allocated * (p.fragmentation_factor - 1.0))
    gpu["cuda_context"] = int(p.cuda_context_gib * GIB)
    gpu["total"] = sum(gpu.values())

    # --- CPU RAM, whole node ------------------------------------------------------------------
    cpu = {
        "offloaded_optimizer": optimizer_bytes if p.offload_optimizer else 0,
        # In fp32 the offloaded gradients are a separate fp32 buffer; in 16-bit they are the fp32
        # gradient already counted in the optimizer states (stages 1-2).
        "offloaded_gradients": trainable * 4 if p.offload_optimizer and not mixed else 0,
        "offloaded_params": (frozen * w + lora * lora_weight_b + trained_base * w) if p.offload_params else 0,
        "process_baseline": int(n_gpus * PROCESS_BASELINE_CPU_GIB * GIB),
    }
    if p.zero_stage == 3 and p.offload_optimizer and mixed:
        offload = stage3_offload_cpu_bytes(zero, trainable, n_gpus, w)
        cpu["offloaded_optimizer"], cpu["offloaded_gradients"] = offload["optimizer"], offload["pinned_gradients"]
    if p.zero_stage == 3 and p.offload_params:
        pinned = bool((zero.get("offload_param") or {}).get("pin_memory", False))
        cpu["offloaded_params"] = (pinned_partitions_bytes(tensors, n_gpus, w, threshold) if pinned
                                   else (frozen - persist_base + lora - persist_lora + trained_base) * w)
    cpu["total"] = sum(cpu.values())

    params = {"total": total, "frozen": frozen, "lora": lora, "trained_base": trained_base,
              "trainable": trainable, "largest_module": shape.largest_module_params,
              "vision": shape.vision.params, "projector": shape.projector.params,
              "language_model": shape.language_model.params,
              "lora_by_targets": {name: shape.lora_params(target_set, p.lora_r)
                                  for name, target_set in TARGET_PRESETS.items()}}
    no_ckpt, ckpt = activations(False), activations(True)
    details = {
        "zero_config": zero,
        "lm_seq_len": seq, "image_tokens": p.image_tokens_per_sample,
        "vision_patches_per_group": v_seq, "vision_groups_per_sample": groups,
        "vision_activations_kept": bool(vit_keeps and v_seq),
        "fp32_adapters": p.fp32_adapters,
        "logits_gib": round(logits / GIB, 4),
        "activations_no_ckpt_gib": round(sum(no_ckpt) / GIB, 4),
        "activations_ckpt_gib": round(sum(ckpt) / GIB, 4),
        "persistent_params": persist_base + persist_lora,
        "model_states_gpu_gib": round((sum(gpu[k] for k in (
            "frozen_weights", "lora_weights", "trained_base_weights", "persistent_params", "gradients",
            "optimizer_states", "zero_buffers"))) / GIB, 4),
    }
    return Plan(inputs=inputs, params=params, gpu_bytes=gpu, cpu_bytes=cpu, details=details)
