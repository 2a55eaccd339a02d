"""The tanh gates of gated cross-attention (CA-E) in training: their own learning rate, and their values logged.

A closed tanh gate (alpha = 0) gets tiny gradients and may stay near zero for a whole short run; a separate,
larger learning rate for the gates (`--gate_learning_rate`) or an open start (`--alpha_initializer ones`) lets the
neighbours in. The gate values (tanh of each alpha: how far each block is open) are logged with the training loss
(TensorBoard) and written with the training metrics.
"""
from __future__ import annotations

import torch

GATE_NAMES = ("alpha_cross_attn", "alpha_dense")  # IDEFICS' names, one of each per gated block


def is_gate_parameter(name: str) -> bool:
    """Whether a parameter name (plain, or as peft / DDP wrap it) is a cross-attention gate."""
    return name.rsplit(".", 1)[-1] in GATE_NAMES


def separate_gate_group(optimizer: torch.optim.Optimizer, model: torch.nn.Module, learning_rate: float) -> int:
    """Moves the trainable gates out of `optimizer`'s parameter groups into one group of their own with
    `learning_rate` (no weight decay: pulling a gate towards zero would close it); the scheduler built after the
    optimizer scales it like the others. Returns the number of gates moved (0: nothing changed)."""
    gates = [p for n, p in model.named_parameters() if p.requires_grad and is_gate_parameter(n)]
    ids = {id(p) for p in gates}
    if not gates:
        return 0
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in ids]
    optimizer.add_param_group({"params": gates, "lr": learning_rate, "weight_decay": 0.0})
    return len(gates)


def gate_values(model: torch.nn.Module) -> dict[str, float]:
    """`{"gate_<layer>_<cross_attn|dense>": tanh(alpha)}` for every gate of `model` (empty without gates)."""
    values = {}
    for name, param in model.named_parameters():
        if is_gate_parameter(name):
            layer = name.split(".layers.", 1)[-1].split(".", 1)[0] if ".layers." in name else "?"
            kind = name.rsplit(".", 1)[-1].removeprefix("alpha_")
            values[f"gate_{layer}_{kind}"] = round(float(param.detach().float().tanh().mean()), 6)
    return values


__all__ = ["GATE_NAMES", "gate_values", "is_gate_parameter", "separate_gate_group"]
