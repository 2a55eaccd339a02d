PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test demo clean

$(BIN)/activate: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $(BIN)/activate

test: $(BIN)/activate
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info
