#!/usr/bin/env bash
# The GPU check on the GPU machine, which has no network, CUDA 13, and its own torch and transformers.
#   bench/gpu/run.sh stage .gpu-wheels/partN   # one device run per part (carry it), machine kept warm
#   bench/gpu/run.sh check [run.py options]    # installs what was staged, then the check itself
# On this CPU machine `bench/gpu/run.sh check --device cpu ...` rehearses it (GPU_VENV picks the venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${GPU_VENV:-.venv-gpu}
STAGE=${GPU_STAGE:-.gpu-stage}
case "${1:-}" in
  stage)
    mkdir -p "$STAGE"
    cp "$2"/* "$STAGE"/
    # A wheel cut into pieces by pack.sh is whole again once all its pieces are here.
    for first in "$STAGE"/*.piece-0-of-*; do
      [[ -e $first ]] || continue
      wheel=${first%.piece-0-of-*}
      n=${first##*-of-}
      if (( $(ls "$wheel".piece-*-of-"$n" | wc -l) == n )); then
        cat $(for i in $(seq 0 $((n - 1))); do echo "$wheel.piece-$i-of-$n"; done) >"$wheel"
        rm "$wheel".piece-*
      fi
    done
    ls "$STAGE" | wc -l
    ;;
  check)
    shift
    if [[ -d $STAGE ]]; then
      # The machine's torch (built for its CUDA) and transformers stay: the venv sees its site-packages.
      test -x "$VENV/bin/python" || python3 -m venv --system-site-packages "$VENV"
      "$VENV/bin/python" -m pip install -q --no-index --find-links "$STAGE" -r bench/gpu/requirements.txt
    fi
    bin=$(dirname "$VENV/bin/python")
    [[ -x $VENV/bin/python ]] || bin=.venv/bin
    # scribe itself and its stubs, from the working tree (its dependencies came as wheels).
    "$bin/python" -m pip install -q --no-index --no-deps --no-build-isolation -e ./clients/python -e .
    "$bin/python" clients/python/generate_stubs.py >/dev/null
    mkdir -p services/gen/transcription
    "$bin/python" -m grpc_tools.protoc -Iprotos --include_source_info --include_imports \
      --descriptor_set_out=services/gen/transcription/descriptors.binpb protos/transcription/v1/*.proto
    # On the device machine the report goes to $OUT, which comes back; elsewhere to bench/results.
    report=()
    [[ -n ${OUT:-} ]] && report=(--out "$OUT/gpu.md")
    PATH="$PWD/$bin:$PATH" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 "$bin/python" -m bench.gpu.run "${report[@]}" "$@"
    ;;
  *)
    echo "usage: $0 stage WHEEL_FOLDER | check [bench/gpu/run.py options]" >&2
    exit 2
    ;;
esac
