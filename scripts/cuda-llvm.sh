#!/usr/bin/env bash
# Installs what the `cuda` feature needs beyond crates, from PyPI instead of GitHub:
#
# - LLVM 23, to build. cubecl-cuda links LLVM through cubecl-llvm, whose build script
#   (tracel-llvm-bundler 23.1.0-4) downloads an LLVM 23 bundle from GitHub unless
#   $XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4 (XDG_DATA_HOME defaults to ~/.local/share)
#   already holds one, marked by a `.tracel-llvm-installed` file. PyPI's mlc-llvm-static wheels
#   carry LLVM 23.1.1 as static libraries, headers and an `llvm-config` (the -extra-targets
#   wheel adds NVPTX and the other backends the bundler initialises); they are laid out there.
# - libdevice, to run: the CUDA toolkit's math library (exp, erf, tanh), which CubeCL links
#   into every kernel that calls them. Machines with a CUDA toolkit have it; for the others it
#   comes from PyPI's nvidia-cuda-nvcc wheel into $XDG_DATA_HOME/bert-peft/cuda, where
#   `trainer` finds it when neither CUDA_PATH nor a system toolkit has one.
#
#   bash scripts/cuda-llvm.sh && cargo build --release -p trainer --features cuda
#
# fetches nothing beyond the package registries. Each part is installed once (per machine, or
# per XDG_DATA_HOME) and skipped when present. Needs python3 with pip, also at build time
# (`llvm-config` is a Python script).
set -euo pipefail

llvm_version=23.1.1.post0
nvcc_version=12.9.86
python="${PYTHON:-python3}"
data="${XDG_DATA_HOME:-$HOME/.local/share}"

# Downloads wheels ($2...) into a temp directory beside $1 and unpacks them there; prints it.
# Unpacking beside the destination makes the final step a rename: an interrupted run leaves
# nothing half-filled that would be taken as installed.
unpack() {
  local parent work
  parent="$(dirname "$1")"
  shift
  mkdir -p "$parent"
  work="$(mktemp -d "$parent/.cuda-deps.XXXXXX")"
  "$python" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -q \
    -d "$work/wheels" "$@" >&2
  "$python" - "$work" <<'PY'
import pathlib, sys, zipfile
work = pathlib.Path(sys.argv[1])
for wheel in sorted((work / "wheels").glob("*.whl")):
    zipfile.ZipFile(wheel).extractall(work / "unpacked")
PY
  echo "$work"
}

llvm="$data/tracel/tracel-llvm-23.1.0-4"
if [ -e "$llvm/.tracel-llvm-installed" ]; then
  echo "LLVM for cubecl: already in $llvm"
else
  work="$(unpack "$llvm" "mlc-llvm-static==$llvm_version" "mlc-llvm-static-extra-targets==$llvm_version")"
  trap 'rm -rf "$work"' EXIT
  static="$work/unpacked/mlc_llvm_static/static"
  for d in bin lib include share; do
    [ -d "$static/$d" ] || { echo "error: the LLVM wheels hold no $d/ directory" >&2; exit 1; }
  done
  chmod +x "$static/bin/"*
  touch "$static/.tracel-llvm-installed"
  rm -rf "$llvm"
  mv "$static" "$llvm"
  rm -rf "$work"
  echo "LLVM $llvm_version for cubecl: installed in $llvm"
fi

toolkit="$data/bert-peft/cuda"
if [ -f "$toolkit/nvvm/libdevice/libdevice.10.bc" ]; then
  echo "libdevice: already in $toolkit"
else
  work="$(unpack "$toolkit" "nvidia-cuda-nvcc-cu12==$nvcc_version")"
  trap 'rm -rf "$work"' EXIT
  bitcode="$work/unpacked/nvidia/cuda_nvcc/nvvm/libdevice/libdevice.10.bc"
  [ -f "$bitcode" ] || { echo "error: the nvcc wheel holds no libdevice.10.bc" >&2; exit 1; }
  mkdir -p "$work/toolkit/nvvm/libdevice"
  mv "$bitcode" "$work/toolkit/nvvm/libdevice/"
  rm -rf "$toolkit"
  mv "$work/toolkit" "$toolkit"
  rm -rf "$work"
  echo "libdevice (nvidia-cuda-nvcc $nvcc_version): installed in $toolkit"
fi
