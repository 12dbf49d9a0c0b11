#!/usr/bin/env bash
# Fuzzes every cargo-fuzz target of fuzz/ for FUZZ_SECONDS seconds each (default 30) and exits
# non-zero when any target crashes (the failing input is left in fuzz/artifacts/<target>/; keep
# it as a regression: copy it to fuzz/regressions/<target>/, `cargo test --test
# fuzz_regressions` replays it).
#
#   FUZZ_SECONDS=60 scripts/fuzz.sh                 # all targets
#   FUZZ_SECONDS=60 scripts/fuzz.sh payload_hash    # some targets
#
# FUZZ_SANITIZER (default `none`): the code under test is safe Rust (`unsafe_code = "forbid"`),
# so AddressSanitizer adds build time and halves speed for little; `address` turns it on.
# cargo-fuzz passes nightly-only flags to rustc; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-30}
sanitizer=${FUZZ_SANITIZER:-none}
export RUSTC_BOOTSTRAP=1

# CARGO_FUZZ_ROOT: where cargo-fuzz is installed when missing (CI keeps it in its cache).
# FUZZ_TARGET_DIR: the fuzz build directory (default fuzz/target), so a cache can outlive a clone.
if [ -n "${CARGO_FUZZ_ROOT:-}" ]; then
  export PATH="$CARGO_FUZZ_ROOT/bin:$PATH"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked ${CARGO_FUZZ_ROOT:+--root "$CARGO_FUZZ_ROOT"}
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

build=(--sanitizer "$sanitizer" --debug-assertions --target-dir "${FUZZ_TARGET_DIR:-fuzz/target}")
echo "==> building fuzz targets (${targets[*]})"
cargo fuzz build "${build[@]}"

failed=()
for target in "${targets[@]}"; do
  echo "==> fuzzing $target for ${seconds}s"
  mkdir -p "fuzz/corpus/$target"
  corpora=("fuzz/corpus/$target")
  [ -d "fuzz/seeds/$target" ] && corpora+=("fuzz/seeds/$target")
  [ -d "fuzz/regressions/$target" ] && corpora+=("fuzz/regressions/$target")
  options=(-max_total_time="$seconds" -print_final_stats=1)
  [ -f "fuzz/dicts/$target.dict" ] && options+=(-dict="fuzz/dicts/$target.dict")
  if ! cargo fuzz run "${build[@]}" "$target" "${corpora[@]}" -- "${options[@]}"; then
    echo "!!> $target failed; the input is in fuzz/artifacts/$target/" >&2
    failed+=("$target")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzzing found failures in: ${failed[*]}" >&2
  exit 1
fi
echo "==> no crashes in ${targets[*]} (${seconds}s each)"
