# `make demo` and `make test` each create .venv on first use and install the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench mutation clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>/dev/null || $(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/crl fit --config examples/configs/digits_crl.yaml

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m mypy crl_lightning
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/losses.py

# Mutation testing (tests/README.md, "Mutation testing"); not part of `make test`. About an hour on 2 busy cores.
mutation: $(STAMP)
	$(BIN)/pip install -q -e ".[mutation]"
	rm -rf mutants
	nice -n 10 $(BIN)/mutmut run --max-children 2 > mutmut-run.log 2>&1 || (tail -c 3000 mutmut-run.log; exit 1)
	$(BIN)/mutmut results --all true | $(BIN)/python tests/mutation_scores.py

clean:
	rm -rf $(VENV) lightning_logs runs
