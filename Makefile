# ASTEROID: every target does its own set-up. `make help` lists them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXP ?= ethanol

.DEFAULT_GOAL := help
.PHONY: help install test test-unit lint format reliability-report train pretrain transfer-table tensorboard clean

help: ## List the targets and what they do
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-19s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## Create .venv and install ASTEROID editable with its dev extra (quick when done)

# torch is installed first and pinned: `pip install torch==2.13.0` takes the CPU build where one is on disk,
# whereas an open range would pull several GB of CUDA wheels on a CPU-only machine.
$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

test: install ## Run the whole test suite (unit and integration; ruff's lint and format check included)
	$(BIN)/python -m pytest -q --durations=10

test-unit: install ## Run only the fast unit tests (tests/unit: no end-to-end run of a command or a Trainer)
	$(BIN)/python -m pytest -q --durations=5 -m "not integration"

lint: install ## Lint with ruff (the tests run it too)
	$(BIN)/ruff check
	$(BIN)/ruff format --check

format: install ## Format the code and sort imports with ruff
	$(BIN)/ruff check --fix --select I
	$(BIN)/ruff format

reliability-report: install ## Run the reliability sweep and rewrite docs/reliability.md from its outcomes
	ASTEROID_RELIABILITY_REPORT=1 $(BIN)/python -m pytest -q tests/integration/test_reliability.py

train: install ## Train, test and report an experiment: make train EXP=ethanol ARGS="--trainer.max_steps 500"
	$(BIN)/asteroid fit --config experiments/$(EXP).yaml $(ARGS)

# Resumable: a second `make pretrain` goes on from the run's last checkpoint, and each molecule's MD from its own.
# PROCESSES processes of one thread make the data side by side, then share each training step (DDP: the batch of 32
# split among them and the gradients averaged, the steps one process would take).
PROCESSES ?= 2
PRETRAINED_RUN := $(wildcard runs/pretrained/version_*/checkpoints/last.ckpt)
PRETRAIN_FIT := asteroid fit --config experiments/pretrain.yaml --trainer.strategy ddp --trainer.devices $(PROCESSES) \
	--data.batch_size $(shell echo $$((32 / $(PROCESSES))))
pretrain: install ## Remake the shipped pretrained model: data of 113 molecules (GFN2-xTB), 24,000 steps, export (see docs/results/transfer.md)
	$(BIN)/asteroid simulate --config experiments/pretrain.yaml --processes $(PROCESSES)
	OMP_NUM_THREADS=1 $(BIN)/$(PRETRAIN_FIT) $(if $(PRETRAINED_RUN),--ckpt_path last) $(ARGS)
	$(BIN)/asteroid export --ckpt_path last --name pretrained --command "make pretrain ($(PRETRAIN_FIT))" \
		--out src/asteroid/weights/asteroid-pretrained.ckpt

transfer-table: install ## Held-out molecules: zero-shot, fine-tuned and own-model test MSE (docs/results/transfer.csv)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/transfer_table.py $(ARGS)

tensorboard: install ## Serve the TensorBoard logs of every run in runs/ (http://localhost:6006)
	$(BIN)/tensorboard --logdir runs --port 6006

clean: ## Remove runs/ and the coordinate caches (keeps generated trajectories in data/)
	rm -rf runs data/cache
