"""`harness.planner.estimate` / `lorabench plan`: hand-computed numbers on a made-up 2-layer shape, the shipped
shapes against well-known parameter totals, and the CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest

from harness import planner as P
from harness.cli import main
from harness.errors import UserError

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
    # buckets: reduce 2 x min(8,192, 64^2) + allgather 2 x min(8,192, 2e8)
    assert states(plan) == {"frozen_weights": 230_160, "lora_weights": 16_384, "trained_base_weights": 0,
                            "gradients": 8_192, "optimizer_states": 65_536, "zero_buffers": 8_192 + 16_384}


def test_zero1_partitions_only_the_optimizer():
    plan = P.estimate(plan_input(zero_stage=1, world_size=2))
    assert (plan.gpu_bytes["gradients"], plan.gpu_bytes["optimizer_states"]) == (16_384, 65_536)


def test_zero3_partitions_frozen_weights_too_and_adds_gathered_buffer():
    plan = P.estimate(plan_input(zero_stage=3, world_size=4, zero3_max_live_params=1_000))
    # ceil(230,160 / 4); gathered = max(max_live 1,000, largest module 16,512) x 2 B, + reduce bucket 8,192
    assert states(plan) == {"frozen_weights": 57_540, "lora_weights": 4_096, "trained_base_weights": 0,
                            "gradients": 4_096, "optimizer_states": 32_768, "zero_buffers": 8_192 + 33_024}


def test_zero3_gathered_buffer_is_capped_by_model_size():
    plan = P.estimate(plan_input(zero_stage=3, world_size=4))  # max_live 1e9 > 115,080 params
    assert plan.gpu_bytes["zero_buffers"] == 8_192 + 2 * 115_080


def test_offload_moves_states_to_cpu_ram():
    plan = P.estimate(plan_input(zero_stage=3, world_size=4, offload_optimizer=True, offload_params=True,
                                 zero3_max_live_params=1_000))
    assert states(plan) == {"frozen_weights": 0, "lora_weights": 0, "trained_base_weights": 0,
                            "gradients": 0, "optimizer_states": 0, "zero_buffers": 41_216}
    # node totals: optimizer 8,192 x 16 B; parameters 115,080 x 2 + 8,192 x 2; 4 processes x 0.5 GiB
    assert plan.cpu_bytes == {"offloaded_optimizer": 131_072, "offloaded_gradients": 0,
                              "offloaded_params": 246_544, "process_baseline": 2 * GIB,
                              "total": 131_072 + 246_544 + 2 * GIB}


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
    assert P.fits(plan, 1.0) and not P.fits(plan, 0.5)
    assert P.verdict(plan, 1.0) == "fits on 2 x 1 GiB (headroom 0.25 GiB)"
    assert P.verdict(plan, 0.5) == "does not fit on 2 x 0.5 GiB (short by 0.25 GiB)"
    assert P.verdict(plan) == "fits on 2 x 24 GiB (headroom 23.25 GiB)"  # the input's gpu_mem_gib


def test_search_returns_the_largest_fitting_length_per_batch():
    inputs = plan_input(gpu_mem_gib=0.75 + 1e-3, cuda_context_gib=0.75)  # ~1 MiB to spend
    rows = P.search_fits(inputs, batches=(1, 2), max_lengths=(64, 128, 256, 100_000))
    for row in rows:
        assert row["max_length"] in (64, 128, 256)
        ok = P.estimate(dataclasses.replace(inputs, micro_batch_size=row["batch"], max_length=row["max_length"]))
        assert P.fits(ok)
        nxt = {64: 128, 128: 256, 256: 100_000}[row["max_length"]]
        assert not P.fits(P.estimate(dataclasses.replace(inputs, micro_batch_size=row["batch"], max_length=nxt)))
    assert rows[0]["max_length"] >= rows[1]["max_length"]
    assert P.search_fits(inputs, batches=(1,), max_lengths=(100_000,))[0]["max_length"] is None


# --- shipped shapes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, well_known", [("qwen2-vl-2b", 2.21e9), ("qwen2-vl-7b", 8.29e9),
                                              ("minicpm-v-2_6", 8.1e9)])
def test_shipped_shapes_match_well_known_totals(name, well_known):
    shape = P.builtin_shape(name)
    assert shape.total_params == pytest.approx(well_known, rel=0.03)
    assert shape.source["config"].startswith("https://huggingface.co/")
    assert shape.image_tokens.default_per_sample > 0


@pytest.mark.parametrize("name", ["qwen2-vl-2b", "qwen2-vl-7b"])
def test_qwen_shape_files_equal_the_builder_on_their_source_fields(name):
    shipped = P.builtin_shape(name)
    f = dict(shipped.source["fields"])
    vision, tied = f.pop("vision_config"), f.pop("tie_word_embeddings")
    assert P.qwen2_vl_shape(name, f, vision, tied, {}) == shipped  # source is excluded from ==


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
    with pytest.raises(UserError, match="only 'qwen2_vl'"):
        P.shape_from_hf_config(tmp_path)


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
    assert "fits on 1 x 24 GiB" in text


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


def test_validate_compares_estimates_with_measured_runs(tmp_path, tiny_model_dir):
    """A memory-suite record -> the planner's per-process estimate next to the measured peak."""
    import json as _json

    from harness.planner.validate import format_rows, validate
    from harness.config.spec import make_spec

    spec = make_spec({"train": {"batch_size": 4}, "distributed": {"zero_stage": 2}})
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
    rows = validate(tmp_path)
    assert len(rows) == 1 and rows[0]["lever"] == "zero2" and rows[0]["measured_mib"] == 200.0
    assert rows[0]["estimate_mib"] > 0 and rows[0]["ratio"] == rows[0]["estimate_mib"] / 200.0
    assert "est/meas" in format_rows(rows)
    assert "calibrated_ratio" not in rows[0]  # no baseline run to calibrate on
