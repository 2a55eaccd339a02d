#!/usr/bin/env python
"""Train and evaluate an MMGL section summarizer on WikiWeb2M (any point of the MMGL design space).

    accelerate launch run_summarization.py \
        --model_name_or_path facebook/opt-125m --train_files "wikiweb2m/wikiweb2m-train.tfrecord*" \
        --context all --neighbor_encoding sa_e --position_encoding laplacian --tuning lora \
        --embedding_cache_dir cache/clip --image_dir images --output_dir out --do_train --do_eval

Several processes, GPUs or machines (DDP, FSDP, DeepSpeed): `accelerate launch --config_file launch/<config>.yaml
run_summarization.py ...` (README: "More GPUs and machines"); the result equals one process's at the same global batch.

The paper's recipe (OPT-125m, CLIP ViT-B/32 encoders, lr 1e-4, 10k steps, batch 125) is `--recipe paper`. Arguments
may also come from one JSON file: `python run_summarization.py args.json`. Offline, `--config_overrides` builds a
model from scratch and, without `--tokenizer_name`, a byte-level BPE tokenizer is trained on the training pages.
"""

import copy
import json
import logging
import math
import os
import shutil
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# Before torch / open_clip are imported: their import-time deprecation notice is not this script's concern.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)

import numpy as np  # noqa: E402
import torch
import transformers
from transformers import (
    AutoTokenizer,
    HfArgumentParser,
    OPTConfig,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    Trainer,
    set_seed,
)

from modeling_mmgl import MMGLConfig, MMGLForConditionalGeneration
from modeling_mmgl.configuration_mmgl import TEXT_NEIGHBOR_POOLINGS
from modeling_mmgl.neighbor_encoder import MMGLNeighborEncoder, open_clip_config
from modeling_mmgl.text_neighbor_encoder import resolve_text_encoder_settings
from processing.atomic_write import DiskFullError, is_disk_full
from processing.data.bpe_tokenizer import train_bpe_tokenizer, wikiweb2m_texts
from processing.data.cli import add_debug_argument, run_command
from processing.data.neighbor_inputs import iter_processor_neighbor_inputs
from processing.data.page_table import open_page_table
from processing.data.sample_data import is_generated_page
from processing.data.sample_index import PageGraphIndex
from processing.data.token_store import prepare_token_cache, table_fingerprint
from processing.data.wikiweb2m import summarization_samples
from processing.design_space import (
    ALPHA_INITIALIZERS,
    CONTEXTS,
    DESIGN_DEFAULTS,
    GRAPH_TARGET_FEATURES,
    NEIGHBOR_BRIDGES,
    NEIGHBOR_ENCODINGS,
    PEFT_TUNINGS,
    POSITION_ENCODINGS,
    TUNINGS,
    check_neighbor_bridge,
    check_text_neighbor_encoder,
    has_neighbor_slots,
    neighbor_mode,
)
from processing.image_source import check_image_coverage, clip_image_processor
from processing.loading import check_checkpoint, read_json
from processing.processing_mmgl import MMGLProcessor
from processing.training.checkpoint_design import (
    adapter_base_path,
    apply_checkpoint_design,
    log_free_settings,
    read_checkpoint_design,
)
from processing.training.checkpoint_space import checkpoint_bytes, checkpoint_disk_full
from processing.training.data_report import data_report, report_lines, write_data_report
from processing.training.design_checks import check_model_design, num_decoder_layers
from processing.training.distributed import (
    EXAMPLE_INDEX,
    check_export_gatherable,
    check_launch,
    example_step_seeds,
    gathered_state_dict,
    prepare_on_each_node,
)
from processing.training.export import attach_neighbor_encoder, save_adapter_base, save_hub_folder
from processing.training.gates import gate_values, separate_gate_group
from processing.training.generation import generation_kwargs, reported_settings, resolve_generation_config
from processing.training.metrics import METRICS_STYLES, metrics_implementation, score, teacher_forced_metrics
from processing.training.model_card import base_model_of, export_card_inputs, write_model_card
from processing.training.run_record import MMGLRunRecord, run_arguments
from processing.training.outputs import ResultsFolder, check_output_folders, default_checkpoint_dir, remove_if_empty
from processing.training.recipe import epoch_coverage_line, explicit_fields, resolve_paper_recipe
from processing.training.tuning import (
    apply_tuning,
    check_tuning,
    count_parameters,
    load_adapter,
    run_first_stage,
)

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "An OPT checkpoint (e.g. facebook/opt-125m) or an MMGL checkpoint, hub id or folder. "
                  "Leave unset to train from scratch with --config_overrides."},
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer (defaults to the model's)."})
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "OPT config for a model from scratch, e.g. 'hidden_size=64,num_hidden_layers=2,ffn_dim=128'."},
    )
    tokenizer_vocab_size: int = field(default=4000, metadata={"help": "BPE vocabulary when training a tokenizer."})
    license: str | None = field(
        default=None,
        metadata={"help": "License of the exported weights in the model card (an SPDX id such as apache-2.0). Default: "
                  "the base model's (facebook/opt-*: Meta's OPT license, by name and link)."},
    )
    export: bool = field(
        default=False,
        metadata={"help": "Write the Hub folder (weights, processor, model card) to --output_dir also without "
                  "--do_train (evaluating a checkpoint does not re-export it unless asked)."},
    )
    checkpoint_dir: str | None = field(
        default=None,
        metadata={"help": "Where the Trainer writes checkpoint-N folders, TensorBoard logs while training and, for "
                  "lora / prefix / prompt, the unmerged base model their adapters apply to (base_model/). Default: "
                  "<output_dir>-checkpoints beside --output_dir, never inside it: --output_dir is the result (Hub "
                  "folder, metrics, predictions), replaced as a whole at the end."},
    )


