#!/usr/bin/env bash
# The whole test suite, as README and CI run it. Installs what the tests need first:
# Fashion-MNIST (Debian package dataset-fashion-mnist) for the `idx` source.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace --locked "$@"
