# Quick start: `make demo` and `make test`. Both create .venv if it is absent.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
comma := ,
space := $(subst ,, )

.PHONY: demo test test-all test-network lint venv clean bench-p1 bench-p2 bench-p2-zoo bench-mlora bench-p3-mamdr bench-mlora-overhead \
	bench-throughput bench-scaling bench-adi bench-retrieval-cost

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m polyrec.demo

# The test suite and the docstring examples of the package.
test: $(STAMP)
	$(PY) -m pytest tests src/polyrec --doctest-modules

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

test-network: $(STAMP)
	$(PY) -m pytest tests -m network

test-all: $(STAMP)
	$(PY) -m pytest tests -m ""

bench-p1: $(STAMP)
	$(PY) benchmarks/p1_ml1m_gender.py

bench-p2: $(STAMP)
	$(PY) benchmarks/p2_ml1m_age3.py

bench-p2-zoo: $(STAMP)
	$(PY) benchmarks/p2_ml1m_age3.py --models zoo --out benchmarks/results/p2_ml1m_age3_zoo

P1_BACKBONES := mlp wdl nfm autoint pnn dcn fibinet deepfm xdeepfm star
bench-mlora: $(STAMP)
	$(VENV)/bin/polyrec benchmark ml1m-gender --seeds 5 --out benchmarks/results/p1_mlora \
		--models $(subst $(space),$(comma),$(foreach m,$(P1_BACKBONES),$(m) $(m)+mlora) mlp+mlora@two_phase)

# P3: MLP under every learning framework of MAMDR's comparison (MLP alone is the Alternate baseline).
P3_FRAMEWORKS := joint alternate_finetune weighted_loss pcgrad maml reptile mldg domain_negotiation \
	domain_regularization mamdr
bench-p3-mamdr: $(STAMP)
	$(VENV)/bin/polyrec benchmark ml1m-age7 --seeds 5 --jobs 2 --out benchmarks/results/p3_mamdr \
		--models mlp,$(subst $(space),$(comma),$(foreach f,$(P3_FRAMEWORKS),mlp@$(f)))

bench-mlora-overhead: $(STAMP)
	$(PY) benchmarks/mlora_overhead.py

bench-throughput: $(STAMP)
	$(PY) benchmarks/throughput.py

bench-scaling: $(STAMP)
	$(PY) benchmarks/domain_scaling.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

bench-adi: $(STAMP)
	$(PY) benchmarks/adi_retrieval.py

bench-retrieval-cost: $(STAMP)
	$(PY) benchmarks/retrieval_cost.py