@dataclass
class MMGLArguments:
    context: str = field(default=DESIGN_DEFAULTS["context"], metadata={"help": f"One of {CONTEXTS}."})
    neighbor_encoding: str = field(default=DESIGN_DEFAULTS["neighbor_encoding"], metadata={"help": f"One of {NEIGHBOR_ENCODINGS}."})
    position_encoding: str = field(default=DESIGN_DEFAULTS["position_encoding"], metadata={"help": f"One of {POSITION_ENCODINGS}."})
    tuning: str = field(default=DESIGN_DEFAULTS["tuning"], metadata={"help": f"One of {TUNINGS}."})
    text_neighbor_num_tokens: int = field(default=DESIGN_DEFAULTS["text_neighbor_num_tokens"], metadata={"help": "Soft tokens per text neighbour (its embedding is projected to this many LM tokens)."})
    image_neighbor_num_tokens: int = field(default=DESIGN_DEFAULTS["image_neighbor_num_tokens"], metadata={"help": "Soft tokens per image neighbour."})
    max_text_neighbors: int = field(default=DESIGN_DEFAULTS["max_text_neighbors"], metadata={"help": "Budget of text neighbours per example (sections, page description, captions)."})
    max_image_neighbors: int = field(default=DESIGN_DEFAULTS["max_image_neighbors"], metadata={"help": "Budget of image neighbours per example."})
    cross_attention_interval: int = field(default=DESIGN_DEFAULTS["cross_attention_interval"], metadata={"help": "CA-E: a gated cross-attention block after every N-th decoder layer (N <= layers)."})
    cross_attention_gating: bool = field(
        default=DESIGN_DEFAULTS["cross_attention_gating"],
        metadata={"help": "ca_e: tanh gates closed at init (the model starts as OPT). False: the paper's ungated "
                  "CA-E, residuals added directly."},
    )
    neighbor_bridge: str = field(
        default=DESIGN_DEFAULTS["neighbor_bridge"],
        metadata={"help": f"One of {NEIGHBOR_BRIDGES}. linear: each neighbour becomes its own projected tokens (the LM "
                  "input grows with the neighbours). perceiver (Flamingo's Perceiver Resampler) / qformer (BLIP-2's "
                  "Q-Former): all of an example's neighbour embeddings become --bridge_num_latents tokens (sa_e: in "
                  "the sequence; ca_e: the cross-attention keys and values; sa_te: its images only)."},
    )
    bridge_num_latents: int = field(default=DESIGN_DEFAULTS["bridge_num_latents"],
                                    metadata={"help": "LM tokens a perceiver / qformer bridge gives per example."})
    bridge_num_layers: int = field(default=DESIGN_DEFAULTS["bridge_num_layers"],
                                   metadata={"help": "Perceiver blocks / Q-Former layers of the bridge."})
    alpha_initializer: str = field(
        default=DESIGN_DEFAULTS["alpha_initializer"],
        metadata={"help": f"ca_e: initial gate parameters, IDEFICS' option, one of {ALPHA_INITIALIZERS}: zeros "
                  "(closed, the model starts as OPT), ones (open: tanh(1) = 0.76) or normal "
                  "(N(0, --alphas_initializer_range))."},
    )
    alphas_initializer_range: float = field(
        default=DESIGN_DEFAULTS["alphas_initializer_range"],
        metadata={"help": "ca_e: standard deviation of the gates' start with --alpha_initializer normal."},
    )
    gate_learning_rate: float | None = field(
        default=None,
        metadata={"help": "ca_e: learning rate of the cross-attention gates (their own optimizer group, no weight "
                  "decay, same schedule). Default: --learning_rate."},
    )
    lpe_k: int = field(default=DESIGN_DEFAULTS["lpe_k"], metadata={"help": "Laplacian position encoding: number of eigenvectors."})
    graph_target_feature: str = field(
        default=DESIGN_DEFAULTS["graph_target_feature"],
        metadata={"help": f"One of {GRAPH_TARGET_FEATURES}. distance: laplacian / gnn also get each neighbour's hops "
                  "from the target section in the page's tree (the target is otherwise contracted out of the graph, "
                  "so its child cannot be told from its other neighbours)."},
    )
    gnn_type: str = field(default=DESIGN_DEFAULTS["gnn_type"], metadata={"help": "GNN position encoding: layer type."})
    gnn_num_layers: int = field(default=DESIGN_DEFAULTS["gnn_num_layers"], metadata={"help": "GNN position encoding: number of layers."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (--tuning lora)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (--tuning lora)."})
    num_virtual_tokens: int = field(default=20, metadata={"help": "Virtual tokens of --tuning prefix / prompt."})
    first_stage_steps: int = field(
        default=0,
        metadata={"help": "Steps of an optional first stage that trains only the neighbour projectors and position "
                  "encoding (everything else frozen) before the main stage."},
    )
    neighbor_encoder_name: str = field(default="ViT-B-32", metadata={"help": "open_clip model of the frozen encoders."})
    neighbor_encoder_pretrained: str | None = field(
        default="openai", metadata={"help": "open_clip pretrained tag or local checkpoint; 'none' for random init."}
    )
    neighbor_encoder_config: str | None = field(
        default=None, metadata={"help": "JSON file with a full open_clip model config (custom / tiny encoders)."}
    )
    text_neighbor_encoder: str | None = field(
        default=None,
        metadata={"help": "Hugging Face text model (hub id or local folder: BERT, RoBERTa, sentence-transformers) "
                  "that encodes text neighbours instead of open_clip's 77-token text tower, frozen; images stay with "
                  "open_clip. Used by sa_e / ca_e; ignored with a warning where no text neighbour is an embedding "
                  "(sa_te writes neighbour texts as LM tokens; section_only has none)."},
    )
    text_neighbor_pooling: str | None = field(
        default=None,
        metadata={"help": f"With --text_neighbor_encoder, one of {TEXT_NEIGHBOR_POOLINGS}: first token's state, mean "
                  "over real tokens (sentence-transformers), or the model's pooler (BERT / RoBERTa); L2-normalised. "
                  "Default: a sentence-transformers model's own Pooling module, else mean."},
    )
    text_neighbor_max_length: int | None = field(
        default=None,
        metadata={"help": "With --text_neighbor_encoder: tokens read per text neighbour (truncated). Default: a "
                  "sentence-transformers model's max_seq_length (its sentence_bert_config.json), else 512."},
    )
    embedding_cache_dir: str | None = field(
        default=None, metadata={"help": "Frozen-encoder embedding cache; built (or resumed) when incomplete."}
    )
    image_dir: str | None = field(default=None, metadata={"help": "Folder of the page images (by URL file name)."})
    allow_missing_images: bool = field(
        default=False,
        metadata={"help": "The images are absent on purpose: an --image_dir that resolves none of the image references "
                  "of the checked examples is accepted (their slots are masked) instead of an error."},
    )


@dataclass
class DataTrainingArguments:
    train_files: str | None = field(
        default=None,
        metadata={"help": "The pages: the Arrow data set folder written by `python -m processing.data.wikiweb2m` "
                  "(converted once), or WikiWeb2M TFRecord file(s) / glob."},
    )
    data_cache_dir: str | None = field(
        default=None,
        metadata={"help": "With TFRecord --train_files: keep their Arrow table in this folder (reused while the files "
                  "are unchanged). By default they are read into memory and nothing is written outside --output_dir; "
                  "a large corpus is better converted once with `python -m processing.data.wikiweb2m`."},
    )
    use_study_split: bool = field(
        default=False, metadata={"help": "The original study's page split instead of the official `split` field."}
    )
    token_cache_file: str | None = field(
        default=None,
        metadata={"help": "Token ids of every text (one memory-mapped file): read when it exists (only texts it lacks are tokenised), "
                  "then written back. Refused when it belongs to another tokenizer."},
    )
    graph_cache_size: int | None = field(
        default=1024,
        metadata={"help": "Page graphs kept in memory per split (LRU); the rest are rebuilt from the rows when met "
                  "again (~1 ms each). Small by default: a shuffled epoch over WikiWeb2M rarely meets a page twice."},
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenising the texts the token cache lacks (first start)."})
    skip_corrupt: bool = field(
        default=False,
        metadata={"help": "TFRecords: skip corrupt records (CRC / framing / schema errors) with a warning instead of "
                  "stopping."},
    )
    text_errors: str = field(
        default="strict",
        metadata={"help": "TFRecords: how undecodable UTF-8 text is handled: 'strict' (stop, naming the record) or "
                  "'replace' (U+FFFD)."},
    )
    data_report_examples: int = field(
        default=1000,
        metadata={"help": "Examples per split built at startup for the data report (data_report.json): truncation, "
                  "input tokens, real vs masked images, duplicated neighbour texts."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training samples (debugging, quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N validation samples."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Keep only the first N test samples."})
    max_source_length: int = field(default=512, metadata={"help": "Input tokens (prompt, context, neighbour slots); longer inputs are truncated."})
    max_target_length: int = field(default=128, metadata={"help": "Summary tokens; longer targets are truncated."})
    generation_max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Tokens generated per summary at evaluation / prediction. Default: the model's "
                  "generation_config.json (an exported model records the run's), else 64."})
    no_repeat_ngram_size: int | None = field(
        default=None,
        metadata={"help": "At evaluation / prediction, no n-gram of this size is generated twice (transformers' "
                  "`no_repeat_ngram_size`). Default: the model's generation_config.json, else off."})
    metrics_style: str = field(
        default="mmgl",
        metadata={"help": "'mmgl': sacrebleu BLEU (13a), rouge_score ROUGE-L with stemming, pycocoevalcap CIDEr. "
                  "'original': the original MMGL code's scoring (predictions cut at the first '.', torchmetrics-style "
                  "BLEU and ROUGE without stemming) and its teacher-forced validation score as separate metrics. "
                  "Every metrics file records which."})
    recipe: str | None = field(default=None, metadata={
        "help": "'paper': lr 1e-4, 10k steps, global batch 125 (gradient accumulation derived from "
                "--per_device_train_batch_size and the process count), max_source_length 1024 for sa_te and 512 "
                "otherwise; arguments given explicitly are kept."})


def validate_arguments(model_args, mmgl_args, data_args, training_args):
    """Fails before any work on unknown choices and incompatible combinations, naming the arguments."""
    for name, choices in (("context", CONTEXTS), ("neighbor_encoding", NEIGHBOR_ENCODINGS),
                          ("position_encoding", POSITION_ENCODINGS), ("tuning", TUNINGS),
                          ("graph_target_feature", GRAPH_TARGET_FEATURES), ("alpha_initializer", ALPHA_INITIALIZERS)):
        if getattr(mmgl_args, name) not in choices:
            raise ValueError(f"--{name} must be one of {choices}, got {getattr(mmgl_args, name)!r}.")
    check_tuning(mmgl_args.tuning, mmgl_args.neighbor_encoding)
    check_neighbor_bridge(mmgl_args.neighbor_bridge, mmgl_args.neighbor_encoding, mmgl_args.context)
    for name in ("bridge_num_latents", "bridge_num_layers"):
        if getattr(mmgl_args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(mmgl_args, name)}.")
    # A sentence-transformers text encoder reads as many tokens and pools as its own config says (unless given).
    mmgl_args.text_neighbor_pooling, mmgl_args.text_neighbor_max_length, notes = resolve_text_encoder_settings(
        mmgl_args.text_neighbor_encoder, mmgl_args.text_neighbor_pooling, mmgl_args.text_neighbor_max_length)
    for note in notes:
        logger.warning(note)
    if mmgl_args.text_neighbor_pooling not in TEXT_NEIGHBOR_POOLINGS:
        raise ValueError(f"--text_neighbor_pooling must be one of {TEXT_NEIGHBOR_POOLINGS}, got "
                         f"{mmgl_args.text_neighbor_pooling!r}.")
    try:
        check_text_neighbor_encoder(mmgl_args.neighbor_encoding, mmgl_args.context, mmgl_args.text_neighbor_encoder)
    except ValueError as err:
        # A study passes one --text_neighbor_encoder to every cell: where it cannot apply the model does without
        # it, loudly, and its config records none; the embedding cache still records it (`cache_text_encoder`),
        # so designs with and without text neighbours share one cache.
        logger.warning(f"--text_neighbor_encoder ignored by the model: {err}; the embedding cache records it.")
        mmgl_args.cache_text_encoder, mmgl_args.text_neighbor_encoder = mmgl_args.text_neighbor_encoder, None
    has_slots = has_neighbor_slots(mmgl_args.neighbor_encoding, mmgl_args.context)
    if mmgl_args.position_encoding != "none" and not has_slots:
        raise ValueError(
            f"--position_encoding {mmgl_args.position_encoding} needs neighbours given as embeddings, but "
            f"--context {mmgl_args.context} with --neighbor_encoding {mmgl_args.neighbor_encoding} has none."
        )
    if mmgl_args.first_stage_steps < 0:
        raise ValueError(f"--first_stage_steps must be >= 0, got {mmgl_args.first_stage_steps}.")
    if mmgl_args.graph_target_feature != "none" and mmgl_args.position_encoding not in ("laplacian", "gnn"):
        raise ValueError(f"--graph_target_feature {mmgl_args.graph_target_feature} feeds --position_encoding laplacian "
                         f"or gnn, got --position_encoding {mmgl_args.position_encoding}.")
    if mmgl_args.alpha_initializer == "normal" and not mmgl_args.alphas_initializer_range > 0:
        raise ValueError("--alpha_initializer normal needs --alphas_initializer_range > 0, got "
                         f"{mmgl_args.alphas_initializer_range}.")
    if mmgl_args.gate_learning_rate is not None and not mmgl_args.gate_learning_rate > 0:
        raise ValueError(f"--gate_learning_rate must be > 0, got {mmgl_args.gate_learning_rate}.")
    if mmgl_args.first_stage_steps and not has_slots:
        raise ValueError(
            f"--first_stage_steps trains the neighbour projectors, but --context {mmgl_args.context} with "
            f"--neighbor_encoding {mmgl_args.neighbor_encoding} has no neighbours given as embeddings."
        )
    if model_args.model_name_or_path is None and model_args.config_overrides is None:
        raise ValueError("Give --model_name_or_path (OPT or MMGL checkpoint) or --config_overrides (from scratch).")
    if (training_args.do_train or training_args.do_eval or training_args.do_predict) and not data_args.train_files:
        raise ValueError("--train_files is required (WikiWeb2M TFRecord file or glob).")
    for name, path in (("--resume_from_checkpoint", training_args.resume_from_checkpoint),
                       ("--image_dir", mmgl_args.image_dir)):
        if path is not None and not os.path.isdir(path):
            raise FileNotFoundError(f"{name} {path}: no such directory.")
    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is not None and not os.path.isfile(os.path.join(checkpoint, "trainer_state.json")):
        # The Trainer writes trainer_state.json last: without it the save was interrupted.
        raise FileNotFoundError(
            f"--resume_from_checkpoint {checkpoint} is incomplete (no trainer_state.json; was the run stopped while "
            "saving it?). Resume from the previous checkpoint, which a crash during this save leaves intact."
        )
    if checkpoint is not None:  # damaged files: one line naming the file, before any work
        read_json(os.path.join(checkpoint, "trainer_state.json"), dict,
                  "the Trainer's state (a JSON object); the checkpoint is damaged: resume from another one")
        check_checkpoint(checkpoint, "the checkpoint to resume")
    if data_args.text_errors not in ("strict", "replace"):
        raise ValueError(f"--text_errors must be 'strict' or 'replace', got {data_args.text_errors!r}.")
    if data_args.metrics_style not in METRICS_STYLES:
        raise ValueError(f"--metrics_style must be one of {METRICS_STYLES}, got {data_args.metrics_style!r}.")
    path = model_args.model_name_or_path
    # A hub id has at most one "/": anything absolute, relative-looking or deeper must be a local folder.
    if path and (os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1):
        if not os.path.isdir(os.path.expanduser(path)):
            raise FileNotFoundError(f"--model_name_or_path {path}: no such directory.")
    if path and os.path.isdir(os.path.expanduser(path)):
        check_checkpoint(os.path.expanduser(path), f"--model_name_or_path {path}")
    check_ranges(mmgl_args, data_args, training_args)
    if data_args.recipe not in (None, "paper"):
        raise ValueError(f"--recipe must be 'paper' or unset, got {data_args.recipe!r}.")
    if mmgl_args.embedding_cache_dir is None and has_slots and mmgl_args.neighbor_encoder_pretrained is None:
        logger.warning("No --embedding_cache_dir: neighbours are encoded at every step by the in-model encoder.")


def check_ranges(mmgl_args, data_args, training_args) -> None:
    """Counts, sizes and limits out of range are refused before any work, naming the flag."""
    at_least = [
        (data_args, "max_train_samples", 0), (data_args, "max_eval_samples", 0), (data_args, "max_predict_samples", 0),
        (data_args, "preprocessing_num_workers", 1), (data_args, "graph_cache_size", 0),
        (data_args, "data_report_examples", 0), (data_args, "max_source_length", 1), (data_args, "max_target_length", 1),
        (data_args, "generation_max_new_tokens", 1), (training_args, "generation_num_beams", 1),
        (mmgl_args, "max_text_neighbors", 0), (mmgl_args, "max_image_neighbors", 0),
        (mmgl_args, "text_neighbor_num_tokens", 1), (mmgl_args, "image_neighbor_num_tokens", 1),
        (mmgl_args, "cross_attention_interval", 1), (mmgl_args, "lpe_k", 1), (mmgl_args, "gnn_num_layers", 1),
        (mmgl_args, "text_neighbor_max_length", 1),
        (training_args, "per_device_train_batch_size", 1), (training_args, "per_device_eval_batch_size", 1),
        (training_args, "gradient_accumulation_steps", 1),
    ]
    for args, name, low in at_least:
        value = getattr(args, name, None)  # (plain TrainingArguments have no generation_num_beams)
        if value is not None and value < low:
            raise ValueError(f"--{name} must be >= {low}, got {value}.")
    if getattr(training_args, "generation_max_length", None) is not None:
        # Seq2SeqTrainer would pass it as `max_length`, which for a decoder-only LM counts the prompt too, and the
        # model's max_new_tokens would override it anyway: refused rather than silently ignored.
        raise ValueError(f"--generation_max_length {training_args.generation_max_length} is not used by this "
                         "decoder-only model (it would count the source tokens too); give --generation_max_new_tokens.")


def parse_overrides(overrides: str) -> dict:
    """'a=1,b=0.5,c=relu' -> {'a': 1, 'b': 0.5, 'c': 'relu'}."""
    values = {}
    for item in filter(None, (part.strip() for part in overrides.split(","))):
        if "=" not in item:
            raise ValueError(f"--config_overrides item {item!r} is not key=value.")
        key, value = item.split("=", 1)
        try:
            values[key] = json.loads(value)
        except json.JSONDecodeError:
            values[key] = value
    return values


def mmgl_config_kwargs(mmgl_args, encoder_dim: int, neighbor_token_id: int, text_dim: int | None = None) -> dict:
    """The MMGL switches of the model; `text_dim`: the text embeddings' width when it is not `encoder_dim`
    (a Hugging Face text neighbour encoder's hidden size)."""
    mode = neighbor_mode(mmgl_args.neighbor_encoding, mmgl_args.context)  # "none": plain OPT
    return dict(
        neighbor_mode=mode,
        neighbor_token_id=neighbor_token_id,
        position_encoding=mmgl_args.position_encoding if mode != "none" else "none",
        text_neighbor_num_tokens=mmgl_args.text_neighbor_num_tokens,
        image_neighbor_num_tokens=mmgl_args.image_neighbor_num_tokens,
        text_neighbor_embed_dim=text_dim or encoder_dim,
        image_neighbor_embed_dim=encoder_dim,
        text_neighbor_encoder=mmgl_args.text_neighbor_encoder,
        text_neighbor_pooling=mmgl_args.text_neighbor_pooling,
        text_neighbor_max_length=mmgl_args.text_neighbor_max_length,
        max_text_neighbors=mmgl_args.max_text_neighbors,
        max_image_neighbors=mmgl_args.max_image_neighbors,
        cross_attention_interval=mmgl_args.cross_attention_interval,
        cross_attention_gating=mmgl_args.cross_attention_gating,
        alpha_initializer=mmgl_args.alpha_initializer,
        alphas_initializer_range=mmgl_args.alphas_initializer_range,
        lpe_k=mmgl_args.lpe_k,
        graph_target_feature=mmgl_args.graph_target_feature if mode != "none" else "none",
        gnn_type=mmgl_args.gnn_type,
        gnn_num_layers=mmgl_args.gnn_num_layers,
        neighbor_bridge=mmgl_args.neighbor_bridge if mode != "none" else "linear",
        bridge_num_latents=mmgl_args.bridge_num_latents,
        bridge_num_layers=mmgl_args.bridge_num_layers,
    )


def encoder_settings(mmgl_args) -> tuple[str, str | None, dict | None]:
    """(open_clip name, pretrained tag / checkpoint or None for the seeded random init, custom config or None)."""
    pretrained = None if mmgl_args.neighbor_encoder_pretrained in (None, "", "none") else mmgl_args.neighbor_encoder_pretrained
    config = None
    if mmgl_args.neighbor_encoder_config:
        path = Path(mmgl_args.neighbor_encoder_config)
        if not path.exists():
            raise FileNotFoundError(f"--neighbor_encoder_config {path} does not exist.")
        config = read_json(path, dict, "a full open_clip model config (a JSON object)")
    try:
        open_clip_config(mmgl_args.neighbor_encoder_name, config)
    except ValueError as err:
        raise ValueError(f"--neighbor_encoder_name / --neighbor_encoder_config: {err}") from None
    return mmgl_args.neighbor_encoder_name, pretrained, config


def model_position_limit(model_args) -> int:
    """`max_position_embeddings` of the model to be trained, read before any work (only config.json; a peft
    checkpoint's from its base model)."""
    if model_args.model_name_or_path:
        from transformers import AutoConfig

        path = adapter_base_path(model_args.model_name_or_path) if os.path.isdir(
            os.path.expanduser(model_args.model_name_or_path)) else None
        config = AutoConfig.from_pretrained(path or model_args.model_name_or_path, trust_remote_code=False)
        return int(config.max_position_embeddings)
    return int(OPTConfig(**parse_overrides(model_args.config_overrides)).max_position_embeddings)


def model_virtual_tokens(model_args) -> int:
    """Virtual tokens a saved model applies itself (an exported prefix / prompt model), 0 otherwise."""
    path = model_args.model_name_or_path
    config_file = Path(os.path.expanduser(path)) / "config.json" if path else None
    if config_file is None or not config_file.is_file():
        return 0
    config = json.loads(config_file.read_text())
    return int(config.get("num_virtual_tokens", 0)) if config.get("virtual_tokens", "none") != "none" else 0


def check_sequence_fits(model_args, mmgl_args, data_args) -> None:
    """`max_source_length + max_target_length` (+ virtual tokens of prefix / prompt tuning) must fit the model's
    positions, else training would fail mid-way with an index error."""
    limit = model_position_limit(model_args)
    virtual = mmgl_args.num_virtual_tokens if mmgl_args.tuning in ("prefix", "prompt") else 0
    virtual = max(virtual, model_virtual_tokens(model_args))
    needed = data_args.max_source_length + data_args.max_target_length + virtual
    if needed > limit:
        extra = f" + {virtual} virtual tokens (--tuning {mmgl_args.tuning})" if virtual else ""
        raise ValueError(
            f"--max_source_length {data_args.max_source_length} + --max_target_length {data_args.max_target_length}{extra} "
            f"= {needed} tokens, but the model has max_position_embeddings={limit}; lower the lengths or use a model "
            "with more positions."
        )


class SummarizationDataset(torch.utils.data.Dataset):
    """Examples built on access from an O(1) sample index; token ids come from the processor's token cache."""

    def __init__(self, index: PageGraphIndex, processor, embedding_cache, image_dir, for_generation=False):
        self.index, self.processor = index, processor
        self.embedding_cache, self.image_dir, self.for_generation = embedding_cache, image_dir, for_generation

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        graph, section = self.index[i]
        example = self.processor.build_example(
            graph, section, embedding_cache=self.embedding_cache, image_dir=self.image_dir,
            for_generation=self.for_generation,
        )
        if not self.for_generation:  # seeds the example's own randomness (see MMGLSummarizationTrainer)
            example[EXAMPLE_INDEX] = torch.tensor(i)
        return example

    def reference(self, i) -> str:
        graph, section = self.index[i]
        return graph.summaries[section]


class MMGLSummarizationTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` for a decoder-only summarizer: the loss as usual, plus generation metrics on left-padded
    prompts, in any process layout (one process, DDP, FSDP, DeepSpeed).

    - Training: each example's `laplacian_sign_seeds` come from the example and the step
      (`processing.training.distributed.example_step_seeds`), so data parallel training flips as one process does.
    - Generation goes through the Trainer's prediction loop and `Seq2SeqTrainer.prediction_step`: every rank
      generates its share of the batches (`synced_gpus` under FSDP / ZeRO-3), the results are gathered in input
      order and the copies the distributed sampler adds to even out the last batch are dropped
      (`accelerator.gather_for_metrics`); the Trainer's progress bar shows it on the main process.
    - The final save (`save_model()` without a folder, which `push_to_hub` also calls) gathers the full state dict
      as the Trainer's own save path does and writes the complete Hub folder once (`save_hub_folder`), from a fresh
      copy of the model carrying those weights; `create_model_card` writes the MMGL card, so `--push_to_hub` uploads
      exactly the export. Checkpoints save as usual."""

    def __init__(self, *args, generation_datasets=None, generation_collator=None, generation_kwargs=None,
                 export_neighbor_encoder=None, model_card=None, metrics_style="mmgl", gate_learning_rate=None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.gate_learning_rate = gate_learning_rate
        self.metrics_style = metrics_style
        self.generation_datasets = generation_datasets or {}
        self.generation_collator = generation_collator
        self.generation_kwargs = generation_kwargs or {}
        self.export_neighbor_encoder = export_neighbor_encoder
        self.model_card = model_card
        self.hub_folder_written = False
        self.generating = False
        check_export_gatherable(self)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        example_index = inputs.pop(EXAMPLE_INDEX, None)
        if example_index is not None:
            inputs["laplacian_sign_seeds"] = example_step_seeds(self.args.seed, self.state.global_step, example_index)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.gate_learning_rate is not None:  # the Trainer's groups, the gates moved into one of their own
            separate_gate_group(self.optimizer, self.model if model is None else model, self.gate_learning_rate)
        return optimizer

    def log(self, logs, start_time=None):
        if "loss" in logs:  # training logs: how far each cross-attention block is open (TensorBoard)
            logs.update(gate_values(self.model))
        super().log(logs, start_time)

    # ---------------------------------------------------------------------------------------------- saving

    def save_model(self, output_dir=None, _internal_call=False):
        if output_dir is not None and Path(output_dir).resolve() != Path(self.args.output_dir).resolve():
            return super().save_model(output_dir, _internal_call)
        # Written once: a second export would repeat the gathering and the writing for nothing.
        if not self.hub_folder_written:
            state_dict = gathered_state_dict(self)  # every process: a collective under FSDP / ZeRO-3
            if self.args.should_save:
                save_hub_folder(self.accelerator.unwrap_model(self.model), self.processing_class, self.args.output_dir,
                                self.export_neighbor_encoder, state_dict=state_dict)
                torch.save(self.args, Path(self.args.output_dir) / "training_args.bin")
            self.hub_folder_written = True
        self.accelerator.wait_for_everyone()

    def create_model_card(self, *args, **kwargs):
        if self.args.should_save and self.model_card is not None:
            self.model_card()

    # ---------------------------------------------------------------------------------------------- evaluation

    def get_eval_dataloader(self, eval_dataset=None):
        with every_sample(self.args):
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with every_sample(self.args):
            return super().get_test_dataloader(test_dataset)

    def evaluation_loop(self, *args, **kwargs):
        # `Seq2SeqTrainer` gathers with `accelerator.gather`, which keeps the copies of the first samples that the
        # distributed sampler adds to even out the last batch; `gather_for_metrics` drops them, so every sample
        # counts once, in order.
        self.gather_function = self.accelerator.gather_for_metrics
        return super().evaluation_loop(*args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        if not self.generating:  # the teacher-forced loss pass: the loss only, no (B, L, vocab) logits gathered,
            # unless --metrics_style original scores them (reduced to their argmax by preprocess_logits_for_metrics)
            return Trainer.prediction_step(self, model, inputs, self.compute_metrics is None, ignore_keys=ignore_keys)
        prompt_length = inputs["input_ids"].shape[1]
        # `Seq2SeqTrainer.prediction_step` fills the model's generation config with transformers' defaults after
        # generating (max_length=20, ...): every later batch would warn that max_length and max_new_tokens are both
        # set, and the export would record those defaults as the model's decoding settings. Put it back as it was.
        generation_config = self.model.generation_config
        settings = copy.deepcopy(vars(generation_config))
        try:
            _, tokens, _ = super().prediction_step(model, inputs, False, ignore_keys=ignore_keys, **gen_kwargs)
        finally:
            vars(generation_config).clear()
            vars(generation_config).update(settings)
        return None, tokens[:, prompt_length:], None  # `generate(input_ids=...)` returns prompt + new tokens

    def generate_summaries(self, dataset: SummarizationDataset, split: str) -> list[str]:
        """One summary per example of `dataset`, in its order, generated on every rank (on all ranks)."""
        collator, self.data_collator = self.data_collator, self.generation_collator
        self.generating = True
        try:
            output = self.predict(dataset, metric_key_prefix=split, **self.generation_kwargs)
        finally:
            self.data_collator, self.generating = collator, False
        tokens = output.predictions
        if len(tokens) != len(dataset):
            raise RuntimeError(f"generated {len(tokens)} summaries for the {len(dataset)} {split} samples")
        tokens = np.where(tokens == -100, self.processing_class.pad_token_id, tokens)  # the loop's padding
        texts = self.processing_class.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        return [text.strip() for text in texts]

    def evaluate_generation(self, split: str) -> dict:
        from accelerate.utils import broadcast_object_list

        dataset = self.generation_datasets[split]
        predictions = self.generate_summaries(dataset, split)
        references = [dataset.reference(i) for i in range(len(dataset))]
        metrics = [None]
        if self.is_world_process_zero():  # scored once, the numbers shared
            metrics = [{f"{split}_{k}": v for k, v in score(predictions, references, self.metrics_style).items()}]
            path = Path(self.args.output_dir) / f"{split}_predictions.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w") as handle:
                for i, (prediction, reference) in enumerate(zip(predictions, references)):
                    page, section = dataset.index.samples[i]
                    graph, _ = dataset.index[i]
                    url = graph.page_id if graph.page_id.startswith(("http://", "https://")) else ""
                    handle.write(json.dumps({"page": page, "section": section, "page_url": url,
                                             "page_title": graph.title, "section_title": graph.section_title(section),
                                             "prediction": prediction, "reference": reference}) + "\n")
        return broadcast_object_list(metrics)[0]

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval", **gen_kwargs):
        """Loss metrics, plus the generation metrics of the eval split, logged (TensorBoard) at each evaluation."""
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix, **gen_kwargs)
        if (eval_dataset is None and metric_key_prefix == "eval" and "eval" in self.generation_datasets
                and not self.args.prediction_loss_only):
            generation = self.evaluate_generation("eval")
            self.log(generation)
            metrics.update(generation)
        return metrics


@contextmanager
def every_sample(args):
    """`--dataloader_drop_last` is for training (equal global batches); evaluation and prediction see every sample."""
    drop_last, args.dataloader_drop_last = args.dataloader_drop_last, False
    try:
        yield
    finally:
        args.dataloader_drop_last = drop_last


def build_embedding_cache(processor, indices, mmgl_args, encoder: MMGLNeighborEncoder, state, pages=None,
                          samples: str = "all", progress: bool = True):
    """Runs the frozen encoder once over every neighbour of every split (resumes an interrupted run): exactly what
    the processor will ask for (the one neighbour collector), encoded by `encoder` (the one wrapper). When the
    cache records that it holds every input of this page table, its samples (`samples`, or all of them) and this
    design (`coverage_key`), nothing is collected: no page graph is built at startup."""
    from processing.data.build_embedding_cache import build_embedding_cache as build
    from processing.data.build_embedding_cache import coverage_key, open_covered_cache, streamed_neighbor_inputs

    table = table_fingerprint(pages) if pages is not None else None
    design = (processor.context, processor.neighbor_encoding, processor.max_text_neighbors,
              processor.max_image_neighbors, mmgl_args.image_dir)
    records = [coverage_key(table, which, *design) for which in dict.fromkeys(("all", samples))]
    cache = open_covered_cache(mmgl_args.embedding_cache_dir, records, encoder)
    if cache is not None:
        return cache
    texts, images, digests = streamed_neighbor_inputs(
        iter_processor_neighbor_inputs(processor, index, image_dir=mmgl_args.image_dir) for index in indices)
    return build(mmgl_args.embedding_cache_dir, texts=texts, image_paths=images, encoder=encoder,
                 image_sha256=digests, state=state, covers=records[-1:], progress=progress)


def pages_are_generated(indices: dict) -> bool:
    """Whether the run reads pages of the bundled generators (their URLs say so) rather than WikiWeb2M."""
    for index in indices.values():
        if len(index):
            graph, _ = index[0]
            return is_generated_page(graph.page_id)
    return False


def quiet_open_clip(record: logging.LogRecord) -> bool:
    """Drops open_clip's INFO lines (it logs to the root logger: "Loaded ViT-B-32 model config." and the like)."""
    return not (record.name == "root" and record.levelno < logging.WARNING and "open_clip" in record.pathname)


def check_push_to_hub(training_args) -> None:
    """`--push_to_hub` needs a repository, the Hub and a token: checked before any work (the Trainer would find out
    only when it is built, after the preprocessing)."""
    if not training_args.push_to_hub:
        return
    from huggingface_hub import get_token, is_offline_mode

    if not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id: the Hub repository to create or update (e.g. "
                         "your-name/mmgl-opt-125m).")
    if is_offline_mode():
        raise ValueError("--push_to_hub, but the Hub is offline here (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE is set): "
                         "unset it or drop --push_to_hub (the export in --output_dir can be uploaded later).")
    if not (training_args.hub_token or get_token()):
        raise ValueError("--push_to_hub needs a Hugging Face token: run `hf auth login`, set HF_TOKEN or pass "
                         "--hub_token.")


def check_generation_arguments(training_args) -> None:
    """Evaluation and prediction always generate (the metrics read text): `--predict_with_generate` is implied, and
    `--prediction_loss_only` leaves `--do_predict` nothing to write."""
    if training_args.prediction_loss_only and training_args.do_predict:
        raise ValueError("--prediction_loss_only with --do_predict: prediction generates summaries; drop one of them.")
    training_args.predict_with_generate = True


def configure_logging(training_args) -> None:
    """One log: INFO, the data report and progress bars on the main process (of each node with
    `--log_on_each_node`, transformers' default), `--log_level_replica` (default warning) on the others;
    `--disable_tqdm` hides every bar."""
    import datasets

    if training_args.should_log and training_args.log_level == "passive":
        level = logging.INFO
    else:
        level = training_args.get_process_log_level()
    for name in (logger.name, "processing", "modeling_mmgl"):
        logging.getLogger(name).setLevel(level)
    logging.getLogger("absl").setLevel(max(level, logging.WARNING))  # rouge_score: "Using default tokenizer." per call
    transformers.utils.logging.set_verbosity(max(level, logging.WARNING))  # the Trainer's INFO lines stay quiet
    datasets.utils.logging.set_verbosity(max(level, logging.WARNING))
    if show_progress(training_args):
        datasets.enable_progress_bars()
        transformers.utils.logging.enable_progress_bar()
    else:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()


def show_progress(training_args) -> bool:
    """Progress bars of the data preparation: on the main process, unless `--disable_tqdm`."""
    return training_args.should_log and not training_args.disable_tqdm


def warn_uneven_last_batch(num_samples: int, training_args) -> None:
    """Data parallel: when the samples do not fill the last global batch of an epoch, accelerate evens it out (every
    process takes a full batch, topped up with the epoch's first samples) where one process takes a short batch, so
    that step differs from one process's. `--dataloader_drop_last` drops the remainder in both layouts."""
    global_batch = training_args.per_device_train_batch_size * training_args.world_size
    remainder = num_samples % global_batch
    if training_args.world_size > 1 and not training_args.dataloader_drop_last and remainder:
        logger.warning(
            f"{num_samples} training samples leave {remainder} in the last global batch of {global_batch} "
            f"({training_args.world_size} processes x {training_args.per_device_train_batch_size}): accelerate tops it "
            f"up with {global_batch - remainder} samples from the start of the epoch, where one process would take a "
            "short batch. --dataloader_drop_last drops the remainder instead (as one process then does)."
        )


def main(argv=None):
    check_launch()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        # On a CPU-only machine accelerate's state ignores the launcher unless told it runs on CPU: every process
        # would train alone on all the data. This gives real data parallelism over gloo (read when the
        # TrainingArguments set up their device, so it must be set before parsing).
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    parser = HfArgumentParser((ModelArguments, MMGLArguments, DataTrainingArguments, Seq2SeqTrainingArguments))
    add_debug_argument(parser)  # for --help only: `run_command` takes the flag out before parsing
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, mmgl_args, data_args, training_args = parser.parse_json_file(os.path.abspath(argv[0]))
    else:
        model_args, mmgl_args, data_args, training_args, *_ = parser.parse_args_into_dataclasses(argv)
    if data_args.recipe == "paper":
        recipe = resolve_paper_recipe(training_args.per_device_train_batch_size, training_args.world_size,
                                      mmgl_args.neighbor_encoding, explicit_fields(argv),
                                      training_args.gradient_accumulation_steps)
        for key, value in recipe.training_updates().items():
            setattr(training_args, key, value)
        if recipe.max_source_length is not None:
            data_args.max_source_length = recipe.max_source_length
        if training_args.should_log:
            print("\n".join(recipe.lines))
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(quiet_open_clip)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO,
                        handlers=[handler])
    configure_logging(training_args)
    # An MMGL checkpoint carries its design: taken from it, a contradicting flag refused (before any work).
    design = read_checkpoint_design(model_args.model_name_or_path)
    if design is not None:
        apply_checkpoint_design(design, argv, mmgl_args, data_args,
                                        encoder_config_file=mmgl_args.neighbor_encoder_config)
        logger.info(f"design of {design.path}: " + ", ".join(f"{k}={v!r}" for k, v in design.values.items()))
        free = log_free_settings(argv, data_args, training_args)
        if free:
            logger.info("set for this run (not part of the checkpoint's design): "
                        + ", ".join(f"{k}={v!r}" for k, v in free.items()))
    validate_arguments(model_args, mmgl_args, data_args, training_args)
    # --output_dir is the result (Hub folder + metrics), swapped in as a whole at the end; the Trainer works in
    # --checkpoint_dir (checkpoints, logs while training), never inside it.
    output_dir = training_args.output_dir
    checkpoint_dir = model_args.checkpoint_dir or default_checkpoint_dir(output_dir)
    writes_model = training_args.do_train or model_args.export
    check_output_folders(output_dir, checkpoint_dir, model_args.model_name_or_path, writes_model)
    if design is not None and design.adapter is not None and training_args.do_train:
        raise ValueError(f"--model_name_or_path {design.path} is a {mmgl_args.tuning} adapter checkpoint: continue its "
                         f"training with --resume_from_checkpoint {design.path}, or train on its export.")
    check_push_to_hub(training_args)
    check_generation_arguments(training_args)
    check_sequence_fits(model_args, mmgl_args, data_args)
    check_model_design(mmgl_args, num_decoder_layers(
        design.model_path if design is not None else model_args.model_name_or_path,
        parse_overrides(model_args.config_overrides) if model_args.config_overrides else None,
    ), from_scratch=not model_args.model_name_or_path)
    set_seed(training_args.seed)
    if training_args.push_to_hub and not training_args.hub_model_id:
        training_args.hub_model_id = Path(output_dir).name  # the Hub folder's name, not the checkpoint folder's
    training_args.output_dir = checkpoint_dir
    result_folder = ResultsFolder(output_dir, should_save=training_args.should_save)
    logger.info(f"results and export: {output_dir} (written at the end, as a whole); Trainer checkpoints and logs: "
                f"{checkpoint_dir}")

    # Data: one row per page (the converted Arrow data set, or TFRecords read now), O(1) sample index per split.
    pages = open_page_table(data_args.train_files, cache_dir=data_args.data_cache_dir,
                            skip_corrupt=data_args.skip_corrupt, errors=data_args.text_errors)
    splits = {"train": "train", "eval": "val", "predict": "test"}
    limits = {"train": data_args.max_train_samples, "eval": data_args.max_eval_samples,
              "predict": data_args.max_predict_samples}
    indices = {}
    for name, split in splits.items():
        samples = summarization_samples(pages, split=split, use_study_split=data_args.use_study_split)
        used = {"train": training_args.do_train, "eval": training_args.do_eval, "predict": training_args.do_predict}[name]
        if used and not samples:
            raise ValueError(f"the {split!r} split of --train_files {data_args.train_files} has no summarization "
                             f"sample (--do_{name} needs at least one); check the files and their split field.")
        if used and limits[name] == 0:
            raise ValueError(f"--max_{name}_samples 0 leaves none of the {len(samples)} summarization samples of the "
                             f"{split!r} split (--do_{name} needs at least one).")
        if limits[name] is not None:
            samples = samples[: limits[name]]
        indices[name] = PageGraphIndex(pages, samples=samples, graph_cache_size=data_args.graph_cache_size)

    logger.info("samples: " + ", ".join(f"{name} {len(index)}" for name, index in indices.items()))
    coverage = epoch_coverage_line(len(indices["train"]), training_args.per_device_train_batch_size,
                                   training_args.gradient_accumulation_steps, training_args.world_size)
    if training_args.do_train and coverage is not None and training_args.should_log:
        print(("recipe paper: " if data_args.recipe == "paper" else "") + coverage)

    # Tokenizer and processor; the processor preprocesses images exactly as the frozen encoder's cache does.
    if design is not None and design.has_processor:
        tokenizer = None  # the checkpoint's own processor (tokenizer with its <neighbor> token, image processor)
    elif model_args.tokenizer_name or model_args.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    else:
        tokenizer = train_bpe_tokenizer(wikiweb2m_texts(pages), model_args.tokenizer_vocab_size)
    if design is not None and design.encoder is not None:
        encoder_name, encoder_pretrained, encoder_config = design.encoder
    else:
        if design is not None:
            logger.warning(f"{design.path} records no frozen encoder: using the --neighbor_encoder_* flags.")
        encoder_name, encoder_pretrained, encoder_config = encoder_settings(mmgl_args)
    encoder_model_config = open_clip_config(encoder_name, encoder_config)
    if tokenizer is None:
        processor = MMGLProcessor.from_pretrained(design.path)
        for name in ("max_source_length", "max_target_length"):
            setattr(processor, name, getattr(data_args, name))
        tokenizer = processor.tokenizer
    else:
        processor = MMGLProcessor(
            image_processor=clip_image_processor(encoder_name, encoder_config), tokenizer=tokenizer,
            context=mmgl_args.context, neighbor_encoding=mmgl_args.neighbor_encoding,
            text_neighbor_num_tokens=mmgl_args.text_neighbor_num_tokens,
            image_neighbor_num_tokens=mmgl_args.image_neighbor_num_tokens,
            max_text_neighbors=mmgl_args.max_text_neighbors, max_image_neighbors=mmgl_args.max_image_neighbors,
            max_source_length=data_args.max_source_length, max_target_length=data_args.max_target_length,
            neighbor_encoder_name=encoder_name,
            neighbor_context_length=encoder_model_config["text_cfg"].get("context_length"),
            lpe_k=mmgl_args.lpe_k if mmgl_args.position_encoding == "laplacian" else None,
            graph_target_feature=mmgl_args.graph_target_feature,
            text_neighbor_encoder=mmgl_args.text_neighbor_encoder,
            text_neighbor_max_length=mmgl_args.text_neighbor_max_length,
            neighbor_bridge=mmgl_args.neighbor_bridge, bridge_num_latents=mmgl_args.bridge_num_latents,
        )
    # Written by the main process, and by each node's local main process that cannot see it (no shared file
    # system); the others read it. open_clip ids only for raw text neighbours (an embedding cache replaces them);
    # nothing per page when the store already covers this table.
    prepare_on_each_node(training_args, data_args.token_cache_file, lambda save: prepare_token_cache(
        processor, pages, data_args.token_cache_file, save=save,
        neighbor_input_ids=processor.has_text_slots and not mmgl_args.embedding_cache_dir,
        num_proc=data_args.preprocessing_num_workers, show_progress=show_progress(training_args),
    ))

    # The frozen encoder (the one wrapper): it fills the embedding cache and is the model's in-model encoder, so
    # cached and raw neighbours give the same embeddings.
    needs_encoder = neighbor_mode(mmgl_args.neighbor_encoding, mmgl_args.context) != "none"
    # A text encoder the model ignores is loaded only to name the embedding cache's encoder (see validate_arguments).
    cache_text_encoder = getattr(mmgl_args, "cache_text_encoder", None) if mmgl_args.embedding_cache_dir else None
    text_encoder = mmgl_args.text_neighbor_encoder or cache_text_encoder
    encoder = MMGLNeighborEncoder.from_settings(
        encoder_name, encoder_pretrained, encoder_config, text_encoder=text_encoder,
        text_pooling=mmgl_args.text_neighbor_pooling, text_max_length=mmgl_args.text_neighbor_max_length,
    ) if needs_encoder else None
    switches = mmgl_config_kwargs(mmgl_args, encoder_model_config["embed_dim"], processor.neighbor_token_id,
                                  text_dim=encoder.text_embed_dim if encoder is not None and mmgl_args.text_neighbor_encoder
                                  else None)
    embedding_cache = None
    if needs_encoder and mmgl_args.embedding_cache_dir:
        embedding_cache = build_embedding_cache(
            processor, indices.values(), mmgl_args, encoder, training_args.distributed_state, pages,
            samples=f"study_split={data_args.use_study_split},limits={list(limits.values())}",
            progress=show_progress(training_args))
        # Named in the config (not built): the Trainer's checkpoints then record which encoder filled the cache.
        switches["embedding_cache_encoder"] = {"name": encoder_name, "pretrained": encoder_pretrained,
                                               "config": encoder_config}
    elif needs_encoder:
        switches.update(neighbor_encoder_name=encoder_name, neighbor_encoder_pretrained=encoder_pretrained,
                        neighbor_encoder_config=encoder_config)

    # Model: an MMGL checkpoint, an OPT checkpoint with MMGL switches, or a config from scratch.
    checkpoint_has_encoder = False
    if model_args.model_name_or_path:
        model_path = design.model_path if design is not None else model_args.model_name_or_path
        base = transformers.AutoConfig.from_pretrained(model_path)
        checkpoint_has_encoder = getattr(base, "neighbor_encoder_name", None) is not None or getattr(
            base, "neighbor_encoder_config", None) is not None
        if design is not None:  # as saved: the in-model encoder and every weight are the checkpoint's
            switches = {k: v for k, v in switches.items() if k not in design.config or k == "neighbor_token_id"}
        config = MMGLConfig.from_pretrained(model_path, **switches)
        model = MMGLForConditionalGeneration.from_pretrained(model_path, config=config)
    else:
        opt_defaults = OPTConfig(**parse_overrides(model_args.config_overrides)).to_dict()
        opt_defaults = {k: v for k, v in opt_defaults.items() if k in OPTConfig.__dataclass_fields__}
        opt_defaults.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        config = MMGLConfig(**opt_defaults, **switches)
        model = MMGLForConditionalGeneration(config)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))  # the added <neighbor> token
    if model.neighbor_encoder is not None and not checkpoint_has_encoder:
        attach_neighbor_encoder(model, encoder)  # exactly the weights the flags name (pretrained or seeded init)
    processor.check_model_config(model.config)
    # The decoding settings are part of the model: saved in its generation_config.json with the metrics they gave.
    model.generation_config = resolve_generation_config(
        model.generation_config, training_args.generation_config, data_args.generation_max_new_tokens,
        training_args.generation_num_beams, data_args.no_repeat_ngram_size, processor.pad_token_id,
        tokenizer.eos_token_id)
    logger.info("decoding: " + ", ".join(f"{k}={v!r}" for k, v in reported_settings(model.generation_config).items()))

    datasets = {name: SummarizationDataset(index, processor, embedding_cache, mmgl_args.image_dir)
                for name, index in indices.items()}
    if training_args.do_train and mmgl_args.first_stage_steps and not training_args.resume_from_checkpoint:
        run_first_stage(model, training_args, datasets["train"], processor.data_collator(), mmgl_args.first_stage_steps,
                        trainer_class=MMGLSummarizationTrainer)

    if design is not None and design.adapter is not None:
        model = load_adapter(model, design.path)  # a peft checkpoint-N: its adapter on its unmerged base
    else:
        adapter_base = None
        if training_args.do_train and mmgl_args.tuning in PEFT_TUNINGS and training_args.save_strategy != "no":
            # The checkpoints' adapters apply to this exact model: saved once beside them.
            adapter_base = save_adapter_base(model, processor, checkpoint_dir,
                                             keep_existing=bool(training_args.resume_from_checkpoint),
                                             should_save=training_args.should_save)
        model = apply_tuning(model, mmgl_args, base_model_name_or_path=adapter_base)
    trainable, total = count_parameters(model)
    if training_args.should_log:
        print(f"trainable parameters: {trainable:,} / total: {total:,}")
    if training_args.do_train:
        warn_uneven_last_batch(len(datasets["train"]), training_args)

    generation_datasets = {
        "eval": SummarizationDataset(indices["eval"], processor, embedding_cache, mmgl_args.image_dir, True),
        "predict": SummarizationDataset(indices["predict"], processor, embedding_cache, mmgl_args.image_dir, True),
    }
    training_args.remove_unused_columns = False  # neighbour tensors are model inputs the signature check would drop
    # The run's own record (design, tuning, data, setup, whole-run loss, resumes), saved with every checkpoint.
    sample_counts = {name: len(index) for name, index in indices.items()}
    record = MMGLRunRecord({**run_arguments(model_args, mmgl_args, data_args, training_args),
                            "base_model": base_model_of(model_args.model_name_or_path), "samples": sample_counts,
                            "generated_data": pages_are_generated(indices)})
    implementation = metrics_implementation(data_args.metrics_style)
    compute_metrics, argmax_logits = teacher_forced_metrics(tokenizer) if data_args.metrics_style == "original" \
        else (None, None)

    def write_card():
        source = design.path if design is not None else model_args.model_name_or_path
        folder = Path(training_args.output_dir)
        if not training_args.do_train and source and (Path(source) / "trainer_state.json").is_file():
            shutil.copy(Path(source) / "trainer_state.json", folder / "trainer_state.json")  # the model's own record
        write_model_card(folder, export_card_inputs(
            folder, Path(output_dir).name, source if not training_args.do_train else None, all_metrics,
            reported_settings(trainer.model.generation_config),
            {"files": data_args.train_files, "study_split": data_args.use_study_split,
             "generated": record.arguments["generated_data"], "samples": sample_counts},
            hub_model_id=training_args.hub_model_id,
            license=model_args.license, metrics_implementation=implementation))

    trainer = MMGLSummarizationTrainer(
        model=model, args=training_args, processing_class=processor,
        train_dataset=datasets["train"] if training_args.do_train else None,
        eval_dataset=datasets["eval"] if training_args.do_eval else None,
        data_collator=processor.data_collator(for_generation=False),
        generation_datasets=generation_datasets,
        generation_collator=processor.data_collator(for_generation=True),
        generation_kwargs=generation_kwargs(model.generation_config),
        export_neighbor_encoder=encoder if embedding_cache is not None else None,
        model_card=write_card, metrics_style=data_args.metrics_style, callbacks=[record],
        gate_learning_rate=mmgl_args.gate_learning_rate,
        compute_metrics=compute_metrics, preprocess_logits_for_metrics=argmax_logits,
    )
    record.trainer = trainer

    # What the model will see: truncation, input lengths, real vs masked images, duplicated neighbour texts
    # (built where it is logged or saved, the same on every process).
    report = {}
    if training_args.should_log or training_args.should_save:
        report = data_report(indices, processor, embedding_cache, mmgl_args.image_dir,
                             max_examples=data_args.data_report_examples)
        for line in report_lines(report):
            logger.info(line)
        checked = [split for name, split in report.items() if name != "design"]
        check_image_coverage(sum(split["real_images"] for split in checked),
                             sum(split["masked_images"] for split in checked), mmgl_args.image_dir,
                             mmgl_args.allow_missing_images)
    if result_folder.path is not None:
        write_data_report(report, result_folder.path)

    all_metrics = {}
    if training_args.do_train:
        started = time.time()
        try:
            result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        except Exception as err:  # a checkpoint save on a full disk: one line naming it, not torch's enforce-fail
            full = checkpoint_disk_full(err, training_args.output_dir, model, started)
            if full is not None:
                raise full from err
            raise
    # From here on the Trainer writes into the staging folder of the result (metrics, predictions, export).
    try:
        training_args.output_dir = result_folder.path or output_dir
        if training_args.do_train:
            train_metrics = {k if k.startswith("train") else f"train_{k}": v for k, v in result.metrics.items()}
            train_metrics["train_samples"] = len(datasets["train"])
            train_metrics.update({f"train_{k}": v for k, v in gate_values(trainer.model).items()})  # final gates
            session_steps = trainer.state.global_step - record.steps_before
            train_metrics["train_loss"] = record.finish(trainer.state.global_step, result.training_loss, session_steps)
            if record.resumes:  # the Trainer's own figure covers the resumed steps only
                train_metrics.update(train_loss_since_resume=result.training_loss,
                                     train_resumed_at_step=record.resumes[-1]["step"])
            trainer.save_metrics("train", train_metrics)  # train_results.json (and all_results.json)
            all_metrics.update(train_metrics)
            record.store(trainer.state)
            trainer.save_state()
        if training_args.do_eval:
            metrics = trainer.evaluate()  # with the generation metrics
            metrics["eval_perplexity"] = math.exp(metrics["eval_loss"]) if metrics["eval_loss"] < 50 else float("inf")
            metrics["eval_samples"] = len(datasets["eval"])
            trainer.log_metrics("eval", metrics)
            trainer.save_metrics("eval", {**metrics, "metrics_implementation": implementation})
            all_metrics.update(metrics)
        if training_args.do_predict:
            metrics = trainer.evaluate_generation("predict")
            metrics["predict_samples"] = len(datasets["predict"])
            trainer.log_metrics("predict", metrics)
            trainer.save_metrics("predict", {**metrics, "metrics_implementation": implementation})
            all_metrics.update(metrics)

        if training_args.should_save:  # all_results.json (the Trainer's) also carries the data report and the sizes
            results = Path(training_args.output_dir) / "all_results.json"
            combined = json.loads(results.read_text()) if results.exists() else {}
            combined.update(data_report=report, trainable_parameters=trainable, total_parameters=total)
            results.write_text(json.dumps(combined, indent=4, sort_keys=True) + "\n")
        if writes_model:  # evaluating a checkpoint does not rewrite it unless asked
            trainer.save_model()  # the Hub folder
            trainer.create_model_card()
        result_folder.take_logs(checkpoint_dir)
        result_folder.finish()
    except Exception as err:  # e.g. safetensors' "os error 28": one line naming the folder, the old result kept
        if not is_disk_full(err):
            raise
        if training_args.should_save:
            remove_if_empty(checkpoint_dir)
        raise DiskFullError(output_dir, checkpoint_bytes(model) if writes_model else None,
                            f"the previous contents of {output_dir} are kept as they were",
                            at_least=writes_model) from err
    training_args.output_dir = output_dir
    if training_args.should_save:
        remove_if_empty(checkpoint_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub()
    return all_metrics


if __name__ == "__main__":
    # One line for bad input (file / field named); --traceback or MMGL_DEBUG=1 for the traceback (--debug is
    # TrainingArguments').
    sys.exit(run_command(lambda argv: (main(argv), 0)[1]))
