"""The embedded model: tokenizer, checkpoint loading with transformers alone, swift's own CLI."""

import json
import math
import os
import subprocess
import sys

import pytest

from harness.chat import SPECIAL_TOKENS, build_answer, build_prompt


def test_tokenizer_is_character_level_with_qwen_specials():
    from harness.tinymodel.architecture import alphabet_from_texts, build_tokenizer

    tok = build_tokenizer(alphabet_from_texts(["Grüße"]))
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(7))
    text = "TOTAL: $12.50\nok"
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.decode(tok("ü", add_special_tokens=False).input_ids) == "ü"  # learnt from the data
    assert tok("€", add_special_tokens=False).input_ids == [tok.unk_token_id]  # not in the data: unknown


def test_prompt_matches_swift_qwen2_vl_format():
    prompt = build_prompt("<image>Read all text.")
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                      "<|vision_start|><|image_pad|><|vision_end|>Read all text.<|im_end|>\n<|im_start|>assistant\n")
    assert build_prompt("Read.", system=None).startswith("<|im_start|>user\n<|vision_start|>")
    assert build_answer("x") == "x<|im_end|>\n"


def run_offline(code: str) -> dict:
    """Run `code` in a fresh interpreter, offline and outside the repository (nothing of lorabench
    importable by accident); its last stdout line, parsed as JSON."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd="/")
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_checkpoint_loads_offline_with_transformers_alone(tiny_model_dir):
    """A fresh interpreter that imports nothing of lorabench: from_pretrained + one generation."""
    code = f"""
