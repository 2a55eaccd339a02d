"""Model overhead of MMGL over plain OPT at OPT-125m's width and depth, measured side by side in one run.

Prints, for self-attention (SA-E) and cross-attention (CA-E) mode over plain OPT:
- training step time (forward + backward + AdamW step) at the same total sequence length (target SA <= 1.10);
- for CA, the overhead its extra gated blocks explain by their matmul FLOPs;
- cached greedy generation tokens/s (target >= 0.9), and for CA the bound its extra blocks' per-token FLOPs set.
CA runs twice: one gated block every 4 layers (the default) and every 6. SA also runs with the Laplacian (LPE) and
GNN position encodings, against SA with the sequence encoding; LPE's eigenvectors are computed once per example by
the processor, so the script also times that per-example cost beside the per-example train step.

Runs are interleaved (OPT, SA, CA, OPT, SA, CA, ...) and the median is reported, so machine noise hits all modes
alike. Usage: `python benchmarks/bench_model.py [--device cuda] [--dtype bfloat16] [--batch_size 2] [--seq_len 256]
[--modes none self_attention self_attention+laplacian]`.

`--bridges` measures the neighbour bridges instead (`MMGLConfig.neighbor_bridge`): SA-E and CA-E with `linear`,
`perceiver` and `qformer` at 16, 64 and 256 neighbours (11:5 texts to images), each against plain OPT on the same
text: train step and cached decoding ratios, and the LM input length (it grows with the neighbours for `linear`
SA-E, and stays at text + `bridge_num_latents` with a bridge). One model is alive at a time (memory), so these runs
are sequential rather than interleaved; OPT is timed before and after each neighbour count to show the drift.
"""

import argparse
import statistics
import time

import torch

from modeling_mmgl import MMGLConfig, MMGLForConditionalGeneration
from processing.laplacian_encoding import slot_laplacian_eigenvectors

OPT_125M = dict(
    vocab_size=50272, hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12,
    max_position_embeddings=2048, dropout=0.0, attention_dropout=0.0,
)
NEIGHBOR_TOKEN = 50271
TEXT_NEIGHBORS, IMAGE_NEIGHBORS, TOKENS_PER_NEIGHBOR, EMBED_DIM = 11, 5, 4, 512  # the paper's budgets


# label -> (neighbor_mode, cross_attention_interval, position_encoding)
MODES = {
    "none": ("none", 4, "none"),
    "self_attention": ("self_attention", 4, "sequence"),
    "cross_attention": ("cross_attention", 4, "sequence"),
    "cross_attention/6": ("cross_attention", 6, "sequence"),
    "self_attention+laplacian": ("self_attention", 4, "laplacian"),
    "self_attention+gnn": ("self_attention", 4, "gnn"),
}
NUM_NODES = TEXT_NEIGHBORS + IMAGE_NEIGHBORS


def slot_graph(generator):
    """A page-like slot graph: a chain of sections with a few extra edges, symmetric, no self loops."""
    adjacency = torch.zeros(NUM_NODES, NUM_NODES)
    for a in range(NUM_NODES - 1):
        adjacency[a, a + 1] = 1
    extra = torch.randint(0, NUM_NODES, (2, NUM_NODES), generator=generator)
    adjacency[extra[0], extra[1]] = 1
    adjacency = torch.maximum(adjacency, adjacency.t())
    adjacency.fill_diagonal_(0)
    return adjacency


def build(label, device, dtype):
    mode, interval, position_encoding = MODES[label]
    config = MMGLConfig(
        **OPT_125M, neighbor_mode=mode, neighbor_token_id=NEIGHBOR_TOKEN if mode != "none" else None,
        position_encoding=position_encoding, cross_attention_interval=interval,
        text_neighbor_embed_dim=EMBED_DIM, image_neighbor_embed_dim=EMBED_DIM,
    )
    model = MMGLForConditionalGeneration(config).to(device=device, dtype=dtype)
    for name, param in model.named_parameters():
        if "alpha_" in name:
            param.data.fill_(0.5)  # open gates: measure the real work, not a skipped branch
    return model


