#!/usr/bin/env bash
# Builds hdlm and runs the whole test suite (CTest + CMocka). Installs what is missing first (tools/setup.sh).
# Usage: tools/test.sh [--sanitize]   (--sanitize: AddressSanitizer + UndefinedBehaviorSanitizer build in build-asan/)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/tools/setup.sh"
build="$root/build" flags=()
if [ "${1:-}" = "--sanitize" ]; then build="$root/build-asan"; flags=(-DHDLM_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo); fi
cmake -S "$root" -B "$build" "${flags[@]}" >/dev/null
cmake --build "$build" -j "$(nproc)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cd "$build" && ctest --output-on-failure -j "$(nproc)"