import json, torch
from PIL import Image
from transformers import AutoProcessor, Qwen2VLForConditionalGeneration
d = {str(tiny_model_dir)!r}
proc = AutoProcessor.from_pretrained(d)
model = Qwen2VLForConditionalGeneration.from_pretrained(d)
msgs = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "Read all text."}}]}}]
text = proc.apply_chat_template(msgs, add_generation_prompt=True)
enc = proc(text=[text], images=[Image.new("RGB", (640, 48), "white")], return_tensors="pt", return_mm_token_type_ids=True)
out = model.generate(**enc, max_new_tokens=4, do_sample=False)
print(json.dumps({{"n_image_tokens": int((enc["input_ids"] == 5).sum()), "new": out.shape[1] - enc["input_ids"].shape[1]}}))
"""
    out = run_offline(code)
    assert out["n_image_tokens"] == 3 * 40  # 48 px = 3 rows of 16 px, 640 px = 40 columns
    assert 1 <= out["new"] <= 4
    card = (tiny_model_dir / "README.md").read_text()
    assert "vision tower" in card and "CER" in card


@pytest.mark.integration
def test_swift_cli_trains_two_lora_steps(tiny_model_dir, mini_dataset, tmp_path, repo_root):
    """ms-swift's own `swift sft` CLI, with our model type registered through --custom_register_path."""
    from harness.run.job import write_train_file

    train = tmp_path / "train.jsonl"
    write_train_file(mini_dataset / "train.extract.jsonl", train, "extract", 8)
    swift = os.path.join(os.path.dirname(sys.executable), "swift")
    cmd = [swift, "sft", "--custom_register_path", str(repo_root / "adapters" / "swift_model.py"),
           "--model", str(tiny_model_dir), "--model_type", "lorabench_tiny_qwen2_vl", "--dataset", str(train),
           "--tuner_type", "lora", "--max_steps", "2", "--per_device_train_batch_size", "2",
           "--gradient_accumulation_steps", "1", "--output_dir", str(tmp_path / "out"), "--add_version", "false",
           "--check_model", "false", "--report_to", "none", "--dataloader_num_workers", "0",
           "--save_strategy", "no", "--logging_steps", "1", "--torch_dtype", "float32"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29561", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    log = (tmp_path / "out" / "logging.jsonl").read_text()
    assert '"global_step/max_steps": "2/2"' in log or "2/2" in log


@pytest.mark.integration
def test_model_eval_reproduces_the_committed_card(capsys):
    """`lorabench model eval` on the committed checkpoint gives the card's base CER."""
    from harness.cli import main
    from harness.tinymodel.build import ASSET_DIR

    if not (ASSET_DIR / "lorabench.json").is_file():
        pytest.skip("no committed checkpoint")
    meta = json.loads((ASSET_DIR / "lorabench.json").read_text())
    assert main(["model", "eval", str(ASSET_DIR), "--task", "transcribe", "--n", "200", "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # greedy decoding on another CPU may flip a near-tie token; the card's figure must hold closely
    assert got["cer"] == pytest.approx(meta["base_quality"]["transcribe"]["cer"], abs=0.02)
    assert got["n"] == 200


@pytest.mark.integration
def test_tiny_minicpmv_loads_offline_with_transformers_alone(tiny_minicpmv_dir):
    """The tiny MiniCPM-V in a fresh interpreter with transformers alone: MiniCPM-V's own processor
    keeps the 640 x 128 canvas as it is and makes one language-model token per 16 px cell (8 px
    patches merged 2 x 2 in 4x mode): 40 x 8 = 320."""
    code = f"""
import json
import math
from PIL import Image
from transformers import AutoProcessor, MiniCPMV4_6ForConditionalGeneration
d = {str(tiny_minicpmv_dir)!r}
proc = AutoProcessor.from_pretrained(d)
model = MiniCPMV4_6ForConditionalGeneration.from_pretrained(d)
msgs = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "Read all text."}}]}}]
text = proc.apply_chat_template(msgs, add_generation_prompt=True)
enc = proc(text=[text], images=[Image.new("RGB", (640, 128), "white")], return_tensors="pt")
out = model.generate(**enc, max_new_tokens=4, do_sample=False)
pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
print(json.dumps({{"n_image_tokens": int((enc["input_ids"] == pad).sum()), "new": out.shape[1] - enc["input_ids"].shape[1]}}))
"""
    out = run_offline(code)
    assert out["n_image_tokens"] == 40 * 8
    assert 1 <= out["new"] <= 4


def test_minicpmv_curriculum_pages_keep_their_own_size():
    """The forge's curriculum feeds MiniCPM-V pages of 1-2 rows on a 640 x 32 canvas, unscaled: the
    processor is given the resolution at which its resize is the identity (it rounds sides to 32 px),
    so a 2-row page is 2 x 40 language-model tokens, as for the tiny Qwen2-VL."""
    from PIL import Image

    from harness import archs
    from harness.tinymodel import forge, forge_pages, minicpmv

    tok = minicpmv.build_tokenizer(list("abc"))
    processor = minicpmv.build_processor(tok, minicpmv.PRESETS["tiny"])
    size, kwargs, last_step = minicpmv.curriculum_canvas(processor, curriculum_steps=1700)
    assert size == (640, 32) and kwargs == {"scale_resolution": 144}
    assert last_step == 1700 - minicpmv.CANVAS_CURRICULUM_STEPS  # then 1-2-row pages on the 8-row canvas
    # the full canvas is the identity at the checkpoint's own resolution
    image_processor = processor.image_processor
    assert image_processor.find_best_resize((128, 640), minicpmv.SCALE_RESOLUTION, 8, allow_upscale=True) == (128, 640)
    with pytest.raises(ValueError, match="no scale_resolution keeps a 640x16 image"):
        minicpmv.unscaled_resolution(image_processor, (640, 16))  # not a multiple of 32 px
    items = [(Image.new("RGB", size, "white"), forge_pages.READ_PROMPT, "ab", None)]
    enc = forge.encode_batch(processor, items, archs.MINICPMV4_6, kwargs)
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert int((enc["input_ids"] == pad).sum()) == 2 * 40
    assert enc["target_sizes"].tolist() == [[32 // 8, 640 // 8]]


@pytest.mark.integration
def test_forge_trains_the_tiny_minicpmv_with_its_reading_head_on_the_merger(tmp_path, monkeypatch):
    """A few forge steps on the MiniCPM-V family: the reading head reads the merger's per-image
    outputs (one token per 16 px cell), both stages run and the checkpoint records its canvas. The
    curriculum's steps run on both of its canvases (2 rows, then 8)."""
    from harness.tinymodel import forge, minicpmv
    from harness.tinymodel.build import BuildPlan, build_tiny_model

    monkeypatch.setattr(minicpmv, "CANVAS_CURRICULUM_STEPS", 2)
    image_sizes = []
    encode = forge.encode_batch

    def recording_encode(processor, items, arch, processor_kwargs=None):
        image_sizes.append(items[0][0].size)
        return encode(processor, items, arch, processor_kwargs)

    monkeypatch.setattr(forge, "encode_batch", recording_encode)

    path, meta = build_tiny_model(BuildPlan(family="minicpmv", card="synthdocs-mini", steps=4, random_pages=8,
                                            label_pages=8, instruction_steps=2),
                                  out_dir=tmp_path / "m", progress=False, eval_every=0, quality_samples=2,
                                  force=True)  # not a reading stage cached by an earlier run: train it here
    saved = json.loads((path / "lorabench.json").read_text())
    assert saved["key"] == meta["key"] and saved["image_canvas"] == [640, 128]
    log = json.loads((path / "pretrain_log.json").read_text())
    assert log and all(math.isfinite(r["ctc_loss"]) and math.isfinite(r["lm_loss"]) for r in log)
    # reading stage: 4 curriculum steps, 2 on the small canvas; instruction stage: 2 on the canvas
    assert image_sizes == [(640, 32)] * 2 + [(640, 128)] * 4
