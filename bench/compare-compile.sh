#!/usr/bin/env bash
# Side by side: the compile bench of two builds, alternating, on this machine at once.
#   bench/compare-compile.sh OLD_BENCH_BINARY NEW_BENCH_BINARY [ROUNDS]
# Build each with `cargo bench --bench compile --no-run` (at the two commits) and pass the
# printed executables. Each round runs OLD then NEW with --no-nft (10 timed compiles of the
# 10k-route set each); per round it prints the 10k compile median and min of both, and at
# the end the median over rounds of NEW/OLD for the medians and for the mins (the min is
# the steadier figure on a shared machine).
set -euo pipefail
old=$1 new=$2 rounds=${3:-5}
med_ratios=() min_ratios=()
for i in $(seq "$rounds"); do
  for which in old new; do
    bin=${!which}
    row=$("$bin" --no-nft 2>/dev/null | grep '^| 10000 |')
    # | routes | runs | script | load+validate | lower | render | compile | ...: "median / min"
    read -r med min < <(echo "$row" | awk -F'|' '{ split($8, a, " / "); print a[1] + 0, a[2] + 0 }')
    printf 'round %d %-3s 10k compile median %s ms, min %s ms\n' "$i" "$which" "$med" "$min"
    eval "med_$which=$med min_$which=$min"
  done
  med_ratios+=("$(awk -v n="$med_new" -v o="$med_old" 'BEGIN { printf "%.4f", n / o }')")
  min_ratios+=("$(awk -v n="$min_new" -v o="$min_old" 'BEGIN { printf "%.4f", n / o }')")
done
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { printf "%.4f", a[int((NR + 1) / 2)] }'; }
printf 'new/old of the medians per round: %s\n' "${med_ratios[*]}"
printf 'new/old of the mins per round:    %s\n' "${min_ratios[*]}"
printf 'median over %d rounds: new/old %s (medians), %s (mins)\n' "$rounds" "$(median "${med_ratios[@]}")" "$(median "${min_ratios[@]}")"
