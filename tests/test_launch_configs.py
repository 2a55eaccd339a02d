"""The launch configs in `launch/`: accelerate reads each one as `accelerate launch --config_file` does, and the
settings it hands the script (environment variables) build the plugin the Trainer will use: FSDP wraps every
decoder layer of every MMGL design; DeepSpeed ZeRO-3 gathers the full weights for the export."""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
CONFIGS = sorted(LAUNCH.glob("*.yaml"))


def launch_environment(config: Path, monkeypatch) -> tuple:
    """(validated launch arguments, environment the launcher gives the script) for ``config``, on this machine."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    monkeypatch.chdir(REPO)  # the DeepSpeed configs name their JSON relative to the repository root
    args = launch_command_parser().parse_args(["--config_file", str(config), "run_summarization.py"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as `launch_command` prepares the DeepSpeed launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return args, defaults, env


def test_every_config_is_documented_and_read_by_accelerate(monkeypatch):
    names = {config.name for config in CONFIGS}
    assert names == {"ddp_cpu.yaml", "ddp_gpu.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml",
                     "multi_node.yaml"}
    readme = (REPO / "README.md").read_text()
    for config in CONFIGS:
        assert f"launch/{config.name}" in readme, config.name
        assert config.read_text().startswith("#"), f"{config.name}: say what it is for in a comment"
        args, defaults, env = launch_environment(config, monkeypatch)
        assert args.num_processes >= 2 and env["ACCELERATE_MIXED_PRECISION"] in ("no", "bf16"), config.name
    args, defaults, env = launch_environment(LAUNCH / "multi_node.yaml", monkeypatch)
    assert args.multi_gpu and args.num_machines == 2 and args.num_processes == 8 and args.machine_rank == 0
    assert (args.main_process_ip, args.main_process_port) == ("node0", 29500)
    args, defaults, env = launch_environment(LAUNCH / "ddp_cpu.yaml", monkeypatch)
    assert args.multi_gpu and args.num_processes == 2 and env["ACCELERATE_MIXED_PRECISION"] == "no"


@pytest.mark.parametrize("mode", ["none", "self_attention", "cross_attention"])
def test_fsdp_config_wraps_every_decoder_layer(mode, monkeypatch):
    """FSDP2 with the transformer auto-wrap of launch/fsdp.yaml: one unit per decoder layer in every design (with
    the class-level `_no_split_modules` accelerate refused every MMGL model: "Could not find the transformer layer
    class MMGLDecoderLayer in the model")."""
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from modeling_mmgl import MMGLConfig, MMGLForConditionalGeneration

    _, _, env = launch_environment(LAUNCH / "fsdp.yaml", monkeypatch)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()  # reads the environment, as in the launched script
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    config = MMGLConfig(hidden_size=32, num_hidden_layers=3, ffn_dim=64, num_attention_heads=4, vocab_size=100,
                        neighbor_mode=mode, neighbor_token_id=99, text_neighbor_embed_dim=16,
                        image_neighbor_embed_dim=16, cross_attention_interval=2)
    model = MMGLForConditionalGeneration(config)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = [name for name, module in model.named_modules() if policy(module)]
    assert wrapped == [f"model.decoder.layers.{i}" for i in range(3)]


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs(stage, monkeypatch):
    """The DeepSpeed plugin accelerate builds from each config (its JSON): the ZeRO stage, values left to the
    TrainingArguments ("auto"), and for ZeRO-3 the gathering of the full weights that the export needs
    (`check_export_gatherable` accepts it, and refuses the same config without it)."""
    import types

    from accelerate.utils import DeepSpeedPlugin

    from processing.training.distributed import check_export_gatherable

    _, defaults, env = launch_environment(LAUNCH / f"deepspeed_zero{stage}.yaml", monkeypatch)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()  # reads the environment and the JSON, as in the launched script
    assert plugin.zero_stage == stage and plugin.zero3_init_flag is False
    for key in ("gradient_accumulation_steps", "train_micro_batch_size_per_gpu", "train_batch_size"):
        assert plugin.deepspeed_config[key] == "auto", key
    trainer = types.SimpleNamespace(is_deepspeed_enabled=True, accelerator=types.SimpleNamespace(
        state=types.SimpleNamespace(deepspeed_plugin=plugin)))
    check_export_gatherable(trainer)
    if stage == 3:
        del plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
        with pytest.raises(ValueError, match="ZeRO-3 without stage3_gather_16bit_weights_on_model_save"):
            check_export_gatherable(trainer)


def test_gpu_checks_run_their_cpu_parts(tmp_path):
    """`benchmarks/gpu_checks.py` on this machine (no GPU): the reference run, its export reloaded in two fresh
    processes, and every check that needs a GPU reported as skipped with its reason (never as passed)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_checks.py"), "--layouts", "single,fsdp,zero3", "--steps", "2",
         "--num_pages", "30", "--output_dir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_checks.json").read_text())
    assert report["machine"]["gpus"] == 0 and report["model_size"] == "tiny"
    single = report["layouts"]["single"]
    assert single["reference"] and single["reload_deterministic"] is True
    for layout in ("fsdp", "zero3"):
        assert report["layouts"][layout] == {"skipped": f"{layout} needs a GPU (FSDP and DeepSpeed do not start on CPU)"}
    assert report["throughput"] == {"skipped": "bf16 throughput needs a GPU"}
    assert (tmp_path / "single" / "model.safetensors").exists() and "fsdp: skipped" in result.stdout
