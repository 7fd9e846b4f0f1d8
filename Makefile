# Both targets bootstrap .venv themselves on a fresh machine; re-running them installs nothing new.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: diagnose test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The pinned CPU build first (a local wheel); pyproject's torch range is then already met.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Until the doctor lands, `make diagnose` trains the embedded default (its first diagnosis is the
# metrics it writes); it becomes `quad-doctor diagnose` with the doctor.
diagnose: $(STAMP)
	$(BIN)/quad-doctor train

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info
