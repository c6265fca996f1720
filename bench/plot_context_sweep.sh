#!/usr/bin/env bash
# Charts of `statelm bench --sweep context --json` runs, one JSON file per model:
#   bench/plot_context_sweep.sh OUT_DIR NAME=sweep.json [NAME=sweep.json ...]
# writes OUT_DIR/context_decode.png (decode ms/step vs context) and OUT_DIR/context_memory.png
# (state + KV bytes per sequence vs context), both on log-log axes, one line per model.
# A point that does not fit on the device ends that model's decode line. Needs gnuplot
# (Debian: gnuplot-nox, installed here when missing) and python3.
set -euo pipefail
out="$1"; shift
[ $# -ge 1 ] || { echo "usage: $0 OUT_DIR NAME=sweep.json ..." >&2; exit 2; }
command -v gnuplot >/dev/null || sudo_apt=$(command -v sudo || true)
command -v gnuplot >/dev/null || $sudo_apt apt-get install -y gnuplot-nox >/dev/null
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

decode_plots=() memory_plots=()
for spec in "$@"; do
  name="${spec%%=*}" file="${spec#*=}"
  # context, decode ms/step (or '?' when not measured), bytes per sequence in GB
  python3 - "$file" > "$tmp/$name.tsv" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
for p in j["points"]:
    ms = p.get("decode_ms_per_step")
    print(p["context"], "?" if ms is None else ms, p["bytes_per_sequence"] / 1e9, sep="\t")
PY
  decode_plots+=("'$tmp/$name.tsv' using 1:2 with linespoints lw 2 pt 7 title '$name'")
  memory_plots+=("'$tmp/$name.tsv' using 1:3 with linespoints lw 2 pt 7 title '$name'")
done
join() { local IFS=","; echo "$*"; }

gnuplot <<GP
set terminal pngcairo size 900,600 font "sans,12"
set logscale x 2
set format x "%.0s%c"
set xlabel "context (tokens)"
set grid
set format y "%g"
set key top left
set datafile missing "?"
set output "$out/context_decode.png"
set logscale y 10
set ylabel "decode time per step, batch 1 (ms)"
set title "Decode step time vs context (H200, bf16 weights)"
plot $(join "${decode_plots[@]}")
set output "$out/context_memory.png"
set ylabel "state + KV cache per sequence (GB)"
set title "Memory per sequence vs context"
plot $(join "${memory_plots[@]}")
GP
echo "wrote $out/context_decode.png and $out/context_memory.png"