def batch_for(label, batch_size, seq_len, device, dtype, generator):
    """Same total length `seq_len` in every mode; SA spends 64 of it on neighbour placeholders."""
    mode, _, position_encoding = MODES[label]
    input_ids = torch.randint(3, 50000, (batch_size, seq_len), generator=generator)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if mode != "none":
        num_placeholders = (TEXT_NEIGHBORS + IMAGE_NEIGHBORS) * TOKENS_PER_NEIGHBOR
        if mode == "self_attention":
            input_ids[:, 8 : 8 + num_placeholders] = NEIGHBOR_TOKEN
        batch.update(
            text_neighbor_embeds=torch.randn(batch_size, TEXT_NEIGHBORS, EMBED_DIM, generator=generator),
            text_neighbor_mask=torch.ones(batch_size, TEXT_NEIGHBORS, dtype=torch.long),
            image_neighbor_embeds=torch.randn(batch_size, IMAGE_NEIGHBORS, EMBED_DIM, generator=generator),
            image_neighbor_mask=torch.ones(batch_size, IMAGE_NEIGHBORS, dtype=torch.long),
        )
        adjacency = torch.stack([slot_graph(generator) for _ in range(batch_size)])
        batch["neighbor_adjacency"] = adjacency
        if position_encoding == "laplacian":  # as the processor does it: once per example, before batching
            batch["neighbor_laplacian_eigenvectors"] = torch.stack(
                [slot_laplacian_eigenvectors(a, [1] * NUM_NODES, 4) for a in adjacency])
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()}


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step(model, optimizer, batch, device):
    sync(device)
    start = time.perf_counter()
    loss = model(**batch, labels=batch["input_ids"], use_cache=False).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - start


def generation_tokens_per_second(model, batch, new_tokens, device):
    prompt = {k: v for k, v in batch.items()}
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             use_cache=True, pad_token_id=1, eos_token_id=None)
    sync(device)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == prompt["input_ids"].shape[1] + new_tokens
    return out.shape[0] * new_tokens / elapsed


def extra_block_share(config, seq_len, num_memory_tokens):
    """Matmul FLOPs of the gated cross-attention blocks over those of OPT, per token of the sequence."""
    d, ffn, layers, vocab = config.hidden_size, config.ffn_dim, config.num_hidden_layers, config.vocab_size
    base = layers * (4 * d * d + 2 * d * ffn + 2 * seq_len * d) + d * vocab
    blocks = layers // config.cross_attention_interval
    extra = blocks * (2 * d * d + 2 * d * ffn + 2 * d * d * num_memory_tokens / seq_len + 2 * num_memory_tokens * d)
    return extra / base


def decode_block_share(config, context_len, num_memory_tokens):
    """The same per generated token with caches: neighbour keys / values are computed once, not per token."""
    d, ffn, layers, vocab = config.hidden_size, config.ffn_dim, config.num_hidden_layers, config.vocab_size
    base = layers * (4 * d * d + 2 * d * ffn + 2 * context_len * d) + d * vocab
    extra = layers // config.cross_attention_interval * (2 * d * d + 2 * d * ffn + 2 * num_memory_tokens * d)
    return extra / base


BRIDGE_COUNTS = (16, 64, 256)
BRIDGE_VARIANTS = [(mode, bridge) for mode in ("self_attention", "cross_attention")
                   for bridge in ("linear", "perceiver", "qformer")]


def bridge_model(mode, bridge, num_text, num_image, latents, device, dtype):
    config = MMGLConfig(
        **OPT_125M, neighbor_mode=mode, neighbor_token_id=NEIGHBOR_TOKEN if mode != "none" else None,
        text_neighbor_embed_dim=EMBED_DIM, image_neighbor_embed_dim=EMBED_DIM, max_text_neighbors=num_text,
        max_image_neighbors=num_image, neighbor_bridge=bridge if mode != "none" else "linear",
        bridge_num_latents=latents,
    )
    model = MMGLForConditionalGeneration(config).to(device=device, dtype=dtype)
    for name, param in model.named_parameters():
        if "alpha_" in name:
            param.data.fill_(0.5)
    return model


