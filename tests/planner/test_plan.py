"""`harness.planner.estimate` / `lorabench plan`: hand-computed numbers on a made-up 2-layer shape, the shipped
shapes against well-known parameter totals, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from harness import planner as P
from harness.cli import main
from harness.errors import UserError
from harness.paths import REPO_ROOT

GIB = 2**30


def tiny_shape(image_tokens: int = 0) -> P.Shape:
    """LM: hidden 64, 2 layers, intermediate 128, 4 heads, 2 kv heads of 16 (kv_dim 32), vocab 100.
    ViT: hidden 32, 1 layer, intermediate 64, fused qkv. Projector: 128->128, 128->64.
    Params: LM 2 x (36,992 + 128) + 6,464 = 80,704; ViT 8,416 + 128 + 1,000 = 9,544;
    projector 16,512 + 8,256 + 64 = 24,832; total 115,080."""
    lm = P.Tower(hidden=64, layers=2, intermediate=128, heads=4, kv_heads=2, head_dim=16,
                 block_linears=(P.Linear("q", 64, 64, True), P.Linear("k", 64, 32, True),
                                P.Linear("v", 64, 32, True), P.Linear("o", 64, 64, False),
                                P.Linear("gate", 64, 128, False), P.Linear("up", 64, 128, False),
                                P.Linear("down", 128, 64, False)),
                 block_other_params=128, other_params=6_464, largest_module_params=8_192)
    vit = P.Tower(hidden=32, layers=1, intermediate=64, heads=2, kv_heads=2, head_dim=16,
                  block_linears=(P.Linear("attn.qkv", 32, 96, True), P.Linear("attn.proj", 32, 32, True),
                                 P.Linear("mlp.fc1", 32, 64, True), P.Linear("mlp.fc2", 64, 32, True)),
                  block_other_params=128, other_params=1_000, largest_module_params=3_168)
    proj = P.Tower(linears=(P.Linear("mlp.0", 128, 128, True), P.Linear("mlp.2", 128, 64, True)),
                   other_params=64, largest_module_params=16_512)
    return P.Shape(name="tiny", vision=vit, projector=proj, language_model=lm, vocab=100,
                   tied_embeddings=True,
                   image_tokens=P.ImageTokens(mode="merge", default_per_sample=image_tokens, spatial_merge=2))


def plan_input(**kw) -> P.PlanInput:
    defaults = dict(shape=tiny_shape(), lora_r=4, max_length=10, fragmentation_factor=1.0,
                    cuda_context_gib=0.0)
    return P.PlanInput(**(defaults | kw))


# --- parameter counts ------------------------------------------------------------------------

def test_tiny_shape_totals():
    s = tiny_shape()
    assert (s.language_model.params, s.vision.params, s.projector.params) == (80_704, 9_544, 24_832)
    assert s.total_params == 115_080
    assert s.largest_module_params == 16_512


def test_lora_params_are_r_times_in_plus_out_per_linear():
    s = tiny_shape()
    # LM per layer: q 4*128 + k 4*96 + v 4*96 + o 4*128 + gate/up/down 3 * 4*192 = 4,096; 2 layers
    assert s.lora_params("lm", 4) == 8_192
    # + ViT: qkv 4*128 + proj 4*64 + fc1 4*96 + fc2 4*96 = 1,536
    assert s.lora_params("lm+vision", 4) == 9_728
    # + projector (PEFT's all-linear): 4*256 + 4*192 = 1,792
    assert s.lora_params("all-linear", 4) == 11_520
    assert s.lora_params("lm", 8) == 2 * 8_192  # linear in r
    with pytest.raises(ValueError):
        s.lora_params("everything", 4)


def test_lm_attention_targets_only_the_attention_projections():
    tiny = tiny_shape()
    names = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
             "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
    lm = dataclasses.replace(tiny.language_model, block_linears=tuple(
        dataclasses.replace(l, name=names[l.name]) for l in tiny.language_model.block_linears))
    named = dataclasses.replace(tiny, language_model=lm)
    # q 4*128 + k 4*96 + v 4*96 + o 4*128 = 1,792 per layer, 2 layers
    assert named.lora_params("lm-attention", 4) == 3_584
    assert named.lora_params("lm", 4) == 8_192
    # MiniCPM-V 4.6's hybrid LM: only its 6 full-attention layers have q/k/v/o
    # (q 1024->4096, k and v 1024->512, o 2048->1024): r * 11,264 each
    assert P.builtin_shape("minicpm-v-4_6").lora_params("lm-attention", 64) == 6 * 64 * 11_264
    # fewer LoRA inputs to keep than LoRA on every LM linear
    attention, every = (P.estimate(plan_input(shape=named, targets=t, grad_checkpointing=False))
                        for t in ("lm-attention", "lm"))
    assert attention.gpu_bytes["activations"] < every.gpu_bytes["activations"]


def test_the_official_minicpmv_recipe_is_planned_with_its_trained_embeddings():
    """minicpmv-official: LoRA on the attention, the ViT and merger trained in full (tune_vision), and
    embed_tokens trained in full too (vocab x hidden = 254 M weights on MiniCPM-V 4.6)."""
    from harness.config.profiles import PROFILES
    from harness.config.spec import make_spec

    spec = make_spec({"model": "tiny", "framework": "peft", "alignment": "minicpmv-official"})
    assert list(spec.lora.modules_to_save) == PROFILES["minicpmv-official"]["lora"]["modules_to_save"]
    shape = P.builtin_shape("minicpm-v-4_6")
    inputs = P.plan_input_from_spec(spec, shape, max_length=512, image_tokens=None)
    assert (inputs.targets, inputs.freeze_vision, inputs.train_embeddings) == ("lm-attention", False, True)
    with_embeddings = P.estimate(inputs)
    without = P.estimate(dataclasses.replace(inputs, train_embeddings=False))
    embeddings = 248_094 * 1024
    assert with_embeddings.params["trainable"] - without.params["trainable"] == embeddings
    unmodelled = dataclasses.replace(spec, lora=dataclasses.replace(spec.lora, modules_to_save=("lm_head.weight",)))
    with pytest.raises(ValueError, match="modules_to_save"):
        P.plan_input_from_spec(unmodelled, shape, max_length=512, image_tokens=None)


# --- model states by ZeRO stage ------------------------------------------------------------------

STATE_KEYS = ("frozen_weights", "lora_weights", "trained_base_weights", "gradients",
              "optimizer_states", "zero_buffers")


def states(plan):
    return {k: plan.gpu_bytes[k] for k in STATE_KEYS}


def test_zero0_plain_peft_keeps_fp32_adapters_without_master_copy():
    plan = P.estimate(plan_input(zero_stage=0))
    # frozen 115,080 x 2 B; LoRA 8,192 x (4 weight + 4 grad + 8 Adam m, v)
    assert states(plan) == {"frozen_weights": 230_160, "lora_weights": 32_768, "trained_base_weights": 0,
                            "gradients": 32_768, "optimizer_states": 65_536, "zero_buffers": 0}


def test_zero2_partitions_gradients_and_optimizer_not_weights():
    plan = P.estimate(plan_input(zero_stage=2, world_size=2))
    # DeepSpeed: LoRA in bf16 (2 B), grads 2 B / 2 GPUs, optimizer 16 B (m, v, fp32 master, fp32 grad) / 2;
    # the reduce bucket, allocated whole: ms-swift's 2e8 scaled to 115,080 params (2e8 x 115,080 / 7e9
    # = 3,288) is below the floor h^2 = 4,096, already a multiple of 1,024: 2 B x 4,096
    assert states(plan) == {"frozen_weights": 230_160, "lora_weights": 16_384, "trained_base_weights": 0,
                            "gradients": 8_192, "optimizer_states": 65_536, "zero_buffers": 8_192}


def test_zero1_partitions_only_the_optimizer():
    plan = P.estimate(plan_input(zero_stage=1, world_size=2))
    assert (plan.gpu_bytes["gradients"], plan.gpu_bytes["optimizer_states"]) == (16_384, 65_536)


# persistence threshold 0: no parameter stays whole (the persistence test sets its own)
LIVE_1000 = {"stage": 3, "reduce_bucket_size": 4_096, "stage3_max_live_parameters": 1_000,
             "stage3_param_persistence_threshold": 0}


def test_zero3_partitions_frozen_weights_too_and_adds_gathered_buffer():
    plan = P.estimate(plan_input(zero_stage=3, world_size=4, zero_config=LIVE_1000))
    # ceil(230,160 / 4); gathered = max(max_live 1,000, largest module 16,512) x 2 B, + reduce bucket 8,192
    # optimizer: Adam m, v + fp32 master = 12 B per element (the fp32 gradient exists only at the step)
    assert states(plan) == {"frozen_weights": 57_540, "lora_weights": 4_096, "trained_base_weights": 0,
                            "gradients": 4_096, "optimizer_states": 24_576, "zero_buffers": 8_192 + 33_024}


def test_zero3_gathered_buffer_is_capped_by_model_size():
    plan = P.estimate(plan_input(zero_stage=3, world_size=4,
                                 zero_config={**LIVE_1000, "stage3_max_live_parameters": 10**9}))
    assert plan.gpu_bytes["zero_buffers"] == 8_192 + 2 * 115_080


def test_zero_buffers_read_the_config_runs_get():
    """No zero_config: the section harness.planner.zero_templates writes for runs of this model. For the
    115,080-parameter test shape (hidden 64) the live budget is scaled: 1e9 x 115,080 / 7e9 = 16,440,
    rounded up to 17,408 (17 x 1,024); the reduce bucket is HF's "auto" h^2 = 4,096."""
    from harness.planner.zero_templates import ModelSize, zero_optimization

    plan = P.estimate(plan_input(zero_stage=3, world_size=4))
    assert plan.details["zero_config"] == zero_optimization(3, ModelSize(64, 115_080))
    assert plan.details["zero_config"]["stage3_max_live_parameters"] == 17_408
    assert plan.gpu_bytes["zero_buffers"] == 2 * 4_096 + 2 * 17_408  # gathered: max(17,408, largest 16,512)


