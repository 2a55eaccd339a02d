"""The export contract: a trained model as a complete, flat Hub folder (`save_hub_folder`, `save_for_hub`) with remote
code, weights, processor, the custom pipeline and, for a model trained from an embedding cache, the frozen encoder
that filled it; `check_flat_folder` checks that the folder's code imports nothing it does not hold."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from modeling_mmgl.neighbor_encoder import MMGLNeighborEncoder


_PROJECT_PACKAGES = ("processing", "modeling_mmgl")


def check_flat_folder(folder: str | os.PathLike) -> None:
    """Raise if a `.py` file of `folder` imports relatively something that is not a file of `folder`
    (found the way transformers finds them, by regex, so even an indented or lazy import counts), or imports
    this project's packages (`processing`, `modeling_mmgl`) by absolute name."""
    import ast

    from transformers.dynamic_module_utils import get_relative_imports

    folder = Path(folder)
    local = {path.stem for path in folder.glob("*.py")}
    problems = []
    for path in sorted(folder.glob("*.py")):
        for module in sorted(get_relative_imports(path)):
            if module not in local:
                problems.append(f"{path.name}: 'from .{module} import' is not a file of the folder")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level > 1:
                problems.append(f"{path.name}: 'from {'.' * node.level}{node.module or ''} import' leaves the folder")
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in _PROJECT_PACKAGES:
                    problems.append(f"{path.name}: imports the package {name!r}, which a Hub folder does not have")
    if problems:
        raise RuntimeError(f"{folder} is not a flat Hub folder:\n  " + "\n  ".join(problems))


def save_for_hub(model, processor, output_dir: str | os.PathLike) -> list[str]:
    """Write `model` and `processor` to `output_dir` as a flat Hub folder that loads with
    `pipeline("mmgl-summarization", model=output_dir, trust_remote_code=True)` (and `AutoModel`,
    `AutoModelForCausalLM`, `AutoProcessor`, `AutoTokenizer` with `trust_remote_code=True`) in a process
    without this package.

    Writes: config.json (`auto_map` for AutoConfig / AutoModel / AutoModelForCausalLM and
    `custom_pipelines`), generation_config.json, model.safetensors, the tokenizer files
    (tokenizer_config.json with `auto_map.AutoProcessor`), processor_config.json (`auto_map.AutoProcessor`)
    and preprocessor_config.json, and the code: the modeling files, `processing_mmgl.py` and the files it imports
    (design space, neighbour selection, SA-TE layout, graph projection, page graph, token cache, image source,
    collator, atomic writes), `pipeline_mmgl.py` and the embedding-cache reader; no data tool.

    Args:
        model (`MMGLForConditionalGeneration`): the model (merge peft adapters first).
        processor (`MMGLProcessor`): its processor.
        output_dir (`str` or `os.PathLike`): the folder (created if needed).

    Returns:
        `list[str]`: the file names in `output_dir`.
    """
    if hasattr(model, "merge_and_unload") or hasattr(model, "get_base_model"):
        raise TypeError("save_for_hub needs a plain model: merge peft adapters first (model = model.merge_and_unload())")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    from processing.pipeline_mmgl import TASK, MMGLSummarizationPipeline, register_pipeline

    register_pipeline()
    # Processor code and `auto_map.AutoProcessor` in processor_config.json / tokenizer_config.json.
    type(processor).register_for_auto_class("AutoProcessor")
    pipe = MMGLSummarizationPipeline(model=model, processor=processor, task=TASK, device=-1)
    # Through the pipeline object: config.json gets `custom_pipelines` and pipeline_mmgl.py (+ the files it
    # imports relatively) is copied; then the model (+ modeling files), tokenizer and image processor.
    pipe.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    # Python caches copied along with nothing else: keep the folder to its files.
    shutil.rmtree(output_dir / "__pycache__", ignore_errors=True)
    check_flat_folder(output_dir)
    return sorted(p.name for p in output_dir.iterdir())


def attach_neighbor_encoder(model, encoder: MMGLNeighborEncoder):
    """Put `encoder` (the frozen encoder that filled the embedding cache) into `model`, so that the model also
    takes raw neighbour texts and images (the pipeline without a cache) and encodes them exactly as the cache
    did. The model's config records the encoder, and a Hugging Face text encoder's architecture (its weights go
    into the model's state dict, its tokenizer is saved with the processor)."""
    config = model.config
    config.neighbor_encoder_name = encoder.name
    config.neighbor_encoder_pretrained = getattr(encoder, "pretrained", None)
    config.neighbor_encoder_config = dict(encoder.model_config)
    config.embedding_cache_encoder = None  # the encoder is inside now: one record of it
    # A design without text neighbours (SA-TE, section_only) records no text encoder: the model carries only the
    # open_clip part of an encoder that also has one (the cache records it for the designs that read texts).
    text_model = encoder.text_model if config.text_neighbor_encoder is not None else None
    if text_model is not None:
        wanted = (config.text_neighbor_encoder, config.text_neighbor_pooling, config.text_neighbor_max_length)
        given = (text_model.name, text_model.pooling, text_model.max_length)
        if wanted != given:
            raise ValueError(f"the model encodes text neighbours with (text_neighbor_encoder, pooling, max_length) "
                             f"{wanted} but the encoder to attach with {given}")
        config.text_neighbor_encoder_config = text_model.config_dict()  # built from it: no second download
    elif config.text_neighbor_encoder is not None and encoder.text_model is None:
        raise ValueError(f"the model encodes text neighbours with {config.text_neighbor_encoder!r} but the encoder "
                         "to attach has no Hugging Face text encoder")
    if model.neighbor_encoder is None:
        model.neighbor_encoder = MMGLNeighborEncoder(config)
    if text_model is None:
        model.neighbor_encoder.model.load_state_dict(encoder.model.state_dict())
    else:
        model.neighbor_encoder.load_state_dict(encoder.state_dict())
    return model


