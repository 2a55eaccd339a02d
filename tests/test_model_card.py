"""The model card is built with huggingface_hub from the run's real state: every metadata field reads back with
`ModelCard.load`, only the settings the design uses are listed, and the training setup is the record's."""

from huggingface_hub import ModelCard

from processing.training.model_card import CardInputs, OPT_LICENSE, card_license, write_model_card

CA_E_CONFIG = {"neighbor_mode": "cross_attention", "position_encoding": "laplacian", "lpe_k": 3, "gnn_type": "gcn",
               "gnn_num_layers": 2, "max_text_neighbors": 3, "max_image_neighbors": 2, "text_neighbor_num_tokens": 4,
               "image_neighbor_num_tokens": 2, "cross_attention_interval": 2, "cross_attention_gating": True,
               "neighbor_encoder_name": "tiny", "neighbor_encoder_config": {"embed_dim": 16},
               "neighbor_encoder_pretrained": None, "virtual_tokens": "none", "num_virtual_tokens": 20}
PROCESSOR = {"context": "all", "neighbor_encoding": "ca_e", "max_source_length": 128, "max_target_length": 24}
RECORD = {"arguments": {
    "base_model": "facebook/opt-125m", "world_size": 2, "generated_data": False,
    "mmgl": {"tuning": "lora", "lora_r": 4, "lora_alpha": 8, "first_stage_steps": 0},
    "training": {"learning_rate": 1e-4, "max_steps": 7, "per_device_train_batch_size": 4,
                 "gradient_accumulation_steps": 3, "seed": 11, "lr_scheduler_type": "linear", "warmup_steps": 0},
    "model": {"model_name_or_path": "facebook/opt-125m"}},
    "loss_sum": 35.0, "resumes": [{"checkpoint": "run-checkpoints/checkpoint-4", "step": 4}]}


def inputs(**overrides) -> CardInputs:
    values = dict(
        config=CA_E_CONFIG, processor=PROCESSOR, record=RECORD,
        trainer_state={"global_step": 7, "max_steps": 7, "epoch": 3.5},
        metrics={"eval_rougeL": 0.1234, "eval_bleu4": 0.05, "eval_cider": 0.7, "predict_bleu4": 0.04,
                 "eval_runtime": 1.5},
        generation={"max_new_tokens": 16, "num_beams": 2, "no_repeat_ngram_size": 3},
        data={"files": "data/pages", "generated": False, "study_split": False,
              "samples": {"train": 20, "eval": 4, "predict": 5}},
        folder_name="run", hub_model_id="me/mmgl-run",
        metrics_implementation={"style": "mmgl", "description": "sacrebleu, rouge_score, pycocoevalcap"})
    values.update(overrides)
    return CardInputs(**values)


def test_card_metadata_reads_back_with_model_card_load(tmp_path):
    write_model_card(tmp_path, inputs())
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data
    assert data.base_model == "facebook/opt-125m" and data.datasets == ["wikiweb2m"]
    assert data.metrics == ["bleu", "rouge", "cider"] and data.pipeline_tag == "text-generation"
    assert (data.license, data.license_name, data.license_link) == OPT_LICENSE
    assert {"mmgl", "peft", "lora", "wikiweb2m"} <= set(data.tags)
    results = {(r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    assert results == {("validation", "rouge"): 0.1234, ("validation", "bleu"): 0.05, ("validation", "cider"): 0.7,
                       ("test", "bleu"): 0.04}
    assert all(r.metric_config == "mmgl" and r.task_type == "summarization" for r in data.eval_results)
    text = card.text
    assert 'AutoModel.from_pretrained("me/mmgl-run"' in text  # the Hub id, not the local folder
    assert "| eval_rougeL | 0.1234 |" in text and "eval_runtime" not in text


def test_card_lists_only_what_the_design_uses_and_the_recorded_setup(tmp_path):
    text = write_model_card(tmp_path, inputs()).text
    for line in ("context: `all`; neighbour encoding: `ca_e`", "graph position encoding: `laplacian`, `3` eigenvectors",
                 "a block every `2` layers", "text neighbours: up to `3`, `4` tokens each",
                 "LoRA: rank `4`, alpha `8`", "merged into these weights",
                 "global batch: `24` (4 per device x 3 accumulation x 2 processes)", "learning rate `0.0001`",
                 "seed `11`", "steps: `7`", "training loss over the whole run: `5.0000`",
                 "resumed at step `4` from `run-checkpoints/checkpoint-4`", "max_new_tokens `16`, num_beams `2`"):
        assert line in text, line
    assert "gnn" not in text  # a laplacian design uses no GNN setting
    assert "Trained on WikiWeb2M pages only" in text
    # SA-E without position encoding: no interval, no lpe_k, no GNN, and an honest line for generated pages.
    sa_e = dict(CA_E_CONFIG, neighbor_mode="self_attention", position_encoding="none")
    text = write_model_card(tmp_path, inputs(config=sa_e, processor=dict(PROCESSOR, neighbor_encoding="sa_e"),
                                             data=dict(inputs().data, generated=True))).text
    for absent in ("interval", "eigenvectors", "gcn", "cross-attention: a block"):
        assert absent not in text, absent
    assert "generated sample pages" in text and "wikiweb2m" not in ModelCard.load(tmp_path / "README.md").data.tags


def test_prefix_card_and_unrecorded_setup(tmp_path):
    config = dict(CA_E_CONFIG, virtual_tokens="prefix", num_virtual_tokens=5)
    text = write_model_card(tmp_path, inputs(config=config, record=None, trainer_state=None)).text
    assert "tuning: `prefix`" in text and "`5` virtual tokens, applied by the model itself" in text
    assert "not recorded" in text and "learning rate" not in text


def test_license_of_the_base_model():
    assert card_license("facebook/opt-350m") == OPT_LICENSE
    assert card_license(None) == ("other", "unspecified", None)
    assert card_license("facebook/opt-125m", "apache-2.0") == ("apache-2.0", None, None)