def test_overlap_comm_doubles_the_reduce_bucket_at_stages_1_and_2():
    one = P.estimate(plan_input(zero_stage=2, zero_config={"stage": 2, "reduce_bucket_size": 5_000}))
    two = P.estimate(plan_input(zero_stage=2, zero_config={"stage": 2, "reduce_bucket_size": 5_000,
                                                           "overlap_comm": True}))
    off = P.estimate(plan_input(zero_stage=2, zero_config={"stage": 2, "reduce_bucket_size": 5_000,
                                                           "contiguous_gradients": False}))
    assert (one.gpu_bytes["zero_buffers"], two.gpu_bytes["zero_buffers"], off.gpu_bytes["zero_buffers"]) == \
        (10_000, 20_000, 0)


def test_offload_moves_states_to_cpu_ram():
    plan = P.estimate(plan_input(zero_stage=3, world_size=4, offload_optimizer=True, offload_params=True,
                                 zero_config=LIVE_1000))
    assert states(plan) == {"frozen_weights": 0, "lora_weights": 0, "trained_base_weights": 0,
                            "gradients": 0, "optimizer_states": 0, "zero_buffers": 41_216}
    # node totals, 4 processes of 2,048 LoRA elements each: Adam m, v + fp32 master 12 B; the fp32
    # sub-group gradient (4 B) and the 16-bit gradient partition (2 B), not pinned (no pin_memory in the
    # section); parameters 115,080 x 2 + 8,192 x 2 unpinned; 4 processes x 0.5 GiB
    assert plan.cpu_bytes == {"offloaded_optimizer": 4 * 12 * 2_048, "offloaded_gradients": 4 * 6 * 2_048,
                              "offloaded_params": 246_544, "process_baseline": 2 * GIB,
                              "total": 4 * 18 * 2_048 + 246_544 + 2 * GIB}


def test_fp32_has_no_master_copy_and_offloads_fp32_gradients():
    plan = P.estimate(plan_input(precision="fp32", zero_stage=1, world_size=2, offload_optimizer=True))
    assert plan.gpu_bytes["frozen_weights"] == 115_080 * 4
    assert plan.gpu_bytes["lora_weights"] == 8_192 * 4
    assert plan.cpu_bytes["offloaded_optimizer"] == 8_192 * 8  # Adam m, v only
    assert plan.cpu_bytes["offloaded_gradients"] == 8_192 * 4


def test_unfrozen_vision_is_trained_in_full():
    plan = P.estimate(plan_input(zero_stage=2, world_size=1, freeze_vision=False))
    trained = 9_544 + 24_832  # ViT + projector
    assert plan.params["trained_base"] == trained and plan.params["frozen"] == 115_080 - trained
    assert plan.gpu_bytes["trained_base_weights"] == 2 * trained
    assert plan.gpu_bytes["optimizer_states"] == 16 * (8_192 + trained)
    with pytest.raises(ValueError, match="redundant"):
        plan_input(freeze_vision=False, targets="lm+vision")


@pytest.mark.parametrize("kw", [dict(zero_stage=2, offload_params=True), dict(zero_stage=0, offload_optimizer=True),
                                dict(precision="int8"), dict(world_size=0)])
def test_invalid_inputs_are_refused(kw):
    with pytest.raises(ValueError):
        plan_input(**kw)


# --- activations ---------------------------------------------------------------------------------

