# hpcdd: two commands do all the set-up on a fresh machine:
#   make demo   venv + install + Fashion-MNIST + a small real sweep -> runs/demo/, table printed
#               (runs/demo.csv, runs/demo.md: untracked, so a checkout stays clean)
#   make test   venv + install + the test suite (starts a local Slurm cluster for the sweep tests)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist
# Without root/apt, Fashion-MNIST is downloaded by torchvision into data/ and read from there.
DATA_ROOT ?= $(shell [ -f $(FMNIST)/train-images-idx3-ubyte.gz ] || [ "$$(id -u)" = 0 ] || echo data)

.PHONY: setup data demo test bench results-fmnist

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,faiss,mnist5k]'
	touch $@

data: setup
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST: $(FMNIST)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null; \
	  echo "Fashion-MNIST: installed $(FMNIST) (Debian dataset-fashion-mnist)"; \
	else $(BIN)/python -c "import torchvision; torchvision.datasets.FashionMNIST('data', download=True)"; \
	  echo "Fashion-MNIST: downloaded into data/"; fi

demo: data
	$(BIN)/hpcdd sweep launch launch/demo.yaml --out runs/demo --cluster local $(if $(DATA_ROOT),--data-root $(DATA_ROOT))
	$(BIN)/hpcdd aggregate runs/demo -o runs/demo.csv
	$(BIN)/hpcdd table runs/demo.csv --rows method --cols dataset,ipc -o runs/demo.md
	@cat runs/demo.md

# The committed Fashion-MNIST comparison (results/fmnist_ipc10.*): DM vs random at IPC 10.
results-fmnist: data
	$(BIN)/hpcdd distill --method random --dataset fashionmnist --ipc 10 --iterations 200 --eval-epochs 300 --eval-n 3 --no-progress --out runs/fmnist-ipc10/random
	$(BIN)/hpcdd distill --method dm --dataset fashionmnist --ipc 10 --iterations 200 --eval-epochs 300 --eval-n 3 --no-progress --out runs/fmnist-ipc10/dm
	$(BIN)/hpcdd aggregate runs/fmnist-ipc10 -o results/fmnist_ipc10.csv
	$(BIN)/hpcdd table results/fmnist_ipc10.csv --rows method --cols dataset,ipc --with-published -o results/fmnist_ipc10.md

test: data
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

bench: setup
	$(BIN)/python bench/bench_dm.py
	$(BIN)/python bench/bench_aggregate.py
