#!/usr/bin/env bash
# The whole test suite, as README and CI run it. Installs what the tests need first:
# Fashion-MNIST (Debian package), ONNX Runtime + onnx (PyPI), Open MPI: see scripts/setup.sh.
# Then the multi-process tests: the `mpi` build, two ranks under mpirun (tests/distributed.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# No incremental compilation state: a test run from a clean clone never reuses it, and it
# would add ~1.5 GB to the target folder.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo test --workspace --locked "$@"
cargo test --workspace --locked --features simclr/mpi --test distributed "$@"
