#!/usr/bin/env bash
# Builds runtime_ops/ into micronet_onnx/_lib/libmicronet_ops.so (Release, -O3).
#   PYTHON=/abs/path/python bash runtime_ops/build.sh      (what `make lib` runs)
# Headers: see fetch_ort_headers.sh ($ORT_INCLUDE_DIR, system, or Debian trixie's libonnxruntime-dev).
# Re-running only rebuilds what changed. When $PYTHON has onnxruntime, the result is loaded into it
# once as a smoke check.
#   SANITIZE=1 bash runtime_ops/build.sh   AddressSanitizer + UBSan build into runtime_ops/build-sanitize/
#                                          (the packaged library is left alone; `make test-sanitize` uses it)
#   BUILD_DIR=/abs/dir bash runtime_ops/build.sh
#                                          build in /abs/dir and leave the library there (not installed into
#                                          micronet_onnx/_lib; point MICRONET_OPS_LIBRARY at it)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
OUT_DIR="$ROOT/micronet_onnx/_lib"
if [ -n "${BUILD_DIR:-}" ]; then
  OUT_DIR="$BUILD_DIR/out"
else
  BUILD_DIR="$HERE/build"
fi
LIB_NAME=libmicronet_ops.so
BUILD_TYPE=Release
CXX_FLAGS=""
if [ "${SANITIZE:-0}" = 1 ]; then
  [ "$BUILD_DIR" != "$HERE/build" ] || BUILD_DIR="$HERE/build-sanitize"
  OUT_DIR="$BUILD_DIR/out"
  BUILD_TYPE=Debug
  CXX_FLAGS="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined"
fi

die() { echo "runtime_ops/build.sh: error: $*" >&2; exit 1; }

command -v cmake >/dev/null 2>&1 || die "cmake not found (Debian: apt-get install cmake)"
command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || die "no C++ compiler found (Debian: apt-get install g++)"

ORT_INC="$(bash "$HERE/fetch_ort_headers.sh")" || die "no onnxruntime C API headers (see the message above)"

mkdir -p "$BUILD_DIR"
cmake -S "$HERE" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DCMAKE_CXX_FLAGS="$CXX_FLAGS" \
  -DORT_INCLUDE_DIR="$ORT_INC" > "$BUILD_DIR/configure.log" 2>&1 || {
  cat "$BUILD_DIR/configure.log" >&2
  die "cmake configure failed"
}
cmake --build "$BUILD_DIR" --parallel "$(nproc 2>/dev/null || echo 2)" || die "compilation failed"

LIB="$BUILD_DIR/$LIB_NAME"
[ -f "$LIB" ] || die "the build produced no $LIB"
# The library must get the onnxruntime API only through RegisterCustomOps, never by linking.
if command -v readelf >/dev/null 2>&1; then
  if readelf -d "$LIB" | grep NEEDED | grep -i onnxruntime >/dev/null; then die "$LIB_NAME links against onnxruntime"; fi
  readelf --dyn-syms -W "$LIB" | grep ' RegisterCustomOps$' >/dev/null || die "$LIB_NAME does not export RegisterCustomOps"
fi
# ... and export nothing else (exports.map): no helper or C++ runtime symbol of ours can clash with the
# host process's.
if command -v nm >/dev/null 2>&1; then
  EXPORTED="$(nm -D --defined-only "$LIB" | awk '{print $NF}' | sort -u)"
  [ "$EXPORTED" = "RegisterCustomOps" ] ||
    die "$LIB_NAME must export only RegisterCustomOps (runtime_ops/exports.map), it exports: $(echo $EXPORTED)"
fi

mkdir -p "$OUT_DIR"
cp "$LIB" "$OUT_DIR/.$LIB_NAME.tmp"
mv -f "$OUT_DIR/.$LIB_NAME.tmp" "$OUT_DIR/$LIB_NAME"

if [ "${SANITIZE:-0}" = 1 ]; then
  echo "runtime_ops/build.sh: built $OUT_DIR/$LIB_NAME (sanitizers: load it with LD_PRELOAD of libasan and libubsan)"
elif [ -n "${PYTHON:-}" ] && "$PYTHON" -c "import onnxruntime" >/dev/null 2>&1; then
  "$PYTHON" - "$OUT_DIR/$LIB_NAME" <<'PY' || die "the library does not load into onnxruntime (see above)"
import sys

import onnxruntime as ort

options = ort.SessionOptions()
options.register_custom_ops_library(sys.argv[1])
print(f"runtime_ops/build.sh: {sys.argv[1]} loads into onnxruntime {ort.__version__}")
PY
else
  echo "runtime_ops/build.sh: built $OUT_DIR/$LIB_NAME"
fi
