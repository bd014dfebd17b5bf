# micronet-onnx: `make demo` and `make test` are the two commands a newcomer needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on this project's machines' local disk; users elsewhere may override.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
LIB := micronet_onnx/_lib/libmicronet_ops.so
DEMO_DIR ?= runs/demo

.PHONY: setup lib test test-sanitize demo lint bench clean browser

setup: $(STAMP) $(LIB) browser

# Debian's chromium, for the test that opens `mnx report`'s page in a real headless browser
# (tests/test_report.py; it skips, saying why, where chromium is absent). Installed when missing and
# apt-get can run as root; otherwise setup goes on without it.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } || \
		echo "note: chromium not installed; the report's browser test will be skipped"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

lib: $(STAMP)
	PYTHON=$(abspath $(BIN)/python) bash runtime_ops/build.sh

$(LIB): $(STAMP) $(shell find runtime_ops -name '*.cc' -o -name '*.h' -o -name CMakeLists.txt -o -name '*.sh' 2>/dev/null | grep -v /build/)
	PYTHON=$(abspath $(BIN)/python) bash runtime_ops/build.sh

# The main job on the embedded digits: full-precision training, EC2T, export (ternary and dense),
# onnxruntime evaluation of both, and the storage score of the ternary file. The EC2T learning
# rates are 10x the reference's because a digits epoch is 20 steps, not 390 (docs/ec2t.md).
DEMO_TRAIN := --model micronet --depth 0.3 --width 1 --epochs 15 --batch-size 64 --lr 0.05 \
	--ternary --ternary-epochs 6 --freeze-epochs 2 --lambda-gain 0.5 \
	--lr-weights 1e-3 --lr-centroids 1e-4 --lr-other 1e-3

demo: setup
	$(BIN)/mnx train $(DEMO_TRAIN) --force -o $(DEMO_DIR)/model.pt
	$(BIN)/mnx export --force --ternary $(DEMO_DIR)/model.pt -o $(DEMO_DIR)/ternary.onnx
	$(BIN)/mnx export --force $(DEMO_DIR)/model.pt -o $(DEMO_DIR)/dense.onnx
	$(BIN)/mnx eval $(DEMO_DIR)/dense.onnx
	$(BIN)/mnx eval $(DEMO_DIR)/ternary.onnx
	$(BIN)/mnx score $(DEMO_DIR)/ternary.onnx
	$(BIN)/mnx report --force $(DEMO_DIR)/ternary.onnx --checkpoint $(DEMO_DIR)/model.pt -o $(DEMO_DIR)/report.html
	@echo "open $(abspath $(DEMO_DIR)/report.html) in a browser (one self-contained file)"

test: setup
	$(BIN)/python -m pytest -q

# The runtime test files against an AddressSanitizer + UBSan build of the library (a developer check,
# not part of `make test`: about 15 s more on top of the sanitizer build).
SAN_LIB := runtime_ops/build-sanitize/out/libmicronet_ops.so
test-sanitize: setup
	SANITIZE=1 bash runtime_ops/build.sh
	LD_PRELOAD="$$(g++ -print-file-name=libasan.so) $$(g++ -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	MICRONET_OPS_LIBRARY=$(CURDIR)/$(SAN_LIB) \
	$(BIN)/python -m pytest -q tests/test_kernels.py tests/test_runtime_parity.py tests/test_runtime_validation.py

lint: $(STAMP)
	$(BIN)/ruff check micronet_onnx export tests

# Paper-scale MicroNet-C100 with random ternary weights at 0/50/90 % zeros: the docs/runtime.md table.
bench: setup
	OPENBLAS_NUM_THREADS=1 $(BIN)/mnx bench --random micronet-c100 --sparsity 0 --sparsity 0.5 --sparsity 0.9

clean:
	rm -rf runtime_ops/build runtime_ops/build-sanitize micronet_onnx/_lib $(DEMO_DIR)