def test_lm_activations_hand_computed_with_and_without_checkpointing():
    # Per token per block (bf16, fp32 adapters without DeepSpeed, dropout on -> 5 B per LoRA input):
    # RMSNorm fp32 inputs 2*4*64 = 512; Q, K, V, out 2*(2*64 + 2*32) = 384; SwiGLU 2*3*128 = 768;
    # LoRA inputs 5 * (6*64 + 128) = 2,560 -> 4,224. 10 tokens -> one block 42,240.
    no_ckpt = P.estimate(plan_input(grad_checkpointing=False))
    assert no_ckpt.gpu_bytes["activations"] == 2 * 42_240
    assert no_ckpt.gpu_bytes["transient"] == 10 * 100 * 12  # logits: 12 B per token x vocab
    ckpt = P.estimate(plan_input(grad_checkpointing=True))
    assert ckpt.gpu_bytes["activations"] == 2 * 10 * 64 * 2  # each block's input
    assert ckpt.gpu_bytes["transient"] == 42_240  # one recomputed block > 12,000 of logits
    assert ckpt.gpu_total_bytes < no_ckpt.gpu_total_bytes


def test_deepspeed_adapters_in_bf16_keep_smaller_lora_inputs():
    # ZeRO >= 1: LoRA in bf16, its input copies 2 B + 1 B mask: 4,224 - 2 * 512 = 3,200 per token
    plan = P.estimate(plan_input(zero_stage=1, grad_checkpointing=False))
    assert plan.gpu_bytes["activations"] == 2 * 10 * 3_200


def test_eager_attention_adds_the_quadratic_term():
    flash = P.estimate(plan_input(grad_checkpointing=False))
    eager = P.estimate(plan_input(grad_checkpointing=False, flash_attention=False))
    # per block: (4 + 2) x 4 heads x 10^2 + repeated K, V: 10 x 2 x 2 x (64 - 32)
    assert eager.gpu_bytes["activations"] - flash.gpu_bytes["activations"] == 2 * (2_400 + 1_280)


def test_vision_activations_follow_training_and_checkpointing():
    shape = tiny_shape(image_tokens=4)  # merge 2: 16 patches, one attention group
    # ViT per patch: 2 * (2*32 + 4*32 + 2*32 fused qkv + 2*64) = 768; LoRA inputs 5 * 160 = 800
    lora_vit = P.estimate(plan_input(shape=shape, targets="lm+vision", grad_checkpointing=False))
    assert lora_vit.gpu_bytes["activations"] == 2 * 14 * 4_224 + 16 * 1_568  # LM sees 10 + 4 tokens
    frozen = P.estimate(plan_input(shape=shape, grad_checkpointing=False))
    assert frozen.gpu_bytes["activations"] == 2 * 14 * 4_224  # a frozen ViT keeps nothing
    # ...unless checkpointing hooks its patch embedding: then it keeps block inputs 16 x 32 x 2 B
    frozen_ckpt = P.estimate(plan_input(shape=shape, grad_checkpointing=True))
    assert frozen_ckpt.gpu_bytes["activations"] == 2 * 14 * 64 * 2 + 16 * 32 * 2


def test_activations_scale_with_batch_and_length():
    one = P.estimate(plan_input(grad_checkpointing=False))
    assert P.estimate(plan_input(grad_checkpointing=False, micro_batch_size=3)).gpu_bytes["activations"] == \
        3 * one.gpu_bytes["activations"]
    assert P.estimate(plan_input(grad_checkpointing=False, max_length=20)).gpu_bytes["activations"] == \
        2 * one.gpu_bytes["activations"]


# --- totals, verdict, search -----------------------------------------------------------------------

def test_total_adds_fragmentation_and_cuda_context():
    base = P.estimate(plan_input())
    allocated = base.gpu_total_bytes
    plan = P.estimate(plan_input(fragmentation_factor=1.5, cuda_context_gib=1.0))
    assert plan.gpu_bytes["fragmentation"] == int(allocated * 0.5)
    assert plan.gpu_total_bytes == allocated + int(allocated * 0.5) + GIB


def test_verdict_text():
    plan = P.estimate(plan_input(world_size=2, zero_stage=1, cuda_context_gib=0.75))  # ~0.7503 GiB
    none = P.Band()  # the estimate itself
    assert P.fits(plan, 1.0, none) and not P.fits(plan, 0.5, none)
    assert P.verdict(plan, 1.0, none) == "fits on 2 x 1 GiB (headroom 0.25 GiB)"
    assert P.verdict(plan, 0.5, none) == "does not fit on 2 x 0.5 GiB (short by 0.25 GiB)"
    assert P.verdict(plan, band=none) == "fits on 2 x 24 GiB (headroom 23.25 GiB)"  # the input's gpu_mem_gib


def test_the_verdict_uses_the_bands_top():
    plan = P.estimate(plan_input(cuda_context_gib=1.0))  # ~1.0004 GiB
    band = P.Band(0.9, 1.5)
    assert band.text(plan) == f"{plan.gpu_total_gib:.2f} GiB (0.90–1.50)"
    assert P.fits(plan, 1.2, P.Band()) and not P.fits(plan, 1.2, band)  # 1.5 GiB at the top
    assert P.verdict(plan, 1.2, band).startswith("does not fit on 1 x 1.2 GiB (short by 0.30 GiB at the band's top")
    total = plan.gpu_total_gib
    assert P.plan_dict(plan, band)["band_gib"] == [round(0.9 * total, 4), round(1.5 * total, 4)]
    # the default band is the held-out one: never narrower than the estimate itself
    held = P.held_out_band()
    assert held.low <= 1.0 <= held.high


def test_zero3_offload_follows_deepspeeds_partitioning_with_world_size():
    """Hand-computed on the test shape (115,080 base + 8,192 LoRA elements, bf16, no persistent
    parameters). ZeRO-3 + optimizer offload, parameters on the GPU: each GPU holds ceil(2 B x n / N) of
    the base and LoRA weights, so going from 2 to 4 GPUs saves 115,080 - 57,540 = 57,540 B of base and
    8,192 - 4,096 = 4,096 B of LoRA weights; nothing else on the GPU depends on N. With the parameters
    offloaded too the GPU keeps no partition: N changes nothing there, and the node's pinned CPU
    partitions follow the power-of-two rounding of each process's share."""
    from harness.planner.zero_memory import Tensor, pinned_partitions_bytes

    def gpu(n, params):
        return P.estimate(plan_input(zero_stage=3, world_size=n, offload_optimizer=True, offload_params=params,
                                     zero_config=LIVE_1000)).gpu_total_bytes
    assert gpu(2, False) - gpu(4, False) == 57_540 + 4_096
    assert gpu(2, True) == gpu(4, True) == gpu(8, True)
    # one 64 x 64 weight (4,096 elements): 3 processes pin ceil(4,096 / 3) = 1,366 x 2 B = 2,732 B each,
    # rounded to 4,096 B: 12,288 B on the node; 4 processes: 2,048 B each, already a power of two
    assert pinned_partitions_bytes([Tensor(4_096, 1)], 3, 2, 0) == 3 * 4_096
    assert pinned_partitions_bytes([Tensor(4_096, 1)], 4, 2, 0) == 4 * 2_048
    assert pinned_partitions_bytes([Tensor(4_096, 1)], 4, 2, 4_096) == 0  # persistent: stays on the GPU


