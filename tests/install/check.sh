#!/usr/bin/env bash
# The install test (CTest install_tree, docs/install.md): `cmake --install` of BUILD into a prefix, the prefix moved,
# then with the checkout and the build tree hidden (an empty tmpfs over each, in a private mount namespace) the main
# job's tools run from the prefix: prepare, train, perplexity, sample with a text prompt, generate; and a C program
# links the library through the CMake package and through pkg-config.
# Usage: tests/install/check.sh SOURCE_DIR BUILD_DIR LOG_DIR   (the work itself happens in a temporary folder outside
# both trees, which the logs are copied from into LOG_DIR)
set -euo pipefail
src=$1 build=$2 logs=$3
work=$(mktemp -d "${TMPDIR:-/tmp}/hdlm-install.XXXXXX")
trap 'rm -rf "$logs" && mkdir -p "$logs" && cp "$work"/*.log "$work"/*.txt "$logs"/ 2> /dev/null; rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/staged" > "$work/install.log"
mv "$work/staged" "$work/prefix"   # a moved prefix must still find its own files
prefix=$work/prefix
head -c 60000 "$src/.cache/moby-dick/data/data.txt" > "$work/train.txt"
tail -c 20000 "$src/.cache/moby-dick/data/data.txt" > "$work/valid.txt"
mkdir -p "$work/prog"
cat > "$work/prog/prog.c" <<'C'
#include <stdio.h>
#include "hdlm/tokenizer.h"
int main(int argc, char **argv) {   // the GPT-2 ids of "Hello world" with the installed tokenizer files
    hdlm_tokenizer *tok;
    hdlm_tokens t = {0};
    if (argc < 2 || hdlm_tokenizer_load_dir(&tok, argv[1]) || hdlm_tokenizer_encode(tok, "Hello world", 11, &t)) return 1;
    printf("%u %u\n", t.ids[0], t.ids[1]);
    hdlm_tokens_free(&t);
    hdlm_tokenizer_free(tok);
    return 0;
}
C
cat > "$work/prog/CMakeLists.txt" <<'C'
cmake_minimum_required(VERSION 3.25)
project(prog LANGUAGES C)
find_package(hdlm 0.1 REQUIRED)
add_executable(prog prog.c)
target_link_libraries(prog PRIVATE hdlm::hdlm)
C
# Hides the checkout and the build tree when a private mount namespace is allowed (root, unshare); else says so
# and runs from the moved prefix only.
hide=()
if unshare -m true 2> /dev/null; then
  hide=(unshare -m bash -c "mount -t tmpfs none '$src' && { [ -d '$build' ] && mount -t tmpfs none '$build' || true; } && exec bash -s")
  echo "install test: checkout and build tree hidden"
else
  hide=(bash -s)
  echo "install test: no private mount namespace here; the tools run from a moved prefix with the checkout in place"
fi
cc=$(command -v cc || command -v gcc)
"${hide[@]}" <<SCRIPT
set -euo pipefail
[ -z "\$(ls -A '$src')" ] || [ "${#hide[@]}" -eq 2 ]
export PATH='$prefix/bin':\$PATH OMPI_MCA_ess_singleton_isolated=1 OMP_NUM_THREADS=1 ASAN_OPTIONS=detect_leaks=0
unset HDLM_VOCAB
cd '$work'
hdlm-prep prepare --out data/text/shards train.txt --val-input valid.txt > prep.log
hdlm-train --config tiny data.train=data/text/shards data.valid=data/text/shards run.dir=run training.n_iters=4 \
  training.log_freq=2 training.eval_freq=4 training.snapshot_freq=4 training.eval_batches=1 > train.log
hdlm-eval perplexity --ckpt run --data data/text/shards --max-chunks 2 --copies 2 --rounds 2 --json > ppl.txt
hdlm-eval sample --ckpt run --n 2 --steps 4 --prompt 'Call me Ishmael' --out samples.jsonl > sample.log 2>&1
grep -q '"prompt":"Call me Ishmael"' samples.jsonl
hdlm-eval generate --ckpt run --prompt 'Call me' --steps 4 > generated.txt 2> generate.log
grep -q '^Call me' generated.txt
cmake -S prog -B prog/build-cmake -DCMAKE_PREFIX_PATH='$prefix' > prog/cmake.log
cmake --build prog/build-cmake > prog/build.log
[ "\$(prog/build-cmake/prog '$prefix/share/hdlm/gpt2')" = "15496 995" ]
$cc prog/prog.c -o prog/prog-pc \$(PKG_CONFIG_PATH='$prefix/lib/pkgconfig' pkg-config --cflags --libs hdlm)
[ "\$(prog/prog-pc '$prefix/share/hdlm/gpt2')" = "15496 995" ]
SCRIPT
echo "install test: passed (logs in $logs)"
