# mirai-lab: every target installs what it needs into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUDGET ?=
SEEDS ?=
WORKERS ?= 2
RESULTS ?= results

.PHONY: install test test-all lint bench wheel demo reproduce-table1 reproduce-table2 reproduce-table3 reproduce-table4 reproduce-all clean

install: $(STAMP)

# pip byte-compiles what it installs: where PYTHONDONTWRITEBYTECODE=1 is set, every process would
# otherwise compile torch again on import (CHANGELOG.md has the measurement)
# The disk check only warns: pip's own "No space left on device" comes later and reads worse.
$(STAMP): pyproject.toml
	@$(PY) -c 'import shutil; f = shutil.disk_usage(".").free / 2**30; f < 8 and print(f"warning: {f:.1f} GiB free on this disk; the install puts about 6.1 GiB in $(VENV) (torch 2.14.1 is a CUDA build)")'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps animal-mnist==0.4
	touch $(STAMP)

# -n auto: one pytest worker per core (pytest-xdist); the tests are single-threaded (tests/conftest.py).
# The fuzz file runs in one process of its own, so that its last test counts every generated case.
test: $(STAMP)
	$(BIN)/pytest -n auto --ignore=tests/faults/test_fuzz.py
	$(BIN)/pytest tests/faults/test_fuzz.py

lint: $(STAMP)
	$(BIN)/ruff check mirai_lab tests benchmarks
	$(BIN)/lint-imports

demo: $(STAMP)
	$(BIN)/mirai-lab train --budget quick

# refreshes the committed benchmarks/ (plain `mirai-lab bench` writes under <results>/bench):
# the step a run trains (cpu-s, one thread per run) against a one-thread peak, and the
# evaluation share; BENCH_ARGS adds options (e.g. BENCH_ARGS="--sections peak,train,sampling")
bench: $(STAMP)
	$(BIN)/mirai-lab bench --out benchmarks --presets cpu-s --quick --sections peak,train,eval --repeats 5 \
		--set train.threads=1 --results-dir $(RESULTS) $(BENCH_ARGS)
	$(BIN)/python benchmarks/seed_batch.py --out benchmarks/seed_batch.md

# the installable package, specs included (tests/test_wheel.py installs and runs one)
wheel: $(STAMP)
	$(BIN)/pip wheel --no-deps --no-build-isolation -q -w dist .

TABLES := reproduce-table1 reproduce-table2 reproduce-table3 reproduce-table4

# a static pattern rule: make skips implicit-rule search for .PHONY targets
$(TABLES): reproduce-table%: $(STAMP)
	$(BIN)/mirai-lab reproduce table$* $(if $(BUDGET),--budget $(BUDGET)) $(if $(SEEDS),--seeds $(SEEDS)) --workers $(WORKERS) --results-dir $(RESULTS)

reproduce-all: reproduce-table1 reproduce-table2 reproduce-table3 reproduce-table4

clean:
	rm -rf $(VENV) dist build results/runs results/cache results/sweeps results/stale