def test_zero3_persistent_parameters_stay_whole_on_every_gpu():
    """DeepSpeed keeps tensors of <= stage3_param_persistence_threshold elements whole. Threshold 256
    on the test shape: the LM's 2 x 2 norm vectors (64 each) and 2 x 2 biases of q (64) and k, v (32),
    the ViT's ... are persistent; with LoRA r=4 every LM lora_A (4 x 64 = 256, and 4 x 128 for down:
    512 > 256) and lora_B (q: 64 x 4 = 256; k, v: 128; o: 256; gate, up 512 > 256; down 256)."""
    zero = {**LIVE_1000, "stage3_param_persistence_threshold": 256}
    plan = P.estimate(plan_input(zero_stage=3, world_size=4, zero_config=zero))
    assert plan.gpu_bytes["persistent_params"] > 0
    none = P.estimate(plan_input(zero_stage=3, world_size=4, zero_config=LIVE_1000))
    persistent = plan.details["persistent_params"]
    # persistent elements move from the 1/4 share to whole: + 3/4 of their bytes (ceil rounding aside)
    moved = plan.gpu_total_bytes - none.gpu_total_bytes
    assert abs(moved - 2 * persistent * 3 / 4) <= 8


def test_search_returns_the_largest_fitting_length_per_batch():
    inputs = plan_input(gpu_mem_gib=0.75 + 1e-3, cuda_context_gib=0.75)  # ~1 MiB to spend
    none = P.Band()
    rows = P.search_fits(inputs, batches=(1, 2), max_lengths=(64, 128, 256, 100_000), band=none)
    for row in rows:
        assert row["max_length"] in (64, 128, 256)
        ok = P.estimate(dataclasses.replace(inputs, micro_batch_size=row["batch"], max_length=row["max_length"]))
        assert P.fits(ok, band=none)
        nxt = {64: 128, 128: 256, 256: 100_000}[row["max_length"]]
        assert not P.fits(P.estimate(dataclasses.replace(inputs, micro_batch_size=row["batch"], max_length=nxt)),
                          band=none)
    assert rows[0]["max_length"] >= rows[1]["max_length"]
    assert P.search_fits(inputs, batches=(1,), max_lengths=(100_000,), band=none)[0]["max_length"] is None


# --- shipped shapes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, well_known", [("qwen2-vl-2b", 2.21e9), ("qwen2-vl-7b", 8.29e9),
                                              ("minicpm-v-2_6", 8.1e9), ("minicpm-v-4_6", 1.3e9)])
def test_shipped_shapes_match_well_known_totals(name, well_known):
    shape = P.builtin_shape(name)
    assert shape.total_params == pytest.approx(well_known, rel=0.03)
    assert shape.source["config"].startswith("https://huggingface.co/")
    assert shape.image_tokens.default_per_sample > 0


def _source_config(shape: P.Shape) -> dict:
    """The config.json a shipped shape was counted from: its source fields (the Qwen2-VL files keep
    the text keys at the top level, as older saves did)."""
    fields = dict(shape.source["fields"])
    if "model_type" in fields:
        return fields
    vision, tied = fields.pop("vision_config"), fields.pop("tie_word_embeddings")
    return {"model_type": "qwen2_vl", "text_config": fields, "vision_config": vision, "tie_word_embeddings": tied}


@pytest.mark.parametrize("name", ["qwen2-vl-2b", "qwen2-vl-7b", "qwen3-vl-2b", "minicpm-v-4_6", "minicpm-v-4_7-1b"])
def test_shape_files_are_the_meta_device_count_of_their_source_config(name, tmp_path):
    """Every shipped shape but MiniCPM-V 2.6 (remote code) is shape_from_hf_config's output for its
    source fields: the model built on the meta device, nothing counted by hand."""
    pytest.importorskip("transformers")
    shipped = P.builtin_shape(name)
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps(_source_config(shipped)))
    assert P.shape_from_hf_config(tmp_path / name) == shipped  # source is excluded from ==


def test_new_shape_files_load_with_their_parts():
    qwen3 = P.builtin_shape("qwen3-vl-2b")
    assert (qwen3.language_model.layers, qwen3.vision.layers, qwen3.vocab, qwen3.tied_embeddings) == \
        (28, 24, 151_936, True)
    assert qwen3.image_tokens.spatial_merge == 2 and "(H/32)" in qwen3.image_tokens.formula  # 16 px patches
    # the merger and the three DeepStack mergers are the projector
    assert {l.name.split(".")[0] for l in qwen3.projector.linears} == {"merger", "deepstack_merger_list"}
    minicpm = P.builtin_shape("minicpm-v-4_6")
    assert minicpm.language_model.layers == 24 and minicpm.vision.layers == 27
    # hybrid LM: every layer has the MLP; 18 Gated-DeltaNet layers x 5 and 6 attention layers x 4 linears apart
    assert [l.name for l in minicpm.language_model.block_linears] == ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert len(minicpm.language_model.linears) == 18 * 5 + 6 * 4
    assert minicpm.image_tokens.vision_groups(640) == (1024, 10)  # 64 tokens per 448 px slice, 16x merged
    for shape in (qwen3, minicpm):
        assert shape.source["fields_from"] and shape.source["counted"]


def test_minicpm_shape_parts():
    s = P.builtin_shape("minicpm-v-2_6")
    assert s.language_model.layers == 28 and s.vision.layers == 27 and s.vocab == 151_666
    assert s.image_tokens.vision_groups(640) == (1024, 10)  # 10 slices of 32 x 32 patches
    # q, o: 3584 -> 3584; k, v: 3584 -> 512; gate, up, down: 3584 <-> 18944
    assert s.lora_params("lm", 8) == 28 * 8 * (2 * (3584 + 3584) + 2 * (3584 + 512) + 3 * (3584 + 18944))


def test_inconsistent_shape_file_is_a_user_error(tmp_path):
    d = json.loads((P.SHAPES_DIR / "qwen2-vl-2b.json").read_text())
    d["vision"]["params"] += 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(d))
    with pytest.raises(UserError, match="bad.json: vision: params"):
        P.load_shape(bad)
    with pytest.raises(UserError, match="no such shape file"):
        P.load_shape(tmp_path / "missing.json")


