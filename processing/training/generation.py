"""The decoding settings of a run: part of the model (its `generation_config.json`), so evaluation, the exported
model and the pipeline decode as the reported metrics did.

Resolved once, in this order (each overrides the one before): the model's own generation config (an exported MMGL
model records the settings its metrics used), a `--generation_config` file or folder, then the flags
`--generation_max_new_tokens`, `--generation_num_beams` and `--no_repeat_ngram_size`
(`Seq2SeqTrainingArguments`' names where it has one). Without any of them: greedy, 64 new tokens.
"""
from __future__ import annotations

import os

from transformers import GenerationConfig

DEFAULT_MAX_NEW_TOKENS = 64
# What the metrics depend on; logged and written to the card.
REPORTED_SETTINGS = ("max_new_tokens", "num_beams", "do_sample", "no_repeat_ngram_size", "length_penalty",
                     "repetition_penalty", "early_stopping")


def load_generation_config(path: str | os.PathLike) -> GenerationConfig:
    """A `GenerationConfig` from a JSON file, or from a folder (or hub id) holding `generation_config.json`."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return GenerationConfig.from_pretrained(os.path.dirname(os.path.abspath(path)),
                                                config_file_name=os.path.basename(path))
    try:
        return GenerationConfig.from_pretrained(path)
    except OSError as err:
        raise FileNotFoundError(f"--generation_config {path}: no generation config file there ({err})") from None


def resolve_generation_config(model_config: GenerationConfig, generation_config: str | GenerationConfig | None = None,
                              max_new_tokens: int | None = None, num_beams: int | None = None,
                              no_repeat_ngram_size: int | None = None, pad_token_id: int | None = None,
                              eos_token_id: int | None = None) -> GenerationConfig:
    """The run's decoding settings (see the module docstring); `model_config` is left unchanged.

    Args:
        model_config (`GenerationConfig`): the model's own (`model.generation_config`).
        generation_config (`str` or `GenerationConfig`, *optional*): `--generation_config`.
        max_new_tokens, num_beams, no_repeat_ngram_size (`int`, *optional*): the flags, `None` when not given.
        pad_token_id, eos_token_id (`int`, *optional*): the processor's, always set.
    """
    settings = model_config.to_dict()
    if generation_config is not None:
        given = generation_config if isinstance(generation_config, GenerationConfig) else \
            load_generation_config(generation_config)
        settings.update(given.to_diff_dict())
    flags = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "no_repeat_ngram_size": no_repeat_ngram_size,
             "pad_token_id": pad_token_id, "eos_token_id": eos_token_id}
    settings.update({k: v for k, v in flags.items() if v is not None})
    # Written out, so generation_config.json says how the reported metrics were decoded.
    for name, default in (("max_new_tokens", DEFAULT_MAX_NEW_TOKENS), ("num_beams", 1), ("do_sample", False)):
        if settings.get(name) is None:
            settings[name] = default
    settings.pop("transformers_version", None)
    settings.pop("_from_model_config", None)  # chosen for this run, not derived from the model config
    resolved = GenerationConfig.from_dict(settings)
    resolved.validate()
    return resolved


def reported_settings(config: GenerationConfig) -> dict:
    """The settings the metrics depend on (`REPORTED_SETTINGS`), for logs, metrics files and the card."""
    return {name: getattr(config, name, None) for name in REPORTED_SETTINGS}


def generation_kwargs(config: GenerationConfig) -> dict:
    """The settings as `generate()` / `Seq2SeqTrainer.predict()` keyword arguments (the ones set, with the pad and eos
    ids), so every evaluation decodes as the model's generation config says."""
    kwargs = {k: v for k, v in reported_settings(config).items() if v is not None}
    kwargs.update({k: getattr(config, k) for k in ("pad_token_id", "eos_token_id") if getattr(config, k) is not None})
    return kwargs


__all__ = ["DEFAULT_MAX_NEW_TOKENS", "generation_kwargs", "load_generation_config", "reported_settings",
           "resolve_generation_config"]
