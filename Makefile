# scribe: `make run` and `make test` each build what they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard protos/transcription/v1/*.proto)
GEN    := services/gen/transcription/v1/transcription_pb2.py
FUZZ_EXAMPLES ?= 500

.PHONY: run test proto lint bench bench-stream bench-limits bench-clients bench-long fuzz clean help

help:
	@echo "make run    - install, generate stubs, start supervisord (gateway + workers) in the foreground"
	@echo "make test   - install, generate stubs, run the test suite"
	@echo "make proto  - regenerate the gRPC stubs from protos/"
	@echo "make lint   - ruff and mypy"
	@echo "make bench  - benchmarks (needs ../shared/audio)"
	@echo "make bench-limits - decode limits against decompression bombs (bench/results/decode_limits.md)"
	@echo "make fuzz   - long fuzz run through the gateway (FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) per test)"
	@echo "make bench-clients - CLI batch mode and progress on a long recording (needs ../shared/audio)"
	@echo "make bench-long - one 60-minute recording on 1 and N workers, four at once (needs ../shared/audio; BENCH_ARGS=--minutes 2 for a smoke run)"
	@echo "make bench-stream - streaming latency, capacity, accuracy and long-stream benchmark (needs ../shared/audio)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

$(GEN): $(STAMP) $(PROTOS)
	rm -rf services/gen/transcription
	mkdir -p services/gen/transcription
	$(BIN)/python -m grpc_tools.protoc -Iprotos \
		--python_out=services/gen --pyi_out=services/gen --grpc_python_out=services/gen \
		--descriptor_set_out=services/gen/transcription/descriptors.binpb --include_source_info --include_imports \
		$(PROTOS)

proto: $(GEN)

run: $(GEN)
	$(BIN)/scribe start --foreground

test: $(GEN)
	$(BIN)/python -m pytest

bench-limits: $(GEN)
	$(BIN)/python -m bench.decode_limits

# `make test` runs the same fuzz tests with 20 examples each.
fuzz: $(GEN)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/test_fuzz.py -q -s --timeout=0

lint: $(GEN)
	$(BIN)/ruff check services tests bench
	$(BIN)/ruff format --check services tests bench
	$(BIN)/mypy

bench: $(GEN)
	$(BIN)/python -m bench.throughput

bench-clients: $(GEN)
	$(BIN)/python -m bench.clients

bench-stream: $(GEN)
	$(BIN)/python -m bench.streaming $(BENCH_ARGS)

bench-long: $(GEN)
	$(BIN)/python -m bench.long $(BENCH_ARGS)

clean:
	rm -rf $(VENV) services/gen/transcription run
