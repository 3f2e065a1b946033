#!/usr/bin/env bash
# Fuzz every reader for a long time (CI runs a few hundred cases; this runs as many as asked).
#   scripts/fuzz_readers.sh            # 20,000 cases per reader test, new random cases each run
#   scripts/fuzz_readers.sh 200000     # hours
# Failing files land in tests/fuzz/failures/ (shrunk by hypothesis); hypothesis keeps its
# examples in tests/fuzz/.hypothesis so a failure replays first on the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
export MEDREFINE_FUZZ_EXAMPLES="${1:-20000}"
exec python -m pytest -q -p no:cacheprovider tests/fuzz "${@:2}"
