#!/usr/bin/env bash
# Run the C++ unit tests and the Python test suite under AddressSanitizer + UndefinedBehaviorSanitizer.
#
#   tools/sanitize.sh [extra pytest arguments]
#
# 1. C++: configure, build and run the unit tests with the `asan` CMake preset (build-asan/).
# 2. Python: build the `_core` extension with -DCPLAT_SANITIZE=ON (Debug, so CPLAT_ASSERT
#    invariant checks are on) in build-asan-py/, stage a copy of python/cplat with that module in
#    build-asan-py/stage/, and run `pytest -q -x tests` (the pyproject marker filter applies;
#    --capture=sys so that sanitizer reports are not swallowed by pytest's fd capture)
#    with the stage first on PYTHONPATH and the gcc ASan/UBSan runtimes preloaded. The whole
#    suite runs, tests/test_native_safety.py included: its state machine drives the scheduler
#    with random valid and invalid calls, which is what the sanitizers are there to watch. The
#    installed package (editable or not) is left alone: a sitecustomize.py in the stage drops
#    the editable install's import redirect for `cplat`, in subprocesses too.
#
# Needs python3 with the test extras (pip install '.[test]'), g++, and cmake >= 3.24 plus
# ninja and pybind11 (taken from PATH or the Python environment; pip-installed when missing).
# Environment: PYTHON (interpreter to use), CXX_SANITIZE (g++ by default; the preloaded
# runtimes are gcc's, so the extension must be built by gcc), CPLAT_SANITIZE_TESTS (what
# pytest runs, `tests` by default; e.g. tests/test_native_safety.py for a quick check; CI
# leaves it unset).
# Exits non-zero on any failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

step() { printf '\n==> %s\n' "$*"; }
run() {
  printf '+ %s\n' "$*"
  "$@"
}
die() {
  printf 'sanitize.sh: error: %s\n' "$*" >&2
  exit 1
}

T_START=$SECONDS

