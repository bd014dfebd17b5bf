# micronet-onnx: `make demo` and `make test` are the two commands a newcomer needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on this project's machines' local disk; users elsewhere may override.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
LIB := micronet_onnx/_lib/libmicronet_ops.so
DEMO_DIR ?= runs/demo

.PHONY: setup lib test demo lint bench clean

setup: $(STAMP) $(LIB)

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

test: setup
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check micronet_onnx export tests

clean:
	rm -rf runtime_ops/build micronet_onnx/_lib $(DEMO_DIR)
