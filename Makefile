# m2skd: every target sets up .venv itself on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Where things live (override on the command line: make fuse DATA=/data/semantickitti SEQ=00-10)
CACHE      ?= data_cache
DEMO_DATA  ?= $(CACHE)/synth
DATA       ?= $(DEMO_DATA)
SEQ        ?= 00
WORKERS    ?= 2
WINDOW     ?=
PYTEST_ARGS ?=

.PHONY: setup .venv test test-slow demo synth fuse lint clean

setup .venv: $(STAMP)

# torch==2.13.0 first: on the project's machines that is a local CPU build (plain `torch`
# would pull a multi-GB CUDA build); elsewhere pip falls back to any torch>=2.1.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0 || $(BIN)/pip install -q 'torch>=2.1'
	$(BIN)/pip install -q -e '.[spconv,dev]'
	# the official SemanticKITTI evaluator, which the tests check our mIoU against; --no-deps
	# because its package pulls GUI stacks (vispy, pyqt5, imgui) its iouEval never uses
	$(BIN)/pip install -q --no-deps semantic-kitti-api
	@touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

# The synthetic stand-in for SemanticKITTI: sequence 00 to train on, 08 to validate.
synth: $(STAMP)
	$(BIN)/m2skd-synth $(DEMO_DATA) --sequences 00,08 --preset demo

demo: synth

fuse: $(STAMP)
	@if [ "$(DATA)" = "$(DEMO_DATA)" ] && [ ! -d "$(DEMO_DATA)/sequences" ]; then $(MAKE) synth; fi
	$(BIN)/m2skd-fuse --data $(DATA) --sequences $(SEQ) --out $(CACHE)/fused --workers $(WORKERS) \
		$(if $(WINDOW),--window $(WINDOW),)

clean:
	rm -rf $(CACHE)/synth $(CACHE)/fused
