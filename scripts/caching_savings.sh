#!/usr/bin/env bash
# How much the shared cache saves on mnist_split: wall time of naive + rnf over 5 seeds in one
# run (identical stages run once) against the sum of running each (strategy, seed) alone in a
# fresh cache. Together is 166 stages, alone 185: the split and each seed's task-1 train and
# evaluate are shared. Usage, from the repo root: scripts/caching_savings.sh [path/to/cfpipe]
set -euo pipefail
BIN=${1:-target/release/cfpipe}
JOBS=${JOBS:-2} # parallel stages per run; JOBS=1 isolates the saving due to caching alone
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
variant() { # variant OUT STRATEGIES SEEDS: mnist_split.yaml restricted to those
  python3 - "$1" "$2" "$3" <<'PY'
import re, sys
out, keep, seeds = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
src = open("pipelines/mnist_split.yaml").read()
src = re.sub(r"(?m)^seeds: .*$", f"seeds: [{seeds}]", src)
head, strats = src.split("strategies:\n")
blocks = re.split(r"(?m)^(?=  \w)", strats)
kept = [b for b in blocks if b.strip() and b.split(":")[0].strip() in keep]
open(out, "w").write(head + "strategies:\n" + "".join(kept))
PY
}
timed() { # timed CACHE YAML -> seconds
  local s e
  s=$(date +%s.%N)
  "$BIN" --cache "$1" run "$2" --jobs "$JOBS" --quiet >/dev/null
  e=$(date +%s.%N)
  python3 -c "print(f'{$e - $s:.2f}')"
}
variant "$WORK/both.yaml" naive,rnf "0, 1, 2, 3, 4"
together=$(timed "$WORK/c_all" "$WORK/both.yaml")
echo "together: naive + rnf x 5 seeds: ${together} s ($("$BIN" --cache "$WORK/c_all" status "$WORK/both.yaml" | tail -1))"
total=0
for strat in naive rnf; do
  for seed in 0 1 2 3 4; do
    variant "$WORK/one.yaml" "$strat" "$seed"
    t=$(timed "$WORK/c_$strat$seed" "$WORK/one.yaml")
    echo "alone: $strat seed $seed: ${t} s"
    total=$(python3 -c "print(f'{$total + $t:.2f}')")
  done
done
echo "alone, summed: ${total} s; caching saved $(python3 -c "print(f'{100 * (1 - $together / $total):.1f}')")%"
