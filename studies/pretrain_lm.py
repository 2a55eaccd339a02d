"""Pretrain a tiny OPT as a plain causal language model on WikiWeb2M pages (the controlled study's Table 4 base).

Parameter-efficient tuning adapts a model that already knows the language; tuning a randomly initialised LM
measures nothing. This script trains a byte-level BPE tokenizer (`processing.data.bpe_tokenizer`) and an
`OPTForCausalLM` from a small config on every text of the training pages (descriptions, sections, captions),
and saves an OPT checkpoint with its tokenizer that `run_summarization.py --model_name_or_path` loads.

    python studies/pretrain_lm.py --train_files out/study/controlled/data/wikiweb2m-sample.tfrecord.gz \
        --output_dir out/study/controlled/pretrained_lm --max_steps 600

Resumable in the study's sense: a folder that already holds `pretrain_results.json` is left as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from collections.abc import Sequence

import torch

PRETRAIN_RESULTS = "pretrain_results.json"


class _TextBlocks(torch.utils.data.Dataset):
    """Token ids of many texts concatenated (eos between texts) and cut into blocks of `block_size`."""

    def __init__(self, ids: list[int], block_size: int):
        self.blocks = [ids[i : i + block_size] for i in range(0, len(ids) - block_size + 1, block_size)]

    def __len__(self):
        return len(self.blocks)

    def __getitem__(self, i):
        block = torch.tensor(self.blocks[i])
        return {"input_ids": block, "attention_mask": torch.ones_like(block), "labels": block.clone()}


def pretrain(
    train_files: str,
    output_dir: str,
    config_overrides: dict | None = None,
    vocab_size: int = 1000,
    max_steps: int = 600,
    batch_size: int = 16,
    block_size: int = 128,
    learning_rate: float = 2e-3,
    seed: int = 0,
) -> dict:
    """Train and save the LM; returns the metrics written to `<output_dir>/pretrain_results.json`.

    Args:
        train_files (`str`): WikiWeb2M TFRecord file(s) or glob; only the `train` split is read.
        output_dir (`str`): where the OPT checkpoint and tokenizer go.
        config_overrides (`dict`, *optional*): `OPTConfig` fields (`hidden_size`, `num_hidden_layers`, ...).
        vocab_size (`int`, *optional*, defaults to 1000): BPE vocabulary.
        max_steps (`int`, *optional*, defaults to 600): training steps.
        batch_size (`int`, *optional*, defaults to 16): blocks per step.
        block_size (`int`, *optional*, defaults to 128): tokens per block.
        learning_rate (`float`, *optional*, defaults to 2e-3): AdamW peak learning rate (linear decay).
        seed (`int`, *optional*, defaults to 0): seed of the initialisation and the data order.
    """
    from transformers import OPTConfig, OPTForCausalLM, Trainer, TrainingArguments, set_seed

    from processing.data.bpe_tokenizer import train_bpe_tokenizer, wikiweb2m_texts
    from processing.data.wikiweb2m import load_pages

    set_seed(seed)
    pages = [row for row in load_pages(train_files) if row["split"] == "train"]
    if not pages:
        raise ValueError(f"{train_files}: no page of the 'train' split to pretrain on.")
    texts = [t for t in wikiweb2m_texts(pages) if t and not t.isspace()]
    tokenizer = train_bpe_tokenizer(texts, vocab_size)
    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids += encoded + [tokenizer.eos_token_id]
    dataset = _TextBlocks(ids, block_size)
    config = OPTConfig(**(config_overrides or {}))
    config.vocab_size = len(tokenizer)
    config.pad_token_id, config.bos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.max_position_embeddings = max(config.max_position_embeddings, block_size)
    model = OPTForCausalLM(config)
    args = TrainingArguments(
        output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=batch_size,
        learning_rate=learning_rate, warmup_steps=max(1, max_steps // 20), logging_steps=max(1, max_steps // 10),
        save_strategy="no", report_to="none", seed=seed, use_cpu=not torch.cuda.is_available(),
    )
    result = Trainer(model=model, args=args, train_dataset=dataset).train()
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    metrics = {**result.metrics, "tokens": len(ids), "blocks": len(dataset), "vocab_size": len(tokenizer),
               "parameters": sum(p.numel() for p in model.parameters())}
    (Path(output_dir) / PRETRAIN_RESULTS).write_text(json.dumps(metrics, indent=2))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python studies/pretrain_lm.py", description=__doc__.split("\n")[0])
    parser.add_argument("--train_files", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--config_overrides", default="hidden_size=64,num_hidden_layers=2,ffn_dim=128,"
                        "num_attention_heads=4,max_position_embeddings=512",
                        help="comma-separated OPTConfig key=value pairs")
    parser.add_argument("--vocab_size", type=int, default=1000)
    parser.add_argument("--max_steps", type=int, default=600)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if (Path(args.output_dir) / PRETRAIN_RESULTS).is_file():
        print(f"{args.output_dir}: already pretrained ({PRETRAIN_RESULTS} present), skipped")
        return 0
    overrides = {}
    for item in filter(None, args.config_overrides.split(",")):
        key, _, value = item.partition("=")
        overrides[key.strip()] = json.loads(value) if value.strip().lstrip("-").replace(".", "").isdigit() else value
    metrics = pretrain(args.train_files, args.output_dir, overrides, args.vocab_size, args.max_steps,
                       args.batch_size, args.block_size, args.learning_rate, args.seed)
    print(f"pretrained LM saved to {args.output_dir}: train loss {metrics.get('train_loss', float('nan')):.3f}")
    return 0


__all__ = ["main", "pretrain"]

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root, for `processing`
    sys.exit(main())