def test_qwen2_vl_image_tokens_from_pixels():
    assert P.qwen2_vl_image_tokens(1000, 700) == 36 * 25  # rounded to 1008 x 700
    assert P.qwen2_vl_image_tokens(2000, 2000) == 35 * 35  # scaled under max_pixels = 1280 * 28^2
    assert P.qwen2_vl_image_tokens(10, 10) == 4  # scaled up to min_pixels = 56^2


def _tiny_qwen2_vl_config():
    transformers = pytest.importorskip("transformers")
    return transformers.Qwen2VLConfig(
        text_config=dict(vocab_size=128, hidden_size=192, intermediate_size=512, num_hidden_layers=3,
                         num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=None),
        vision_config=dict(depth=3, embed_dim=128, num_heads=4, hidden_size=192, patch_size=8,
                           spatial_merge_size=2, temporal_patch_size=2),
        tie_word_embeddings=True)


def test_shape_from_hf_config_counts_like_the_real_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    config = _tiny_qwen2_vl_config()
    config.save_pretrained(tmp_path)
    shape = P.shape_from_hf_config(tmp_path)
    model = transformers.Qwen2VLForConditionalGeneration(config)
    assert shape.total_params == sum(p.numel() for p in model.parameters())
    lm = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=lm))
    assert shape.lora_params("lm", 4) == sum(p.numel() for p in lora.parameters() if p.requires_grad)


def test_shape_from_hf_config_refuses_other_models(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(UserError, match="model_type 'llava' is not supported; the planner reads 'qwen2_vl'"):
        P.shape_from_hf_config(tmp_path)
    with pytest.raises(UserError, match="no such file"):
        P.shape_from_hf_config(tmp_path / "missing")


# Small configs of each supported architecture, written as config.json only (no weights)
_TEXT = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, bos_token_id=None, eos_token_id=None, pad_token_id=None)
SMALL_CONFIGS = {
    "qwen2_vl": {"text_config": _TEXT, "vision_config": dict(depth=2, embed_dim=16, num_heads=2, hidden_size=32,
                                                             patch_size=4)},
    "qwen2_5_vl": {"text_config": _TEXT, "vision_config": dict(depth=2, hidden_size=16, intermediate_size=24,
                                                               num_heads=2, out_hidden_size=32, patch_size=4,
                                                               fullatt_block_indexes=[1])},
    "qwen3_vl": {"text_config": dict(_TEXT, head_dim=8),
                 "vision_config": dict(depth=3, hidden_size=16, intermediate_size=24, num_heads=2, out_hidden_size=32,
                                       patch_size=4, num_position_embeddings=16, deepstack_visual_indexes=[0, 2]),
                 "tie_word_embeddings": True},
    "minicpmv4_6": {"text_config": dict(_TEXT, model_type="qwen3_5_text", head_dim=8, linear_key_head_dim=8,
                                        linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4,
                                        tie_word_embeddings=True),
                    "vision_config": dict(hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                                          num_attention_heads=2, image_size=56, patch_size=14),
                    "insert_layer_id": 1, "tie_word_embeddings": True},
}
SMALL_CONFIGS["minicpmv4_7"] = SMALL_CONFIGS["minicpmv4_6"]


