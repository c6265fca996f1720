#!/usr/bin/env bash
# Turns the output folder of one scripts/gpu-sweep device call into the long-context docs:
#   bench/make_long_context_docs.sh GPU_OUT_DIR [DOCS_DIR]
# (GPU_OUT_DIR: the folder the device tool brought back, holding sweep.tgz, or an unpacked one)
# writes DOCS_DIR/long-context.md (the tables: prefill, decode, memory per sequence, largest
# batch per context, Jamba's KV at 256K, the memory planner vs measured, the state drift) and its
# charts DOCS_DIR/long-context/context_{decode,memory,batch}.png (bench/plot_context_sweep.sh),
# and updates the "Long context" section of README.md (between its long-context markers, or
# before "## Engine design" the first time) when DOCS_DIR is docs/ (the default).
# Nothing is committed: look at the charts and the page, then commit them with README.md.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 GPU_OUT_DIR [DOCS_DIR]" >&2; exit 2; }
src=$(cd "$1" && pwd)
if [ -f "$src/sweep.tgz" ]; then  # what scripts/gpu-sweep leaves: everything in one archive
  unpacked=$(mktemp -d)
  trap 'rm -rf "$unpacked"' EXIT
  tar xzf "$src/sweep.tgz" -C "$unpacked"
  src=$unpacked
fi
cd "$(dirname "$0")/.."
docs=${2:-docs}
mkdir -p "$docs/long-context"

specs=()
for pair in "mamba2:Mamba-2 2.7B" "llama:Llama 2.5B (GQA)" "jamba:Jamba-v0.1 (52B, 12B active)"; do
  key=${pair%%:*} label=${pair#*:}
  [ -s "$src/sweep-$key.json" ] && specs+=("$label=$src/sweep-$key.json")
done
if [ ${#specs[@]} -gt 0 ]; then
  device=H200
  grep -q "^device: cpu" "$src/machine.txt" 2>/dev/null && device="CPU (dry run)"
  PLOT_DEVICE=$device bash bench/plot_context_sweep.sh "$docs/long-context" "${specs[@]}"
else
  echo "no sweep-*.json in $src: no charts"
fi
python3 bench/long_context_report.py "$src" --out "$docs/long-context.md" --plots long-context
echo "wrote $docs/long-context.md"

[ "$docs" = docs ] || exit 0
python3 bench/long_context_report.py "$src" --readme > "$docs/long-context/.readme-section.md"
python3 - README.md "$docs/long-context/.readme-section.md" <<'PY'
import sys
readme, section = sys.argv[1], open(sys.argv[2]).read().rstrip() + "\n"
begin, end = "<!-- long-context:begin -->", "<!-- long-context:end -->"
text = open(readme).read()
block = f"{begin}\n{section}{end}\n"
if begin in text and end in text:
    head, rest = text.split(begin, 1)
    text = head + block + "\n" + rest.split(end, 1)[1].lstrip("\n")
else:
    anchor = "## Engine design in one paragraph"
    assert anchor in text, f"README.md has no '{anchor}' to put the section before"
    text = text.replace(anchor, block + "\n" + anchor, 1)
open(readme, "w").write(text)
PY
rm -f "$docs/long-context/.readme-section.md"
echo "updated the Long context section of README.md"
