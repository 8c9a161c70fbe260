# medseg: `make demo` and `make test` work on a fresh clone with only Python 3.10+ installed.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH_VERSION ?= 2.13.0
SAMPLE  = data/sample/Task04_Hippocampus
DEMO_OUT = runs/demo

.PHONY: install browser demo test bench clean

# torch first (a local CPU build here; an existing CUDA build in the venv is kept), then medseg,
# whose `torch>=2.2` requirement the installed torch satisfies, so pip never replaces it. Then
# pydicomrt (RTSTRUCT output) without its `opencv-python` requirement, over OpenCV's headless build,
# which needs no libGL on a server.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q --no-compile -e ".[test]"
	@# pip byte-compiles one file after another; compileall uses every core (torch compiled itself above;
	@# like pip, files that do not compile, such as a package's Python 2 examples, are skipped)
	$(BIN)/python -m compileall -q -j 0 -x '/(torch|torchgen|functorch)/' \
		"$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null || true
	$(BIN)/python -m pip install -q "opencv-python-headless>=4.10,<5"
	$(BIN)/python -m pip install -q --no-deps "pydicomrt==0.9.1"
	touch $@

install: $(BIN)/.installed

# Train on the embedded 16-case sample (fold 0), print validation Dice per class, then score the
# best model in each case's original geometry.
demo: install
	$(BIN)/medseg train --config configs/demo.yaml
	$(BIN)/medseg evaluate --model "$$(ls -td $(DEMO_OUT)/*/model | head -1)" --data $(SAMPLE) --fold-only \
		--output $(DEMO_OUT)/evaluation.csv

# The dashboard test drives Debian's Chromium with Playwright (Playwright's own browser download
# is not used); install it when missing (root or sudo).
browser:
	@test -x /usr/bin/chromium || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: install browser
	$(BIN)/python -m pytest -q --durations=10 tests

# Speed, each against a plain MONAI reference loop in the same process (tables + JSON in runs/):
# training step per norm and batch size, sliding-window inference, data pipeline vs training step;
# then the fast-path variants (autocast, channels_last_3d, torch.compile) against float32 eager; and the
# per-class Dice's peak memory on a 512 x 512 x 300 label map against the one-hot path.
bench: install
	$(BIN)/python benchmarks/training.py --json runs/bench_training.json
	$(BIN)/python benchmarks/inference.py --json runs/bench_inference.json
	$(BIN)/python benchmarks/data_pipeline.py --json runs/bench_data_pipeline.json
	$(BIN)/python benchmarks/fast_path.py --json runs/bench_fast_path.json
	$(BIN)/python benchmarks/single_example_conv.py --json runs/bench_single_example_conv.json
	$(BIN)/python benchmarks/metrics_memory.py --json runs/bench_metrics_memory.json

clean:
	rm -rf $(VENV) runs mlruns mlflow.db .medseg_cache
