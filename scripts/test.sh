#!/usr/bin/env bash
# The whole test suite, as README and CI run it. Installs what the tests need first:
# Fashion-MNIST (Debian package) and ONNX Runtime + onnx (PyPI): see scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace --locked "$@"