def trained_model(model):
    """The plain `MMGLForConditionalGeneration` that computes what `model` (a peft model or a plain one) computes.

    - LoRA: merged into the weights (`merge_and_unload`), so no adapter is left to apply twice.
    - Prefix / prompt tuning: the trained virtual tokens become the model's own `virtual_tokens` module
      (`MMGLConfig.virtual_tokens`), applied exactly as peft applies them, so `AutoModel`, the pipeline and
      `run_summarization.py --model_name_or_path` need no peft step.
    - The MMGL modules trained as peft `modules_to_save` (projectors, position encoding, gated cross-attention) keep
      their trained weights.

    A peft model is changed in place (merged / unwrapped): call this once, at the end.
    """
    from peft import PeftModel, PeftType

    from modeling_mmgl.virtual_tokens import MMGLVirtualTokens
    from processing.training.tuning import unwrap_modules_to_save

    if not isinstance(model, PeftModel):
        return model
    adapter = model.active_adapter
    peft_config = model.peft_config[adapter]
    peft_type = PeftType(peft_config.peft_type)
    if peft_type == PeftType.LORA:
        return unwrap_modules_to_save(model.merge_and_unload())
    if peft_type not in (PeftType.PREFIX_TUNING, PeftType.PROMPT_TUNING):
        raise ValueError(f"a {peft_type.value} adapter cannot be exported as one model (LoRA, prefix and prompt "
                         "tuning can)")
    weight = model.get_prompt_embedding_to_save(adapter)  # (num_virtual_tokens, width), peft's flattened layout
    plain = unwrap_modules_to_save(model.get_base_model())
    plain.config.virtual_tokens = "prefix" if peft_type == PeftType.PREFIX_TUNING else "prompt"
    plain.config.num_virtual_tokens = peft_config.num_virtual_tokens
    virtual = MMGLVirtualTokens(plain.config)
    if tuple(virtual.embedding.weight.shape) != tuple(weight.shape):
        raise ValueError(f"the {peft_type.value} adapter holds virtual tokens of shape {tuple(weight.shape)}, but this model "
                         f"takes {tuple(virtual.embedding.weight.shape)}")
    device = next(plain.parameters()).device
    virtual.embedding.weight.data.copy_(weight)
    plain.virtual_tokens = virtual.to(device=device, dtype=plain.dtype)
    return plain


def save_adapter_base(model, processor, checkpoint_dir: str | os.PathLike, keep_existing: bool = False,
                      should_save: bool = True) -> str:
    """Saves `model` (the plain model a peft adapter is about to wrap) as `<checkpoint_dir>/base_model`, a
    complete Hub folder, and returns its absolute path: every `checkpoint-N` adapter records it as
    `base_model_name_or_path`, so `AutoPeftModelForCausalLM` and `run_summarization.py --model_name_or_path
    checkpoint-N` rebuild the run's model from the adapter alone.

    Written through a staging folder (a kill leaves no half-written base). `keep_existing` (a resumed run): the
    base the earlier checkpoints were saved against is kept.
    """
    from processing.atomic_write import replace_folder, staging_folder

    folder = Path(checkpoint_dir).resolve() / "base_model"
    if should_save and not (keep_existing and (folder / "config.json").is_file()):
        staging = staging_folder(folder)
        save_for_hub(model, processor, staging)
        replace_folder(staging, folder)
    return str(folder)


def save_hub_folder(model, processor, output_dir: str | os.PathLike, neighbor_encoder: MMGLNeighborEncoder | None = None,
                    state_dict: dict | None = None):
    """A complete Hub repository in `output_dir`: the model `model` is (`trained_model`: LoRA merged, prefix /
    prompt virtual tokens inside), its processor, remote code and pipeline. No adapter is written: a peft adapter
    lives only beside its unmerged base (the Trainer checkpoints, `base_model/` in the checkpoint folder).
    `neighbor_encoder`: trained from an embedding cache, the model is exported with that frozen encoder inside.

    `state_dict`: the model's full weights gathered across processes (`MMGLSummarizationTrainer.save_model`; under
    FSDP / DeepSpeed ZeRO-3 `model` itself holds only shards): the folder is written from a fresh copy of the model
    carrying them (`processing.training.distributed.model_with_state_dict`), and `model` is left as it is.
    """
    if state_dict is not None:
        from processing.training.distributed import model_with_state_dict

        model = model_with_state_dict(model, state_dict)
    model = trained_model(model)
    if neighbor_encoder is not None and model.neighbor_encoder is None:
        model = attach_neighbor_encoder(model, neighbor_encoder)
    return save_for_hub(model, processor, output_dir)


__all__ = [
    "attach_neighbor_encoder",
    "check_flat_folder",
    "save_adapter_base",
    "save_for_hub",
    "save_hub_folder",
    "trained_model",
]
