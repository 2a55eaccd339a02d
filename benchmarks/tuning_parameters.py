"""Trainable-parameter counts of every legal (neighbour encoding, tuning) pair for the OPT-125m shape.

Random init from a config (no download): OPT-125m dims, CLIP ViT-B/32 embeddings (width 512), run_summarization's
default MMGL settings, no position encoding, the model trained from an embedding cache (no encoder inside). A second
table gives the same with each neighbour bridge (`--neighbor_bridge perceiver / qformer`, 32 latents, 2 layers) and
the bridge's own parameters.

    python benchmarks/tuning_parameters.py
"""
import copy

from modeling_mmgl import MMGLConfig, MMGLForConditionalGeneration
from processing.design_space import NEIGHBOR_ENCODINGS
from processing.training.tuning import TUNINGS, apply_tuning, count_parameters
from run_summarization import MMGLArguments, mmgl_config_kwargs

OPT_125M = dict(hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12, vocab_size=50272,
                max_position_embeddings=2048, word_embed_proj_dim=768)
CLIP_WIDTH = 512


def arguments(**design) -> MMGLArguments:
    # The text-encoder settings are resolved by run_summarization's argument checks; none is used here.
    return MMGLArguments(text_neighbor_pooling="mean", text_neighbor_max_length=512, **design)


def main():
    print("| encoding | tuning | trainable | total |\n|---|---|---:|---:|")
    for encoding in NEIGHBOR_ENCODINGS:
        args = arguments(neighbor_encoding=encoding)
        model = MMGLForConditionalGeneration(MMGLConfig(**OPT_125M, **mmgl_config_kwargs(args, CLIP_WIDTH, 50271)))
        for tuning in TUNINGS:
            if tuning == "flamingo" and encoding != "ca_e":
                continue
            args.tuning = tuning
            trainable, total = count_parameters(apply_tuning(copy.deepcopy(model), args))
            print(f"| {encoding} | {tuning} | {trainable:,} | {total:,} |")
    print("\n| encoding | bridge | bridge parameters | tuning | trainable | total |\n|---|---|---:|---|---:|---:|")
    for encoding in ("sa_e", "ca_e"):
        for bridge in ("perceiver", "qformer"):
            args = arguments(neighbor_encoding=encoding, neighbor_bridge=bridge)
            model = MMGLForConditionalGeneration(MMGLConfig(**OPT_125M, **mmgl_config_kwargs(args, CLIP_WIDTH, 50271)))
            own = sum(p.numel() for p in model.neighbor_bridge.parameters())
            for tuning in ("full", "lora", "flamingo"):
                if tuning == "flamingo" and encoding != "ca_e":
                    continue
                args.tuning = tuning
                trainable, total = count_parameters(apply_tuning(copy.deepcopy(model), args))
                print(f"| {encoding} | {bridge} | {own:,} | {tuning} | {trainable:,} | {total:,} |")


if __name__ == "__main__":
    main()