# --- Tools -------------------------------------------------------------------------------------
step "tools"
if [ -z "${PYTHON:-}" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    PYTHON="$VIRTUAL_ENV/bin/python"
  elif [ -x "$ROOT/.venv/bin/python" ]; then
    PYTHON="$ROOT/.venv/bin/python"
  else
    PYTHON=$(command -v python3 || true)
  fi
fi
[ -n "$PYTHON" ] || die "no python3 found (set PYTHON=...)"
PYTHON=$("$PYTHON" -c 'import sys; print(sys.executable)')
echo "python: $PYTHON ($("$PYTHON" -c 'import sys; print(sys.version.split()[0])'))"
"$PYTHON" -c 'import pytest' 2>/dev/null ||
  die "$PYTHON lacks pytest: run  $PYTHON -m pip install '.[test]'"
# pybind11 is only a build requirement of the package: bring it for the sanitized build.
"$PYTHON" -c 'import pybind11' 2>/dev/null || run "$PYTHON" -m pip install -q "pybind11>=2.13"
# Tools pip installs into this environment (cmake, ninja) live in its scripts directory.
PY_SCRIPTS=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$PATH:$PY_SCRIPTS"

CXX_SANITIZE=${CXX_SANITIZE:-g++}
command -v "$CXX_SANITIZE" > /dev/null || die "$CXX_SANITIZE not found (apt-get install g++)"
need_pip=()
command -v cmake > /dev/null || need_pip+=("cmake>=3.24")
command -v ninja > /dev/null || need_pip+=("ninja")
if [ ${#need_pip[@]} -gt 0 ]; then
  echo "not on PATH: ${need_pip[*]}; installing them into the Python environment"
  run "$PYTHON" -m pip install -q "${need_pip[@]}"
  hash -r
fi
CMAKE_VERSION=$(cmake --version | head -n1 | awk '{print $3}')
echo "cmake: $(command -v cmake) ($CMAKE_VERSION)"
echo "ninja: $(command -v ninja) ($(ninja --version))"
echo "c++:   $(command -v "$CXX_SANITIZE") ($("$CXX_SANITIZE" -dumpfullversion -dumpversion))"
"$PYTHON" - "$CMAKE_VERSION" << 'EOF' || die "cmake >= 3.24 required (pip install 'cmake>=3.24')"
import re, sys
v = tuple(int(x) for x in re.findall(r"\d+", sys.argv[1])[:2])
sys.exit(0 if v >= (3, 24) else 1)
EOF

ASAN_RT=$("$CXX_SANITIZE" -print-file-name=libasan.so)
UBSAN_RT=$("$CXX_SANITIZE" -print-file-name=libubsan.so)
# -print-file-name echoes the bare name when it finds nothing.
[ -e "$ASAN_RT" ] || die "ASan runtime not found ($CXX_SANITIZE -print-file-name=libasan.so)"
[ -e "$UBSAN_RT" ] || die "UBSan runtime not found ($CXX_SANITIZE -print-file-name=libubsan.so)"
echo "asan runtime:  $ASAN_RT"
echo "ubsan runtime: $UBSAN_RT"

# --- 1. C++ unit tests ---------------------------------------------------------------------------
step "C++ unit tests under ASan + UBSan (preset asan, build-asan/)"
T0=$SECONDS
run cmake --preset asan
run cmake --build --preset asan
run ctest --preset asan
T_CPP=$((SECONDS - T0))

# --- 2. Sanitized Python extension ---------------------------------------------------------------
step "Python extension with -DCPLAT_SANITIZE=ON (Debug, build-asan-py/)"
T0=$SECONDS
BUILD_PY="$ROOT/build-asan-py"
PYBIND11_DIR=$("$PYTHON" -m pybind11 --cmakedir)
run cmake -S "$ROOT" -B "$BUILD_PY" -G Ninja \
  -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_COMPILER="$CXX_SANITIZE" \
  -DCPLAT_SANITIZE=ON -DCPLAT_PYTHON=ON -DCPLAT_BUILD_TESTS=OFF \
  -DPython_EXECUTABLE="$PYTHON" \
  -Dpybind11_DIR="$PYBIND11_DIR"
run cmake --build "$BUILD_PY" --target _core

shopt -s nullglob
built=("$BUILD_PY"/_core*.so)
shopt -u nullglob
[ ${#built[@]} -eq 1 ] || die "expected one _core*.so in $BUILD_PY, found ${#built[@]}"
if command -v readelf > /dev/null; then
  readelf -d "${built[0]}" | grep -q 'libasan' || die "${built[0]} is not linked against libasan"
fi

# Stage: a copy of python/cplat with the sanitized module, and the import fix-ups.
STAGE="$BUILD_PY/stage"
run rm -rf "$STAGE"
run mkdir -p "$STAGE"
run cp -R "$ROOT/python/cplat" "$STAGE/cplat"
find "$STAGE/cplat" \( -name '_core*.so' -o -name '__pycache__' \) -prune -exec rm -rf {} +
run cp "${built[0]}" "$STAGE/cplat/"
SANITIZED_CORE="$STAGE/cplat/$(basename "${built[0]}")"

cat > "$STAGE/sitecustomize.py" << 'EOF'
"""Written by tools/sanitize.sh: make `import cplat` load the sanitized copy beside this file.

An editable install puts an import redirect for `cplat` at the front of sys.meta_path, ahead
of PYTHONPATH; drop it (only this process's view, nothing installed is touched). Subprocesses
inherit PYTHONPATH and so run this too. The sitecustomize this file shadows, if any, still runs.
"""

import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _redirects_cplat(finder: object) -> bool:
    known = getattr(finder, "known_source_files", None)
    return isinstance(known, dict) and any(k == "cplat" or k.startswith("cplat.") for k in known)


sys.meta_path[:] = [f for f in sys.meta_path if not _redirects_cplat(f)]
for _name in [m for m in sys.modules if m == "cplat" or m.startswith("cplat.")]:
    del sys.modules[_name]

_others = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _others)
if _spec is not None and _spec.loader is not None:
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
EOF

cat > "$STAGE/cplat_sanitize_check.py" << 'EOF'
"""pytest plugin written by tools/sanitize.sh: refuse to run against anything but the sanitized
cplat._core named by CPLAT_SANITIZED_CORE."""

import os

import pytest


def pytest_sessionstart(session: pytest.Session) -> None:
    import cplat._core as core

    want = os.path.realpath(os.environ["CPLAT_SANITIZED_CORE"])
    got = os.path.realpath(core.__file__ or "")
    if got != want:
        raise pytest.UsageError(f"cplat._core is {got}, not the sanitized build {want}")
EOF
T_BUILD_PY=$((SECONDS - T0))

# --- 3. Python tests against the sanitized module ----------------------------------------------
step "Python tests under ASan + UBSan"
# A sanitizer (or CPLAT_ASSERT) abort kills pytest before it shows what it captured, so pytest
# runs with --capture=sys: native writes to stderr (UBSan reports, assert messages) reach the
# terminal. ASan reports go to files instead (printed below), which also keeps the reports of
# subprocesses whose output a test captures; gcc's UBSan ignores log_path.
SAN_LOGS="$BUILD_PY/sanitizer-logs"
rm -rf "$SAN_LOGS"
mkdir -p "$SAN_LOGS"
SAN_ENV=(
  "LD_PRELOAD=$ASAN_RT:$UBSAN_RT"
  "ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:log_path=$SAN_LOGS/asan"
  "UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1"
  "PYTHONMALLOC=malloc"
  "PYTHONPATH=$STAGE${PYTHONPATH:+:$PYTHONPATH}"
  "CPLAT_SANITIZED_CORE=$SANITIZED_CORE"
)
printf '  %s\n' "${SAN_ENV[@]}"
loaded=$(env "${SAN_ENV[@]}" "$PYTHON" -c 'import cplat._core; print(cplat._core.__file__)')
echo "cplat._core.__file__ = $loaded"
[ "$(realpath "$loaded")" = "$(realpath "$SANITIZED_CORE")" ] ||
  die "the sanitized module was not the one imported"

show_sanitizer_logs() {
  local f
  for f in "$SAN_LOGS"/*; do
    [ -e "$f" ] || continue
    printf '\n--- %s\n' "$f" >&2
    cat "$f" >&2
  done
}

T0=$SECONDS
rc=0
read -r -a SANITIZE_TESTS <<< "${CPLAT_SANITIZE_TESTS:-tests}"
run env "${SAN_ENV[@]}" "$PYTHON" -m pytest -q -x --capture=sys -p cplat_sanitize_check \
  "${SANITIZE_TESTS[@]}" "$@" || rc=$?
T_PY=$((SECONDS - T0))
show_sanitizer_logs
if [ "$rc" -ne 0 ]; then
  die "Python tests failed under the sanitizers (pytest exit status $rc, ${T_PY}s)"
fi
if compgen -G "$SAN_LOGS/*" > /dev/null; then
  die "sanitizer reports were written (see above) although pytest passed"
fi

step "all sanitizer runs passed"
printf '  C++ unit tests (configure, build, ctest): %ss\n' "$T_CPP"
printf '  sanitized Python extension build:         %ss\n' "$T_BUILD_PY"
printf '  Python tests:                             %ss\n' "$T_PY"
printf '  total:                                    %ss\n' "$((SECONDS - T_START))"
