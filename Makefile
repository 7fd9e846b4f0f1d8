# Both targets bootstrap .venv themselves on a fresh machine; re-running them installs nothing new.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: diagnose test lint docs bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The pinned CPU build first (a local wheel); pyproject's torch range is then already met, and
	# constraints.txt keeps Lightning, transformers and accelerate from pulling another torch.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Diagnose the embedded default: the default config on the deterministic synthetic dataset.
diagnose: $(STAMP)
	$(BIN)/quad-doctor diagnose

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# docs/checks/ is generated from the checks' docstrings; a test fails when it is stale.
docs: $(STAMP)
	$(BIN)/python -m quad_doctor.docs docs/checks

clean:
	rm -rf $(VENV) build *.egg-info
