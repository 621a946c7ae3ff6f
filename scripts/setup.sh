#!/usr/bin/env bash
# Installs what the tests and shipped definitions use. Idempotent; needs root (or sudo) only
# when something is missing.
# - Fashion-MNIST (Debian package dataset-fashion-mnist) for the `idx` source;
# - ONNX Runtime and Python's onnx package (PyPI) for `simclr export --verify`, `simclr embed`
#   with .onnx models, and the export tests (onnx.checker is an independent check).
set -euo pipefail
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y dataset-fashion-mnist || { $SUDO apt-get update && $SUDO apt-get install -y dataset-fashion-mnist; }
fi
if ! python3 -c "import onnxruntime, onnx, numpy; assert onnxruntime.__version__ == '1.31.1'" 2>/dev/null; then
  PIP="python3 -m pip install --disable-pip-version-check --quiet"
  $PIP onnxruntime==1.31.1 onnx==1.23.2 || $PIP --user onnxruntime==1.31.1 onnx==1.23.2
fi
# - Open MPI and libclang for the multi-process tests (`--features mpi`: mpi-sys compiles a
#   shim with mpicc and generates its bindings with bindgen, which loads libclang).
if ! command -v mpirun >/dev/null 2>&1 || ! command -v mpicc >/dev/null 2>&1 \
  || ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  PKGS="libopenmpi-dev openmpi-bin libclang-dev"
  $SUDO apt-get install -y $PKGS || { $SUDO apt-get update && $SUDO apt-get install -y $PKGS; }
fi
