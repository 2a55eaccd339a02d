PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test demo study clean
DEMO := out/demo
TIMED = $(BIN)/python demo/timed.py $(DEMO)/timings.tsv
DEMO_ARGS := --config_overrides "hidden_size=128,num_hidden_layers=2,ffn_dim=256,num_attention_heads=4,max_position_embeddings=512" \
	--tokenizer_vocab_size 2000 --neighbor_encoder_config demo/tiny_clip.json --neighbor_encoder_pretrained none \
	--embedding_cache_dir $(DEMO)/embedding_cache --image_dir $(DEMO)/data/images \
	--train_files $(DEMO)/data/wikiweb2m-sample.tfrecord.gz --do_train --do_predict --max_steps 2000 \
	--per_device_train_batch_size 16 --per_device_eval_batch_size 32 --learning_rate 2e-3 --warmup_steps 30 \
	--max_predict_samples 200 --max_source_length 256 --max_target_length 32 --generation_max_new_tokens 24 \
	--logging_steps 20 --save_strategy no --report_to tensorboard --seed 0

$(BIN)/activate: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $(BIN)/activate

test: $(BIN)/activate
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q tests

# The README's main command: offline, on the bundled sample, section_only vs all (SA-E + Laplacian PE).
demo: $(BIN)/activate
	rm -f $(DEMO)/timings.tsv
	HF_HUB_OFFLINE=1 $(TIMED) "sample data" -- $(BIN)/python -m processing.data.sample_data $(DEMO)/data --num_pages 600
	HF_HUB_OFFLINE=1 $(TIMED) "train section_only" -- $(BIN)/python run_summarization.py $(DEMO_ARGS) \
		--context section_only --output_dir $(DEMO)/section_only
	HF_HUB_OFFLINE=1 $(TIMED) "train all (SA-E + LPE)" -- $(BIN)/python run_summarization.py $(DEMO_ARGS) \
		--context all --neighbor_encoding sa_e --position_encoding laplacian --output_dir $(DEMO)/all
	$(TIMED) "report" -- $(BIN)/python demo/report.py $(DEMO)/section_only $(DEMO)/all $(DEMO)/demo.png
	HF_HUB_OFFLINE=1 $(TIMED) "pipeline" -- $(BIN)/python demo/summarize_one.py $(DEMO)/all \
		$(DEMO)/data/wikiweb2m-sample.tfrecord.gz $(DEMO)/data/images
	$(TIMED) --report

# The controlled MMGL study (issue 13): the paper's four tables on generated data, offline, resumable.
study: $(BIN)/activate
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python studies/run_study.py controlled --output_dir out/study/controlled

clean:
	rm -rf $(VENV) build *.egg-info out
