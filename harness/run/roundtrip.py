"""Is the saved adapter the model that was trained? Reload it in a fresh process and compare.

Adapters that behave like the base model once served elsewhere, tensors trained in full that a
ZeRO stage did not save, a loader that maps keys differently: none of these shows in the training
loss. Every run's adapter is therefore reloaded, after training, into a fresh base model in a
fresh process, by each framework's own loading path:
- `peft`:  `PeftModel.from_pretrained` (the evaluation worker, which never imports a trainer);
- `swift`: `Swift.from_pretrained` on the model from swift's own loader, what `swift infer
  --adapters` runs (its own process: importing swift patches transformers).
Both frameworks save PEFT's format with the same key names, so an adapter trained by one loads in
the other as is; no key mapping is applied, and the comparison below would name any difference.
A cell trained in another environment (a spec's `env`) saved its adapter with that environment's
releases, and these loaders are the main environment's: the same check is then the cross-release
round trip, and each block says which releases saved and which loaded.

Against the probe the training process took from the live model (adapters.readback.save_probe):
- logits on the probe rows within LOGIT_TOLERANCE (fp32);
- every tensor that was trainable is in the saved files, with its shape (a missing one is named);
- the merged model (`merge_and_unload`) gives the same greedy answers as the unmerged one;
- every saved tensor is in the loaded model with its value, and every adapter tensor of the loaded
  model holds a saved one (`keys`, loader_key_check). PEFT only warns about keys it could not place
  and says nothing of saved keys it ignored: a key renamed between releases (a module moved under
  `language_model`) leaves the trained value out and that tensor at its initialisation. The logits
  would show it in fp32, but in half precision one layer's adapter can move them by less than the
  tolerance, so the keys are accounted for by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from harness.errors import UserError

LOGIT_TOLERANCE = {"float32": 1e-5, "bfloat16": 5e-2, "float16": 5e-2}  # fp32 is the check; half precision is noise
GREEDY_TOKENS = 48


def saved_tensors(adapter_dir: Path) -> dict[str, list[int]]:
    """Name (normalised as the probe's) -> shape of every tensor in the saved adapter."""
    from safetensors import safe_open

    from adapters.lora_setup import normalize_key

    out = {}
    with safe_open(str(Path(adapter_dir) / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():
            out[normalize_key(key)] = list(f.get_slice(key).get_shape())
    return out


def missing_tensors(trainable: dict[str, list[int]], saved: dict[str, list[int]]) -> list[str]:
    """Trainable tensors absent from the saved files, or saved with another shape (a ZeRO shard)."""
    problems = []
    for name, shape in sorted(trainable.items()):
        if name not in saved:
            problems.append(f"{name} (not saved)")
        elif list(saved[name]) != list(shape):
            problems.append(f"{name} (saved shape {saved[name]}, trained {shape})")
    return problems


def loader_key_check(saved: Mapping, loaded: Mapping) -> dict:
    """How the loaded model holds the saved tensors, by the names in the file.

    `saved`: the adapter file's tensors; `loaded`: the loaded model's adapter tensors under the names
    it would save them with (peft.get_peft_model_state_dict). A saved tensor found under another name
    with its exact value is `remapped` (a loader that maps old names onto a new module layout, as PEFT
    does for VLMs whose submodules moved): the model is the trained one. Whatever is left over is
    named: `not_loaded`, saved tensors the loader ignored; `not_filled`, adapter tensors of the loaded
    model that no saved tensor filled (left at their initial value)."""
    unmatched_saved = {k: v for k, v in saved.items() if k not in loaded or not _same(v, loaded[k])}
    unmatched_loaded = {k: v for k, v in loaded.items() if k not in saved or not _same(saved[k], v)}
    by_value: dict[tuple, list[str]] = {}
    for key in sorted(unmatched_loaded):
        by_value.setdefault(_fingerprint(unmatched_loaded[key]), []).append(key)
    remapped, not_loaded = {}, []
    for key in sorted(unmatched_saved):
        candidates = by_value.get(_fingerprint(unmatched_saved[key]))
        if candidates:
            target = candidates.pop(0)
            remapped[key] = target
            unmatched_loaded.pop(target)
        else:
            not_loaded.append(key)
    return {"saved": len(saved), "loaded": len(loaded), "not_loaded": not_loaded,
            "not_filled": sorted(unmatched_loaded), "remapped": remapped}


def _as_float(tensor):
    import torch

    return tensor.detach().to("cpu", torch.float32).contiguous()


def _same(a, b) -> bool:
    import torch

    return tuple(a.shape) == tuple(b.shape) and torch.equal(_as_float(a), _as_float(b))


def _fingerprint(tensor) -> tuple:
    import hashlib

    return tuple(tensor.shape), hashlib.sha256(_as_float(tensor).numpy().tobytes()).hexdigest()


def loaded_adapter_state(model) -> dict | None:
    """The loaded model's adapter tensors as PEFT would save them; None for a model PEFT did not wrap."""
    from peft import PeftModel, get_peft_model_state_dict

    return get_peft_model_state_dict(model) if isinstance(model, PeftModel) else None


def saved_state(adapter_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))


def releases(adapter_dir: Path) -> dict:
    """Which peft wrote the adapter (its adapter_config.json says) and which releases load it here."""
    import json

    from harness.run.env import FRAMEWORKS, package_versions

    try:
        saved_by = json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("peft_version")
    except (OSError, ValueError):
        saved_by = None
    seen = package_versions(FRAMEWORKS)
    return {"saved_by_peft": saved_by,
            "loaded_by": {k: seen.get(k) for k in ("peft", "transformers", "ms-swift", "torch")}}


def load_probe(path: Path) -> dict:
    """The probe, unpickling nothing but tensors and plain containers: a results directory may come from
    someone else, and a pickled object could run code as it loads."""
    import pickle

    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"{path}: refused to load, it holds more than tensors and plain values "
                        f"({str(exc).splitlines()[0]})") from None


def logits_difference(model, probe: dict) -> float:
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(**{k: v.to(device) for k, v in probe["inputs"].items()}).logits.float().cpu()
    if logits.shape != probe["logits"].shape:
        return math.inf
    return float((logits - probe["logits"]).abs().max())


def greedy_answers(model, processor, probe: dict) -> list[str]:
    from PIL import Image

    from harness.eval.generation import generate_answers

    rows = probe["rows"]
    images = [Image.open(r["images"][0]).convert("RGB") for r in rows]
    return generate_answers(model, processor, images, [r["messages"][0]["content"] for r in rows],
                            system=probe["system"], max_new_tokens=GREEDY_TOKENS,
                            answer_prefix=probe.get("answer_prefix", "template"))


def loader_block(difference: float, dtype: str, probe: dict, saved: dict[str, list[int]],
                 keys: dict | None = None) -> dict:
    tolerance = LOGIT_TOLERANCE.get(dtype, LOGIT_TOLERANCE["float32"])
    missing = missing_tensors(probe["trainable"], saved)
    keys_ok = keys is None or not (keys["not_loaded"] or keys["not_filled"])
    block = {"max_abs_logit_diff": difference, "tolerance": tolerance, "missing": missing,
             "tensors_checked": len(probe["trainable"]), "ok": difference <= tolerance and not missing and keys_ok}
    if keys is not None:
        block["keys"] = keys
    return block


def _key_check(model, adapter_dir: Path) -> dict | None:
    loaded = loaded_adapter_state(model)
    return None if loaded is None else loader_key_check(saved_state(adapter_dir), loaded)


def peft_roundtrip(model_dir: Path, adapter_dir: Path, probe_path: Path, device: str = "cpu"):
    """(block, merged model, processor): the PEFT loader's check; the merged model is what eval uses."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    probe = load_probe(probe_path)
    dtype = str(probe["logits"].dtype).replace("torch.", "")
    processor = AutoProcessor.from_pretrained(str(model_dir))
    processor.tokenizer.padding_side = "left"
    base = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32).to(device)
    saved = saved_tensors(adapter_dir)
    try:
        model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    except Exception as exc:  # e.g. a module trained in full whose weights were not saved
        return ({**loader_block(math.inf, dtype, probe, saved), "error": f"{type(exc).__name__}: {exc}",
                 "releases": releases(adapter_dir)}, None, processor)
    block = loader_block(logits_difference(model, probe), dtype, probe, saved, _key_check(model, adapter_dir))
    block["releases"] = releases(adapter_dir)
    with model.disable_adapter():  # how far the adapter moves the logits: a zero here would prove nothing
        block["adapter_effect"] = logits_difference(model, probe)
    unmerged = greedy_answers(model, processor, probe)
    merged_model = model.merge_and_unload().eval()
    merged = greedy_answers(merged_model, processor, probe)
    block["merged_greedy_equal"] = merged == unmerged
    if not block["merged_greedy_equal"]:
        block["ok"] = False
        block["merged_greedy_diff"] = [{"unmerged": a, "merged": b} for a, b in zip(unmerged, merged) if a != b]
    return block, merged_model, processor


def swift_roundtrip(model_dir: Path, adapter_dir: Path, probe_path: Path, device: str = "cpu") -> dict:
    """The ms-swift loader's check; run in a process of its own (swift patches transformers)."""
    import torch
    from swift.model import get_model_processor
    from swift.tuners import Swift

    from adapters.swift_model import model_type_for, register

    probe = load_probe(probe_path)
    dtype = str(probe["logits"].dtype).replace("torch.", "")
    model_type = model_type_for(model_dir)
    if model_type:
        register()
    base, _ = get_model_processor(str(model_dir), torch_dtype=torch.float32, model_type=model_type,
                                  download_model=False)
    saved = saved_tensors(adapter_dir)
    try:
        model = Swift.from_pretrained(base.to(device), str(adapter_dir)).eval()
    except Exception as exc:
        return {**loader_block(math.inf, dtype, probe, saved), "error": f"{type(exc).__name__}: {exc}",
                "releases": releases(adapter_dir)}
    block = loader_block(logits_difference(model, probe), dtype, probe, saved, _key_check(model, adapter_dir))
    return {**block, "releases": releases(adapter_dir)}


def summarise(blocks: dict[str, dict]) -> tuple[dict, str | None]:
    """(the record's `roundtrip` block, the cause of a failure or None)."""
    failures = []
    for loader, block in blocks.items():
        if block.get("missing"):
            failures.append(f"{loader} loader: trained tensors missing from the saved adapter: "
                            f"{_first(block['missing'])}")
        if block.get("error"):
            failures.append(f"{loader} loader: {block['error']}")
            continue
        keys = block.get("keys") or {}
        if keys.get("not_loaded"):
            failures.append(f"{loader} loader: saved tensors it did not load: {_first(keys['not_loaded'])}")
        if keys.get("not_filled"):
            failures.append(f"{loader} loader: adapter tensors no saved tensor filled (left at their initial "
                            f"value): {_first(keys['not_filled'])}")
        if block["max_abs_logit_diff"] > block["tolerance"]:
            failures.append(f"{loader} loader: logits differ from the trained model's by "
                            f"{block['max_abs_logit_diff']:.3g} (> {block['tolerance']:g})")
        if block.get("merged_greedy_equal") is False:
            failures.append(f"{loader} loader: the merged model's greedy answers differ from the adapter's")
    worst = max((b.get("max_abs_logit_diff", math.inf) for b in blocks.values()), default=None)
    effect = blocks.get("peft", {}).get("adapter_effect")
    summary = {"loaders": blocks, "max_abs_logit_diff": worst, "adapter_effect": effect,
               "ok": not failures and bool(blocks), "cause": "; ".join(failures) or None}
    saved_by = next((b["releases"]["saved_by_peft"] for b in blocks.values() if b.get("releases")), None)
    if saved_by is not None:
        summary["saved_by_peft"] = saved_by
    return summary, summary["cause"]


def _first(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