def bridge_batch(mode, bridge, batch_size, text_len, num_text, num_image, latents, device, dtype, generator):
    """`text_len` tokens of text; SA-E adds its placeholders in front of them (4 per neighbour, or the latents)."""
    placeholders = 0
    if mode == "self_attention":
        placeholders = latents if bridge != "linear" else (num_text + num_image) * TOKENS_PER_NEIGHBOR
    input_ids = torch.randint(3, 50000, (batch_size, text_len + placeholders), generator=generator)
    input_ids[:, 1 : 1 + placeholders] = NEIGHBOR_TOKEN
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if mode != "none":
        batch.update(
            text_neighbor_embeds=torch.randn(batch_size, num_text, EMBED_DIM, generator=generator),
            text_neighbor_mask=torch.ones(batch_size, num_text, dtype=torch.long),
            image_neighbor_embeds=torch.randn(batch_size, num_image, EMBED_DIM, generator=generator),
            image_neighbor_mask=torch.ones(batch_size, num_image, dtype=torch.long),
        )
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()}


def measure(model, train_batch, gen_batch, args):
    """(median train step s, median cached decoding tok/s) of one model: one warm-up, then `repeats` of each."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    train_step(model, optimizer, train_batch, args.device)
    steps = [train_step(model, optimizer, train_batch, args.device) for _ in range(args.repeats)]
    model.eval()
    generation_tokens_per_second(model, gen_batch, 4, args.device)
    rates = [generation_tokens_per_second(model, gen_batch, args.new_tokens, args.device) for _ in range(args.repeats)]
    return statistics.median(steps), statistics.median(rates)


def bridges_main(args, dtype):
    generator = torch.Generator().manual_seed(0)
    latents = args.bridge_num_latents
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {device_name}, dtype {args.dtype}, OPT-125m shape, batch {args.batch_size}, text {args.seq_len} "
          f"tokens (generation: batch 1, text {args.prompt_len}, {args.new_tokens} new tokens), bridges of "
          f"{latents} latents x 2 layers, gates open, median of {args.repeats}")
    print(f"{'neighbours':>10} {'variant':<26}{'LM input':>9}{'train step s':>14}{'ratio':>8}{'gen tok/s':>11}{'ratio':>8}")
    for count in args.neighbor_counts:
        num_text, num_image = count * 11 // 16, count - count * 11 // 16
        rows = []

        def run(mode, bridge):
            torch.manual_seed(0)
            model = bridge_model(mode, bridge, num_text, num_image, latents, args.device, dtype)
            train_batch = bridge_batch(mode, bridge, args.batch_size, args.seq_len, num_text, num_image, latents,
                                       args.device, dtype, generator)
            gen_batch = bridge_batch(mode, bridge, 1, args.prompt_len, num_text, num_image, latents, args.device,
                                     dtype, generator)
            step, rate = measure(model, train_batch, gen_batch, args)
            del model
            return train_batch["input_ids"].shape[1], step, rate

        before = run("none", "linear")
        for mode, bridge in BRIDGE_VARIANTS:
            rows.append((f"{'SA-E' if mode == 'self_attention' else 'CA-E'} {bridge}", *run(mode, bridge)))
        after = run("none", "linear")
        opt_step, opt_rate = (before[1] + after[1]) / 2, (before[2] + after[2]) / 2
        print(f"{count:>10} {'OPT (before / after)':<26}{before[0]:>9}{opt_step:>14.3f}{'1.000':>8}{opt_rate:>11.1f}"
              f"{'1.000':>8}   ({before[1]:.3f} / {after[1]:.3f} s, {before[2]:.1f} / {after[2]:.1f} tok/s)")
        for label, length, step, rate in rows:
            print(f"{count:>10} {label:<26}{length:>9}{step:>14.3f}{step / opt_step:>8.3f}{rate:>11.1f}"
                  f"{rate / opt_rate:>8.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt_len", type=int, default=128)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES),
                        help="modes to run ('none' is always run: it is the reference)")
    parser.add_argument("--bridges", action="store_true",
                        help="measure the neighbour bridges (linear / perceiver / qformer) at --neighbor_counts")
    parser.add_argument("--neighbor_counts", nargs="+", type=int, default=list(BRIDGE_COUNTS))
    parser.add_argument("--bridge_num_latents", type=int, default=32)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    if args.bridges:
        return bridges_main(args, dtype)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    modes = ["none"] + [m for m in args.modes if m != "none"]
    models = {mode: build(mode, args.device, dtype) for mode in modes}
    optimizers = {mode: torch.optim.AdamW(models[mode].parameters(), lr=1e-5) for mode in modes}
    train_batches = {m: batch_for(m, args.batch_size, args.seq_len, args.device, dtype, generator) for m in modes}
    gen_batches = {m: batch_for(m, 1, args.prompt_len, args.device, dtype, generator) for m in modes}

    step_times = {mode: [] for mode in modes}
    token_rates = {mode: [] for mode in modes}
    for mode in modes:  # warm-up: allocator, kernels, optimizer state
        models[mode].train()
        train_step(models[mode], optimizers[mode], train_batches[mode], args.device)
    for _ in range(args.repeats):
        for mode in modes:
            models[mode].train()
            step_times[mode].append(train_step(models[mode], optimizers[mode], train_batches[mode], args.device))
    for mode in modes:
        models[mode].eval()
        generation_tokens_per_second(models[mode], gen_batches[mode], 4, args.device)
    for _ in range(args.repeats):
        for mode in modes:
            token_rates[mode].append(
                generation_tokens_per_second(models[mode], gen_batches[mode], args.new_tokens, args.device)
            )

    step = {mode: statistics.median(step_times[mode]) for mode in modes}
    rate = {mode: statistics.median(token_rates[mode]) for mode in modes}
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {device_name}, dtype {args.dtype}, OPT-125m shape (768 x 12 layers), batch {args.batch_size}, "
          f"sequence {args.seq_len}, 16 neighbours x 4 tokens, gates open, median of {args.repeats}")
    print(f"{'mode':<20}{'train step s':>14}{'ratio':>8}{'gen tok/s':>12}{'ratio':>8}")
    for mode in modes:
        print(f"{mode:<20}{step[mode]:>14.3f}{step[mode] / step['none']:>8.3f}"
              f"{rate[mode]:>12.1f}{rate[mode] / rate['none']:>8.3f}")
    for label in ("self_attention+laplacian", "self_attention+gnn"):
        if label in step and "self_attention" in step:
            print(f"{label}: train step {step[label] / step['self_attention']:.3f}x and generation "
                  f"{rate[label] / rate['self_attention']:.3f}x those of SA with the sequence encoding")
    if "self_attention+laplacian" in step:
        graphs = [slot_graph(generator) for _ in range(200)]
        start = time.perf_counter()
        for adjacency in graphs:
            slot_laplacian_eigenvectors(adjacency, [1] * NUM_NODES, 4)
        per_example = (time.perf_counter() - start) / len(graphs)
        print(f"LPE in the processor: {per_example * 1e3:.3f} ms per example ({NUM_NODES} slots), once per example; "
              f"{per_example / (step['self_attention+laplacian'] / args.batch_size):.4%} of a train step per example")
    for label in ("cross_attention", "cross_attention/6"):
        if label not in models:
            continue
        config = models[label].config
        share = extra_block_share(config, args.seq_len, 64)
        measured = step[label] / step["none"] - 1
        bound = 1 / (1 + decode_block_share(config, args.prompt_len + args.new_tokens // 2, 64))
        print(f"{label}: {config.num_hidden_layers // config.cross_attention_interval} gated blocks add {share:.1%} "
              f"matmul FLOPs in training (measured overhead {measured:.1%}); in generation their FLOPs bound the "
              f"ratio at {bound:.3f} (measured {rate[label] / rate['none']:.3f})")
    if "self_attention" not in step:
        return
    sa_ok = step["self_attention"] / step["none"] <= 1.10
    gen = ", ".join(f"{m} {'met' if rate[m] / rate['none'] >= 0.9 else 'MISSED'}" for m in modes if m != "none")
    print(f"targets: SA train ratio <= 1.10: {'met' if sa_ok else 'MISSED'}; generation ratio >= 0.9: {gen}")


if __name__ == "__main__":
    main()