def test_minicpmv_image_tokens_follow_the_checkpoints_own_processor_settings(tmp_path):
    """A MiniCPM-V checkpoint's processor_config.json overrides the image processor's class defaults:
    the tiny MiniCPM-V's 286 px single view (no slicing, 4x) rather than 448 px x 10 slices."""
    pytest.importorskip("transformers")
    config = {"model_type": "minicpmv4_6", **SMALL_CONFIGS["minicpmv4_6"], "downsample_mode": "4x"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    default = P.shape_from_hf_config(tmp_path).image_tokens
    assert default.max_slices == 10 and default.tokens_per_slice == (448 // 14) ** 2 // 4
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": {
        "scale_resolution": 286, "slice_mode": False, "max_slice_nums": 1, "downsample_mode": "4x"}}))
    own = P.shape_from_hf_config(tmp_path)
    assert own.image_tokens.max_slices == 1
    assert own.image_tokens.default_per_sample == own.image_tokens.tokens_per_slice == (286 // 14) ** 2 // 4
    assert "no slicing" in own.image_tokens.formula and own.source["image_processor"]["scale_resolution"] == 286


@pytest.mark.parametrize("model_type", list(SMALL_CONFIGS))
def test_hf_config_counts_are_the_meta_models_own(model_type, tmp_path):
    """--model DIR: the shape's total, per-part and per-preset LoRA counts equal what the model
    transformers builds from the same config.json on the meta device holds."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, **SMALL_CONFIGS[model_type]}))
    shape = P.shape_from_hf_config(tmp_path)
    with torch.device("meta"):
        model = transformers.AutoModelForImageTextToText.from_config(transformers.AutoConfig.from_pretrained(tmp_path))
    arch = P.HF_ARCHITECTURES[model_type]

    def under(name, roots):
        return any(name == r or name.startswith(r + ".") for r in roots)

    def part(name):
        return ("projector" if under(name, arch.projector) else "vision" if under(name, (arch.vision,))
                else "language_model" if under(name, arch.language_model) else None)

    counts = {"projector": 0, "vision": 0, "language_model": 0}
    for name, p in model.named_parameters():
        counts[part(name)] += p.numel()
    assert shape.total_params == sum(p.numel() for p in model.parameters()) == sum(counts.values())
    assert (shape.vision.params, shape.projector.params, shape.language_model.params) == \
        (counts["vision"], counts["projector"], counts["language_model"])
    assert min(counts.values()) > 0
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]

    def lora(wanted, pattern=""):
        return sum(4 * (m.in_features + m.out_features) for n, m in linears
                   if part(n) in wanted and re.search(pattern, n))

    assert {name: shape.lora_params(target_set, 4) for name, target_set in P.TARGET_PRESETS.items()} == {
        "lm-linear": lora({"language_model"}), "lm+vision-linear": lora({"language_model", "vision"}),
        "lm-attention": lora({"language_model"}, r"\.self_attn\.(q|k|v|o)_proj$"),
        "every-linear": lora({"language_model", "vision", "projector"})}
    text = model.config.get_text_config()
    assert (shape.language_model.hidden, shape.language_model.layers, shape.vocab) == \
        (text.hidden_size, text.num_hidden_layers, text.vocab_size)
    assert shape.tied_embeddings == (model_type in ("qwen3_vl", "minicpmv4_6", "minicpmv4_7"))
    assert shape.image_tokens.default_per_sample > 0


def test_cli_model_dir_prints_the_parts(tmp_path, capsys):
    pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_vl", **SMALL_CONFIGS["qwen3_vl"]}))
    assert main(["plan", "--model", str(tmp_path), "--json"]) == 0
    params = json.loads(capsys.readouterr().out)["params"]
    assert params["total"] == params["vision"] + params["projector"] + params["language_model"]
    assert params["lora_by_targets"]["lm-linear"] < params["lora_by_targets"]["every-linear"]
    assert main(["plan", "--model", str(tmp_path)]) == 0
    assert "parameters: vision tower" in capsys.readouterr().out


# --- DeepSpeed cross-check --------------------------------------------------------------------------

def test_deepspeed_cold_estimate_matches_published_figures():
    pytest.importorskip("deepspeed")
    largest = 128_256 * 4_096  # an 8.03 B model whose largest layer is its 128k x 4096 embedding
    one = P.deepspeed_cold_estimate(3, 8_030_000_000, largest, 1, False, False)
    two = P.deepspeed_cold_estimate(3, 8_030_000_000, largest, 2, False, False)
    assert one["gpu_gib"] == pytest.approx(136.57, abs=0.01)
    assert two["gpu_gib"] == pytest.approx(69.27, abs=0.01)
    assert "per GPU" in one["table"]


def test_our_full_finetune_zero2_model_states_agree_with_deepspeed():
    pytest.importorskip("deepspeed")
    check = P.deepspeed_crosscheck(P.PlanInput(P.builtin_shape("qwen2-vl-2b"), zero_stage=2, world_size=2))
    assert check["available"]
    # both: 2 B 16-bit weights + 18 B / GPUs (grads 2, fp32 grads 4, master 4, Adam 8); ours adds buckets
    assert check["ours_gpu_gib"] == pytest.approx(check["deepspeed_gpu_gib"], rel=0.02)


def test_crosscheck_explains_stages_without_a_deepspeed_estimator():
    check = P.deepspeed_crosscheck(plan_input(zero_stage=1))
    assert not check["available"] and check["reason"]
    assert check["ours_gpu_gib"] > 0


# --- CLI -----------------------------------------------------------------------------------------

def test_cli_json_parses(capsys):
    rc = main(["plan", "--model", "minicpm-v-2_6", "--gpus", "3", "--gpu-mem", "24", "--zero", "3",
               "--offload-optimizer", "--offload-params", "--search", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["inputs"]["model"] == "minicpm-v-2_6" and out["inputs"]["world_size"] == 3
    assert out["fits"] is True and out["verdict"].startswith("fits on 3 x 24 GiB")
    assert out["gpu_gib"]["frozen_weights"] == 0.0  # parameters offloaded
    assert [r["batch"] for r in out["search"]] == list(P.DEFAULT_BATCH_GRID)


def test_cli_text_output(capsys):
    rc = main(["plan", "--model", "qwen2-vl-2b", "--max-length", "1024", "--no-grad-ckpt"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "per GPU" in text and "CPU RAM" in text
    assert "gradient checkpointing off" in text
    assert "does not fit on 1 x 24 GiB" in text  # the band's top: the estimate alone fits
    band = P.held_out_band()
    assert f"the band is the estimate x {band.low:.3f}–{band.high:.3f}" in text


def test_cli_accepts_a_shape_file_and_a_model_dir(tmp_path, capsys):
    assert main(["plan", "--model", str(P.SHAPES_DIR / "qwen2-vl-2b.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"]["model"] == "qwen2-vl-2b"
    _tiny_qwen2_vl_config().save_pretrained(tmp_path)
    assert main(["plan", "--model", str(tmp_path), "--image-tokens", "40", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["details"]["lm_seq_len"] == 2048 + 40


def test_cli_unknown_model_exits_2(capsys):
    assert main(["plan", "--model", "llama-9000"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'llama-9000'" in err and "minicpm-v-2_6" in err and "qwen2-vl-2b" in err


def test_cli_invalid_combination_exits_2(capsys):
    assert main(["plan", "--model", "qwen2-vl-2b", "--zero", "2", "--offload-params"]) == 2
    assert "offload_params needs ZeRO stage 3" in capsys.readouterr().err


def test_cli_plans_each_cell_of_a_suite(capsys):
    from harness.config.suite import load_suite

    suite = REPO_ROOT / "harness" / "suites" / "default.yaml"
    _, cells = load_suite(suite)
    assert main(["plan", "--spec", str(suite), "--image-tokens", "200"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + len(cells)  # a header, then one line per cell
    assert all("lm-linear" in line and "batch 4 x 1024 tokens (200 image)" in line and "fits on 1 x 24 GiB" in line
               for line in lines[1:])
    assert main(["plan", "--spec", str(suite), "--image-tokens", "200", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    first = out["cells"][0]["inputs"]
    assert len(out["cells"]) == len(cells)
    # the suite's defaults: LoRA r 16 on the LM, batch 4, fp32, no ZeRO, one process, vision frozen
    assert (first["lora_r"], first["targets"], first["micro_batch_size"], first["precision"], first["zero_stage"],
            first["world_size"], first["freeze_vision"], first["max_length"] + first["image_tokens"]) == \
        (16, "lm", 4, "fp32", 0, 1, True, 1024)


def test_cli_plans_a_single_spec_like_the_same_flags(capsys):
    from harness.commands.plan import _spec_model_dir

    spec = REPO_ROOT / "harness" / "suites" / "parity.yaml"
    assert main(["plan", "--spec", str(spec), "--image-tokens", "300", "--json"]) == 0
    from_spec = json.loads(capsys.readouterr().out)
    assert from_spec["spec"] == str(spec)
    model = str(_spec_model_dir("tiny"))  # the spec's model: tiny
    from_flags = ["plan", "--model", model, "--batch", "2", "--max-length", "724", "--image-tokens", "300",
                  "--lora-r", "8", "--lora-dropout", "0", "--precision", "fp32", "--no-grad-ckpt", "--json"]
    assert main(from_flags) == 0
    assert json.loads(capsys.readouterr().out)["gpu_gib"] == from_spec["gpu_gib"]


@pytest.mark.parametrize("argv, message", [
    (["--spec", "no/such/spec.yaml"], "no such file: no/such/spec.yaml"),
    (["--spec", str(REPO_ROOT / "harness" / "suites" / "parity.yaml"), "--batch", "2"],
     "--batch and --spec both set the set-up"),
    (["--spec", "BAD"], "unknown key 'train.batchsize'"),
])
def test_cli_spec_errors_are_one_line(argv, message, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\ntrain: {batchsize: 2}\n")
    argv = [str(bad) if a == "BAD" else a for a in argv]
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_validate_compares_estimates_with_measured_runs(tmp_path, tiny_model_dir):
    """A memory-suite record -> the planner's per-process estimate next to the measured peak."""
    import json as _json

    from harness.planner.validate import format_rows, validate_against_runs
    from harness.config.spec import make_spec

    spec = make_spec({"train": {"batch_size": 4}, "distributed": {"zero_stage": 2}}).to_dict()
    record = {
        "schema_version": 1, "run_id": "memory-abc", "suite": "memory", "spec_hash": "x" * 64, "spec": spec,
        "cell": {"framework": "peft", "alignment": "aligned", "seed": 0, "lever": "zero2"}, "status": "ok",
        "error": None, "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:01:00+00:00",
        "wall_s": 60.0, "command": "lorabench run", "per_sample_file": None,
        "env": {"model": {"path": str(tiny_model_dir), "name": "tiny", "checksum": "c"}},
        "train": {"steps": [{"step": 1, "loss": 1.0, "samples": 4, "tokens": 1800, "max_seq_len": 520,
                             "image_tokens": 960, "seconds": 1.0}], "warmup_steps_excluded": 0,
                  "setup_s": 1.0, "train_s": 1.0},
        "eval": {"task": "extract", "split": "test", "n": 0, "seconds": 0.0, "predictions_file": None},
        "metrics": {"wall_s": 60.0},
        "memory": {"world_size": 1, "zero_stage": 2, "offload_optimizer": False, "offload_params": False,
                   "baseline_rss_mib": 500.0, "per_rank": [{"rank": 0, "peak_rss_mib": 700.0,
                                                             "peak_rss_above_baseline_mib": 200.0}]},
    }
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "memory-abc.json").write_text(_json.dumps(record))
    rows = validate_against_runs(tmp_path)
    assert len(rows) == 1 and rows[0]["lever"] == "zero2" and rows[0]["measured_mib"] == 200.0
    assert rows[0]["estimate_mib"] > 0 and rows[0]["ratio"] == rows[0]["estimate_mib"] / 200.0
    assert "est/meas" in format_rows(rows)
    assert "calibrated_ratio" not in rows[0]  # no baseline run to calibrate on
    assert rows[0]["figure"] == "peak_rss_above_baseline_mib"  # a record from before anonymous memory

    # a GPU record: GPU allocated against the per-GPU estimate, the host side against anonymous memory
    record["run_id"], record["spec"] = "memory-gpu", make_spec({"device": "cuda", "train": {"batch_size": 4,
                                                                                            "precision": "bf16"},
                                                                 "distributed": {"zero_stage": 3,
                                                                                 "offload_optimizer": True}}).to_dict()
    record["memory"]["per_rank"] = [{"rank": 0, "peak_rss_mib": 900.0, "peak_rss_above_baseline_mib": 400.0,
                                     "peak_anon_above_baseline_mib": 120.0, "gpu_max_allocated_mib": 30.0}]
    (tmp_path / "runs" / "memory-abc.json").unlink()
    (tmp_path / "runs" / "memory-gpu.json").write_text(_json.dumps(record))
    (row,) = validate_against_runs(tmp_path)
    assert (row["figure"], row["measured_mib"], row["host_measured_mib"]) == ("gpu_max_allocated_mib", 30.0, 120.0)
    assert row["estimate_mib"] == pytest.approx(sum(v for k, v in row["gpu_breakdown_mib"].items() if k != "total"))
    assert "host: est." in format_rows([row]) and "GPU max allocated" in format_rows([row])


