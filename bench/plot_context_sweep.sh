#!/usr/bin/env bash
# Charts of `statelm bench --sweep context` runs, one JSON file per model:
#   bench/plot_context_sweep.sh OUT_DIR "LABEL=sweep.json" ["LABEL=sweep.json" ...]
# writes, one line per model, context on a log axis (1K ... 1M):
#   OUT_DIR/context_decode.png  decode time per step (batch 1, ms, log axis)
#   OUT_DIR/context_memory.png  state + KV cache per sequence (log axis), with the device's free
#                               memory as a dashed line: where a line crosses it, one sequence
#                               no longer fits (those points are drawn hollow)
#   OUT_DIR/context_batch.png   the largest batch that fits (log axis)
# A context that does not fit ends its model's decode and batch lines. The titles name the
# device (PLOT_DEVICE, default "H200") and the weights' dtype (from the JSON). Needs gnuplot
# (Debian: gnuplot-nox, installed here when missing) and python3.
set -euo pipefail
out="$1"; shift
[ $# -ge 1 ] || { echo "usage: $0 OUT_DIR LABEL=sweep.json ..." >&2; exit 2; }
if ! command -v gnuplot >/dev/null; then
  sudo_apt=$(command -v sudo || true)
  $sudo_apt apt-get install -y gnuplot-nox >/dev/null
fi
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The data (one TSV per model) and the gnuplot script, from the JSON files.
PYTHONPATH="$(dirname "$0")" python3 - "$out" "$tmp" "${PLOT_DEVICE:-H200}" "$@" > "$tmp/plot.gp" <<'PY'
import json, math, sys

from long_context_report import ctx as ctx_name  # 1024 -> 1K: the page's names for contexts

out, tmp, device, specs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


def decades(lo, hi):
    return range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)


def bytes_name(e):  # 10^e bytes
    for unit, k in (("TB", 12), ("GB", 9), ("MB", 6), ("KB", 3), ("B", 0)):
        if e >= k:
            return f"{10 ** (e - k)} {unit}"
    return f"1e{e} B"


def count_name(e):
    for unit, k in (("M", 6), ("K", 3), ("", 0)):
        if e >= k:
            return f"{10 ** (e - k)}{unit}"


contexts, decode, memory, batch = set(), [], [], []
mem_lo, mem_hi, batch_hi, free, dtypes = math.inf, 0, 1, 0, set()
for i, spec in enumerate(specs):
    label, path = spec.split("=", 1)
    label = label.replace('"', "'")
    j = json.load(open(path))
    free = free or j.get("available_bytes", 0)
    dtypes.add(j.get("compute_dtype", "bfloat16" if j.get("device") == "cuda" else "float32"))
    data = f"{tmp}/{i}.tsv"
    any_nofit = False
    points = j["points"]
    last_fit = max((k for k, p in enumerate(points) if p["max_batch"] >= 1), default=-1)
    with open(data, "w") as f:
        for k, p in enumerate(points):
            fits = p["max_batch"] >= 1
            any_nofit |= not fits
            b = p["bytes_per_sequence"]
            if b > 0:
                mem_lo, mem_hi = min(mem_lo, b), max(mem_hi, b)
            batch_hi = max(batch_hi, p["max_batch"])
            contexts.add(p["context"])
            ms = p.get("decode_ms_per_step")
            # columns: context, decode ms, bytes (fits), bytes (does not fit), max batch, bytes
            # from the last context that fits on (the dashed line into the hollow points)
            cols = [p["context"], "?" if ms is None else ms, b if fits else "?", "?" if fits else b,
                    p["max_batch"] if fits else "?", b if k >= last_fit >= 0 else "?"]
            print(*cols, sep="\t", file=f)
    c = COLORS[i % len(COLORS)]
    style = f"with linespoints lw 2.5 pt 7 ps 1.4 lc rgb '{c}'"
    decode.append(f"'{data}' using 1:2 {style} title \"{label}\"")
    memory.append(f"'{data}' using 1:3 {style} title \"{label}\"")
    if any_nofit:
        memory.append(f"'{data}' using 1:6 with lines dt 2 lw 2 lc rgb '{c}' notitle")
        memory.append(f"'{data}' using 1:4 with points pt 6 ps 1.6 lw 2 lc rgb '{c}' notitle")
    batch.append(f"'{data}' using 1:5 {style} title \"{label}\"")

ctx = sorted(contexts)
weights = "/".join(sorted({"bfloat16": "bf16", "float32": "fp32"}.get(d, d) for d in dtypes))
mem_hi = max(mem_hi, free)
mem_tics = ", ".join(f'"{bytes_name(e)}" 1e{e}' for e in decades(mem_lo / 2, mem_hi * 2))
batch_tics = ", ".join(f'"{count_name(e)}" 1e{e}' for e in decades(1, batch_hi * 2))
print(f"""set terminal pngcairo size 1100,700 font "sans,13"
set datafile separator "\\t"
set datafile missing "?"
set logscale x 2
set xrange [{ctx[0] / 1.5}:{ctx[-1] * 1.5}]
set xtics ({", ".join(f'"{ctx_name(c)}" {c}' for c in ctx)})
set xlabel "context: tokens the sequence holds (log scale)"
set logscale y 10
set grid xtics ytics lc rgb "#dddddd"
set key at screen 0.5, screen 0.035 center bottom horizontal maxcols 3 box width 0 samplen 3
set bmargin 7

set output "{out}/context_decode.png"
set title "Decode time per step vs context — {device}, {weights} weights, batch 1"
set ylabel "decode time per step (ms, log scale)"
set format y "%g"
plot {", ".join(decode)}

set output "{out}/context_memory.png"
set title "Memory one sequence needs (state + KV cache) vs context — {device}"
set ylabel "state + KV cache per sequence (log scale)"
set yrange [{mem_lo / 2}:{mem_hi * 2}]
set ytics ({mem_tics})""")
if free > 0:
    print(f"""set arrow from graph 0, first {free} to graph 1, first {free} nohead dt 2 lw 2 lc rgb "#555555"
set label "{device} memory free before loading the weights: {free / 1e9:.0f} GB" at graph 0.02, first {free} offset 0,-0.9 textcolor rgb "#555555\"""")
print(f"""plot {", ".join(memory)}
unset arrow
unset label

set output "{out}/context_batch.png"
set title "Largest batch of sequences of that context that fits beside the weights — {device}"
set ylabel "sequences (log scale)"
set yrange [0.7:{batch_hi * 2}]
set ytics ({batch_tics})
plot {", ".join(batch)}""")
PY
gnuplot "$tmp/plot.gp"
echo "wrote $out/context_decode.png, $out/context_memory.png and $out/context_batch.png"
