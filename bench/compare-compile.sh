#!/usr/bin/env bash
# Side by side: the compile bench of two builds, alternating, on this machine at once.
#   bench/compare-compile.sh OLD_BENCH_BINARY NEW_BENCH_BINARY [ROUNDS]
# Build each with `cargo bench --bench compile --no-run` (at the two commits) and pass the
# printed executables. Each round runs OLD then NEW with --no-nft; the 10k row's compile
# median of every run is printed, then the median over rounds of NEW / OLD.
set -euo pipefail
old=$1 new=$2 rounds=${3:-5}
ratios=()
for i in $(seq "$rounds"); do
  for which in old new; do
    bin=${!which}
    row=$("$bin" --no-nft 2>/dev/null | grep '^| 10000 |')
    # | routes | runs | script | load+validate | lower | render | compile | ...: "median / min"
    ms=$(echo "$row" | awk -F'|' '{ split($8, a, " / "); gsub(/ /, "", a[1]); print a[1] }')
    printf 'round %d %-3s 10k compile median %s ms\n' "$i" "$which" "$ms"
    eval "ms_$which=$ms"
  done
  ratios+=("$(awk -v n="$ms_new" -v o="$ms_old" 'BEGIN { printf "%.4f", n / o }')")
done
printf 'new/old per round: %s\n' "${ratios[*]}"
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ a[NR] = $1 } END { printf "median new/old: %.4f\n", a[int((NR + 1) / 2)] }'
