#!/usr/bin/env bash
# buf lint and buf breaking on a protos directory (default: protos/), the API check `make test` runs.
#
# Breaking is judged against the protos of the last commit on main (first-parent history) that changed
# them; when that commit is HEAD itself (CI on main just after a proto change), against the one before
# it. So a feature branch is held to what main serves, and main to what it served before.
#   tools/api_check.sh [PROTOS_DIR]     API_BASE_REF=<ref> overrides main (default: main, else origin/main)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-protos}
buf=node_modules/.bin/buf
[ -x "$buf" ] || { echo "api_check: $buf is missing: run \`npm ci\` in the repository root (make api does)" >&2; exit 2; }

"$buf" lint "$dir"

ref=${API_BASE_REF:-main}
if ! git rev-parse -q --verify "$ref^{commit}" >/dev/null; then
  git rev-parse -q --verify "origin/$ref^{commit}" >/dev/null \
    || { echo "api_check: no branch $ref or origin/$ref to compare the protos against" >&2; exit 2; }
  ref=origin/$ref
fi
base=$(git rev-list -1 --first-parent "$ref" -- protos)
if [ "$base" = "$(git rev-parse HEAD)" ]; then
  base=$(git rev-list -1 --first-parent "$base^" -- protos)
fi
if [ -z "$base" ]; then
  echo "api_check: buf lint passed; no earlier protos on $ref to check breaking changes against"
  exit 0
fi

baseline=$(mktemp -d)
trap 'rm -rf "$baseline"' EXIT
git archive "$base" protos | tar -x -C "$baseline"
"$buf" breaking "$dir" --against "$baseline/protos"
echo "api_check: buf lint and buf breaking passed ($dir against $(git log -1 --format='%h %s' "$base"))"