# --- DeepSpeed configs: what runs get, and a user's own file ----------------------------------------

def _swift_template(name: str) -> dict:
    """ms-swift's shipped DeepSpeed template, read without importing swift (importing it patches
    transformers)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("swift")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ms-swift is not installed")
    return json.loads((Path(next(iter(spec.submodule_search_locations))) / "config" / f"{name}.json").read_text())


def _hf_resolved(config: dict, hidden_size: int) -> dict:
    """Hugging Face's own "auto" resolution (transformers' HfTrainerDeepSpeedConfig) of a config."""
    import types

    deepspeed_integration = pytest.importorskip("transformers.integrations.deepspeed")
    hf = deepspeed_integration.HfTrainerDeepSpeedConfig(json.loads(json.dumps(config)))
    model = types.SimpleNamespace(config=types.SimpleNamespace(
        text_config=types.SimpleNamespace(hidden_size=hidden_size)))  # where Qwen2-VL keeps it
    hf.trainer_config_finalize(types.SimpleNamespace(get_warmup_steps=lambda n: 0), model, 100)
    return hf.config["zero_optimization"]


def _without_offload(zero: dict) -> dict:
    return {k: v for k, v in zero.items() if not k.startswith("offload_")}


@pytest.mark.parametrize("model", ["qwen2-vl-7b", "qwen2-vl-2b", "minicpm-v-2_6"])
def test_real_size_zero3_config_is_ms_swifts_template_resolved_by_hugging_face(model):
    from harness.planner.zero_templates import ModelSize, zero_optimization

    shape = P.builtin_shape(model)
    ours = zero_optimization(3, ModelSize(shape.language_model.hidden, shape.total_params))
    theirs = _hf_resolved(_swift_template("zero3"), shape.language_model.hidden)
    assert _without_offload(ours) == _without_offload(theirs)  # 1e9 == 1_000_000_000: numbers compare equal
    assert {k: ours[k] for k in ours if k.startswith("stage3_")} == \
        {k: theirs[k] for k in theirs if k.startswith("stage3_")}
    offload = zero_optimization(3, ModelSize(shape.language_model.hidden, shape.total_params), True, True)
    template = _swift_template("zero3_offload")["zero_optimization"]
    assert offload["offload_optimizer"] == template["offload_optimizer"]
    assert offload["offload_param"] == template["offload_param"]


def test_real_size_zero2_config_is_ms_swifts_template():
    from harness.planner.zero_templates import ModelSize, zero_optimization

    shape = P.builtin_shape("qwen2-vl-7b")
    ours = zero_optimization(2, ModelSize(shape.language_model.hidden, shape.total_params))
    assert ours == _without_offload(_hf_resolved(_swift_template("zero2"), shape.language_model.hidden))
    assert ours["reduce_bucket_size"] == ours["allgather_bucket_size"] == 200_000_000  # explicit in the template


def test_tiny_model_budgets_follow_the_scaling_rule():
    """value = 1024 * ceil(max(template * params / 7e9, h^2) / 1024) for the absolute budgets; the
    "auto" keys from the hidden size as Hugging Face resolves them."""
    import math

    from harness.paths import REPO_ROOT
    from harness.planner.zero_templates import model_size_of, zero_optimization

    tiny = model_size_of(REPO_ROOT / "harness" / "assets" / "tiny-qwen2vl")
    assert tiny.hidden_size == 192 and tiny.total_params == P.shape_from_hf_config(
        REPO_ROOT / "harness" / "assets" / "tiny-qwen2vl").total_params

    def rule(template):
        return 1024 * math.ceil(max(template * tiny.total_params / 7e9, 192 ** 2) / 1024)

    zero3, zero2 = zero_optimization(3, tiny), zero_optimization(2, tiny)
    for key in ("stage3_max_live_parameters", "stage3_max_reuse_distance", "sub_group_size"):
        assert zero3[key] == rule(1e9)
    assert zero2["reduce_bucket_size"] == zero2["allgather_bucket_size"] == rule(2e8)
    assert (zero3["reduce_bucket_size"], zero3["stage3_prefetch_bucket_size"],
            zero3["stage3_param_persistence_threshold"]) == (192 ** 2, int(0.9 * 192 ** 2), 10 * 192)
    # the point of the rule: ZeRO-3 can no longer keep the whole model live
    assert zero3["stage3_max_live_parameters"] < tiny.total_params / 4
    hf = _hf_resolved(_swift_template("zero3"), 192)
    assert {k: zero3[k] for k in ("stage3_prefetch_bucket_size", "stage3_param_persistence_threshold")} == \
        {k: hf[k] for k in ("stage3_prefetch_bucket_size", "stage3_param_persistence_threshold")}


def test_run_config_carries_the_zero_section_and_run_settings():
    from harness.config.spec import make_spec
    from harness.planner.zero_templates import ModelSize, deepspeed_config, zero_optimization

    model = ModelSize(3584, 8_291_375_616)
    spec = make_spec({"device": "cuda", "train": {"precision": "bf16"},
                      "distributed": {"zero_stage": 3, "offload_optimizer": True, "offload_params": True}})
    config = deepspeed_config(spec, model)
    assert config["zero_optimization"] == zero_optimization(3, model, True, True, pin_memory=True)
    assert config["bf16"] == {"enabled": True} and config["train_batch_size"] == "auto"
    assert config["optimizer"]["type"] == "AdamW"
    cpu = deepspeed_config(make_spec({"distributed": {"zero_stage": 3, "offload_params": True}}), model)
    assert cpu["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": False}  # no CUDA to pin


def test_zero_keys_are_deepspeeds_own():
    config = pytest.importorskip("deepspeed.runtime.zero.config")
    from harness.planner.deepspeed_config import ZERO_KEYS

    fields = config.DeepSpeedZeroConfig.model_fields
    assert ZERO_KEYS == {f.alias or n for n, f in fields.items()} | set(fields)


SAMPLE_DEEPSPEED = {
    "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
    "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                          "offload_param": {"device": "cpu", "pin_memory": True},
                          "overlap_comm": True, "contiguous_gradients": True, "reduce_bucket_size": "auto",
                          "stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                          "stage3_max_live_parameters": 2e8, "stage3_max_reuse_distance": 2e8},
    "train_micro_batch_size_per_gpu": "auto",
}


def test_plan_reads_a_users_deepspeed_config(tmp_path, capsys):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(SAMPLE_DEEPSPEED))
    rc = main(["plan", "--model", "qwen2-vl-7b", "--gpus", "2", "--deepspeed-config", str(path), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    inputs, zero = out["inputs"], out["details"]["zero_config"]
    assert (inputs["zero_stage"], inputs["offload_optimizer"], inputs["offload_params"]) == (3, True, True)
    assert inputs["precision"] == "bf16"  # "auto" in the file: the default
    assert (zero["reduce_bucket_size"], zero["stage3_prefetch_bucket_size"],
            zero["stage3_param_persistence_threshold"]) == (3584 ** 2, int(0.9 * 3584 ** 2), 35_840)
    assert zero["stage3_max_live_parameters"] == 200_000_000
    largest = P.builtin_shape("qwen2-vl-7b").largest_module_params
    # bf16: reduce bucket + gathered parameters (the file's 2e8 live budget); no trained base module
    assert out["gpu_gib"]["zero_buffers"] == round(2 * (3584 ** 2 + max(200_000_000, largest)) / GIB, 4)
    assert main(["plan", "--model", "qwen2-vl-7b", "--deepspeed-config", str(path)]) == 0
    assert f"DeepSpeed buffers ({path}): reduce_bucket_size 12,845,056" in capsys.readouterr().out


@pytest.mark.parametrize("change, message", [
    (lambda d: d["zero_optimization"].update(stage3_max_live_params=1e9),
     "zero_optimization.stage3_max_live_params: unknown key"),
    (lambda d: d["zero_optimization"].update(stage3_max_live_parameters="auto"),
     "zero_optimization.stage3_max_live_parameters: \"auto\" is filled in only for"),
    (lambda d: d["zero_optimization"].update(stage=4), "zero_optimization.stage must be 0, 1, 2 or 3"),
    (lambda d: d["zero_optimization"]["offload_param"].update(device="nvme"), "'nvme' is not modelled"),
    (lambda d: d["zero_optimization"].update(reduce_bucket_size=-1), "reduce_bucket_size must be a number >= 0"),
    (lambda d: d.update(bf16={"enabled": True}, fp16={"enabled": True}), "bf16 and fp16 are both enabled"),
])
def test_plan_rejects_a_bad_deepspeed_config_in_one_line(tmp_path, capsys, change, message):
    doc = json.loads(json.dumps(SAMPLE_DEEPSPEED))
    change(doc)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(doc))
    assert main(["plan", "--model", "qwen2-vl-7b", "--deepspeed-config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and message in err, err


def test_plan_deepspeed_config_unreadable_or_contradicted(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{\"zero_optimization\": {")
    assert main(["plan", "--model", "qwen2-vl-7b", "--deepspeed-config", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    good = tmp_path / "ds.json"
    good.write_text(json.dumps(SAMPLE_DEEPSPEED))
    assert main(["plan", "--model", "qwen2-vl-7b", "--deepspeed-config", str(good), "--zero", "2"]) == 2
    assert "--zero and --deepspeed-config both set the ZeRO set-up" in capsys.readouterr().err
    assert main(["plan", "--model", "qwen2-vl-7b", "--deepspeed-config", str(tmp_path / "none.json")]) == 2
    assert "cannot read the DeepSpeed config" in capsys.readouterr().err


@pytest.mark.parametrize("sections, precision", [
    ({"bf16": {"enabled": True}}, "bf16"), ({"fp16": {"enabled": True}, "bf16": {"enabled": False}}, "fp16"),
    ({"bf16": {"enabled": False}, "fp16": {"enabled": False}}, "fp32"), ({}, None),
    ({"bf16": {"enabled": "auto"}}, None)])
def test_deepspeed_config_precision(tmp_path, sections, precision):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, **sections}))
    setup = P.read_deepspeed_config(path, hidden_size=64)
    assert setup.precision == precision
    assert setup.zero["reduce_bucket_size"] == 500_000_000  # left out: DeepSpeed's default
