"""The model card is generated from the run: every field a Hub user needs, checked one by one."""

from types import SimpleNamespace

from processing.training.model_card import write_model_card


def test_model_card_fields(tmp_path):
    model_args = SimpleNamespace(model_name_or_path=None, config_overrides="hidden_size=32,num_hidden_layers=2")
    mmgl_args = SimpleNamespace(context="all", neighbor_encoding="ca_e", position_encoding="laplacian", tuning="full",
                                max_text_neighbors=3, max_image_neighbors=2, text_neighbor_num_tokens=4,
                                image_neighbor_num_tokens=2, cross_attention_interval=2, lpe_k=4, gnn_type="gcn",
                                gnn_num_layers=2, first_stage_steps=0, neighbor_encoder_name="ViT-B-32",
                                neighbor_encoder_pretrained="openai")
    data_args = SimpleNamespace(train_files="data/pages", use_study_split=False, max_source_length=128,
                                max_target_length=24)
    training_args = SimpleNamespace(learning_rate=1e-4, max_steps=7, per_device_train_batch_size=4,
                                    gradient_accumulation_steps=3, world_size=2, seed=11)
    text = write_model_card(tmp_path, model_args, mmgl_args, data_args, {"eval_rougeL": 0.1234, "note": "x"},
                            training_args=training_args, encoder=("tiny", None, {"embed_dim": 16}),
                            sample_counts={"train": 8, "eval": 4, "predict": 5}, license="apache-2.0")
    assert (tmp_path / "README.md").read_text() == text
    header = text.split("---")[1]
    for field in ("license: apache-2.0", "pipeline_tag: text-generation", "library_name: transformers",
                  "base_model: null"):
        assert field in header, field
    assert "from scratch (OPT config `hidden_size=32,num_hidden_layers=2`)" in text
    for line in ("- neighbor_encoding: `ca_e`", "- position_encoding: `laplacian`", "- cross_attention_interval: `2`",
                 "- max_text_neighbors: `3`", "- image_neighbor_num_tokens: `2`", "max_source_length: `128`"):
        assert line in text, line
    # The actual encoder, not the flags' defaults.
    assert 'open_clip `tiny`, random init (seeded), custom config `{"embed_dim": 16}`' in text
    assert "ViT-B-32" not in text
    assert "learning rate: `0.0001`; steps: `7`; global batch: `24`" in text and "seed: `11`" in text
    assert "files: `data/pages`" in text and "samples: train 8, eval 4, predict 5" in text
    assert "| eval_rougeL | 0.1234 |" in text and "note" not in text
    for section in ("## Intended use", "## Limitations", "## How to load", "AutoModel.from_pretrained"):
        assert section in text, section
