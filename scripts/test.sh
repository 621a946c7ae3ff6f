#!/usr/bin/env bash
# The whole test suite, as README and CI run it. Installs nothing yet: the pipeline core needs
# only the Rust toolchain. (Later stages add their data and ONNX Runtime installs here.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked "$@"
