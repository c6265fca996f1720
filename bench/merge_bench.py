#!/usr/bin/env python3
"""One markdown table of statelm against its peers, measured in the same device call
(scripts/gpu-bench): case, shape, statelm, peer, speed-up, fraction of the physical limit, the goal
from ../shared/TARGETS.md, and whether it was met.

Inputs (any may be missing; its rows then show "—"):
  --kernels  JSON of statelm_cuda_kernel_bench (bench/cuda): per-op times, bytes, FLOPs, and the
             copy bandwidth and bf16 matmul rate it measured (the peer's ceiling shapes)
  --e2e      JSON files of `statelm bench --random-weights --json` (told apart by architecture
             and state dtype)
  --peers    peers.json of the peer script (peer_bench.py): its structured `parts` are read,
             not the value strings of its table

Columns:
  speed-up   peer time / statelm time (> 1: statelm is faster)
  % limit    the shortest time the hardware allows, max(bytes / copy bandwidth, FLOPs / matmul
             rate), over statelm's time; both ceilings measured in the same call (the kernel
             bench's, else the e2e run's)
  met        by the speed-up over the peer where the goal is one and the peer was measured; by
             the absolute figure where TARGETS.md gives one and there is no peer; "—" otherwise
Only the standard library: python3 bench/merge_bench.py --kernels k.json --e2e a.json b.json
--peers peers.json [--out results.md]
"""
import argparse
import json
import os
import sys

DASH = "—"


def load(path, notes):
    if not path:
        return None
    if not os.path.exists(path):
        notes.append(f"{path}: missing")
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        notes.append(f"{path}: unreadable ({e})")
        return None


def fmt_ms(ms):
    if ms is None:
        return DASH
    if ms < 0.1:
        return f"{ms * 1e3:.1f} µs"
    if ms < 10:
        return f"{ms:.3f} ms"
    return f"{ms:.1f} ms"


def fmt_rate(v, unit):
    if v is None:
        return ""
    if unit == "GB/s":
        return f"{v / 1e9:.0f} GB/s"
    if unit == "TFLOP/s":
        return f"{v / 1e12:.0f} TFLOP/s"
    if unit == "ktok/s":
        return f"{v / 1e3:.1f} ktok/s"
    return f"{v:.3g} {unit}"


class Row:
    """One line of the table. Times in ms; `rate` is an optional (value, unit) shown beside a time."""

    def __init__(self, case, shape, ours_ms=None, peer_ms=None, ours_rate=None, peer_rate=None, limit_ms=None,
                 goal="", goal_ratio=None, goal_abs_ms=None, goal_fraction=None, ours_text=None, peer_text=None,
                 note=""):
        self.case, self.shape = case, shape
        self.ours_ms, self.peer_ms = ours_ms, peer_ms
        self.ours_rate, self.peer_rate = ours_rate, peer_rate
        self.limit_ms = limit_ms
        self.goal, self.goal_ratio, self.goal_abs_ms, self.goal_fraction = goal, goal_ratio, goal_abs_ms, goal_fraction
        self.ours_text, self.peer_text, self.note = ours_text, peer_text, note

    def speedup(self):
        if self.ours_ms and self.peer_ms:
            return self.peer_ms / self.ours_ms
        return None

    def fraction(self):
        if self.ours_ms and self.limit_ms:
            return self.limit_ms / self.ours_ms
        return None

    def met(self):
        s, f = self.speedup(), self.fraction()
        if self.ours_ms is None:
            return DASH if not self.goal else "not measured"
        checks = []
        if self.goal_ratio is not None and s is not None:
            checks.append(s >= self.goal_ratio)
        elif self.goal_abs_ms is not None:
            checks.append(self.ours_ms <= self.goal_abs_ms)
        if self.goal_fraction is not None and f is not None:
            checks.append(f >= self.goal_fraction)
        if not checks:
            return DASH if not self.goal else "no peer"
        return "met" if all(checks) else "missed"

    def cells(self):
        def side(ms, rate, text):
            if text is not None:
                return text
            if ms is None:
                return DASH
            r = fmt_rate(*rate) if rate and rate[0] else ""
            return fmt_ms(ms) + (f" ({r})" if r else "")
        s, f = self.speedup(), self.fraction()
        return [self.case, self.shape, side(self.ours_ms, self.ours_rate, self.ours_text),
                side(self.peer_ms, self.peer_rate, self.peer_text), f"{s:.2f}×" if s else DASH,
                f"{100 * f:.0f}%" if f else DASH, self.goal or DASH, self.met()]


# ----------------------------------------------------------------------------- our measurements
class Ours:
    def __init__(self, kernels, e2e_files):
        self.kernels = kernels or {}
        self.copy = self.kernels.get("copy_bytes_per_second")
        self.mm = self.kernels.get("matmul_flops_per_second")
        self.e2e = {}
        for j in e2e_files:
            if not j:
                continue
            key = (j.get("architecture"), j.get("state_dtype", "float32"))
            self.e2e[key] = j
            if not self.copy and j.get("copy_bytes_per_second"):
                self.copy, self.mm = j["copy_bytes_per_second"], j.get("matmul_flops_per_second")
        self.used = set()

    def kernel(self, family, tag=None, **params):
        for i, c in enumerate(self.kernels.get("cases", [])):
            if c.get("family") != family or (tag is not None and c.get("tag") != tag):
                continue
            if all(c.get("params", {}).get(k) == v for k, v in params.items()):
                self.used.add(i)
                return c
        return None

    def e2e_case(self, arch, state, kind, batch, context):
        j = self.e2e.get((arch, state))
        for c in (j or {}).get("cases", []):
            if c.get("kind") == kind and c.get("batch") == batch and c.get("context") == context:
                return c
        return None

    def limit_ms(self, bytes_, flops):
        if not self.copy or not self.mm or bytes_ is None or flops is None:
            return None
        return max(bytes_ / self.copy, flops / self.mm) * 1e3


def kms(c):
    return c.get("ms") if c else None


# ----------------------------------------------------------------------------- peer measurements
class Peers:
    def __init__(self, j):
        self.parts = (j or {}).get("parts", {})
        self.meta = (j or {}).get("meta", {})

    def part(self, n, key="entries"):
        p = self.parts.get(str(n), {})
        return p.get(key, []) if isinstance(p, dict) else []

    def find(self, n, key="entries", **match):
        for e in self.part(n, key):
            if all(e.get(k) == v for k, v in match.items()):
                return e
        return None


# ----------------------------------------------------------------------------- the table
def build_rows(ours, peers):
    rows = []

    # Ceilings: both engines' machines in this call (a speed-up far from 1 means one measurement is off).
    cp = peers.find(1, name="d2d_copy")
    mm = peers.find(1, name="bf16_matmul")
    if ours.copy or cp:
        rows.append(Row("ceiling: device copy", "4 GiB → 4 GiB (R+W)",
                        ours_text=fmt_rate(ours.copy, "GB/s") if ours.copy else None,
                        peer_text=fmt_rate(cp["GB_per_s"] * 1e9, "GB/s") if cp else None,
                        ours_ms=(2 * 4 * 2**30 / ours.copy * 1e3) if ours.copy else None,
                        peer_ms=cp["median_ms"] if cp else None))
    if ours.mm or mm:
        rows.append(Row("ceiling: bf16 matmul", "8192³",
                        ours_text=fmt_rate(ours.mm, "TFLOP/s") if ours.mm else None,
                        peer_text=fmt_rate(mm["TFLOP_per_s"] * 1e12, "TFLOP/s") if mm else None,
                        ours_ms=(2 * 8192**3 / ours.mm * 1e3) if ours.mm else None,
                        peer_ms=mm["median_ms"] if mm else None))

    # Mamba-2 2.7B end to end.
    arch = "mamba2"
    for b, goal, ratio, absms in ((1, "≥ 2.5× peer (≤ 1.6 ms/step)", 2.5, 1.6), (16, "≥ 2× peer", 2.0, None),
                                  (64, "≤ 7.5 ms/step (fp32 state)", None, 7.5)):
        c = ours.e2e_case(arch, "float32", "decode", b, 512)
        p = peers.find(5, what="generate", cg=True, batch=b)
        shape = "ms/step, fp32 state" + ("; peer: generate(cg=True)" if absms is None or b == 1 else "")
        rows.append(e2e_row(ours, f"Mamba-2 2.7B decode, b={b}", shape, c,
                            p["decode_step_ms"] if p else None, goal, ratio, absms))
    c = ours.e2e_case(arch, "bfloat16", "decode", 64, 512)
    rows.append(e2e_row(ours, "Mamba-2 2.7B decode, b=64", "ms/step, bf16 state", c, None,
                        "≤ 4.5 ms/step (bf16 state)", None, 4.5))
    for L, goal in ((2048, "≥ 2× peer"), (16384, "≥ 2× peer (≥ 110 ktok/s)")):
        c = ours.e2e_case(arch, "float32", "prefill", 1, L)
        p = peers.find(5, what="prefill_graph_replay", seqlen=L)
        rows.append(e2e_row(ours, "Mamba-2 2.7B prefill", f"b1 L={L}, one forward; peer: graph replay", c,
                            p["median_ms"] if p else None, goal, 2.0, None, tokens=L))

    # Llama 2.5B end to end.
    for ctx in (2048, 32768):
        c = ours.e2e_case("llama", "float32", "decode", 1, ctx)
        p = peers.find(6, what="static_cache_cuda_graph_decode", context=ctx)
        rows.append(e2e_row(ours, "Llama 2.5B decode", f"b1 ctx={ctx}; peer: HF StaticCache + graph", c,
                            p["decode_step_ms"] if p else None, "≥ 3× HF graph", 3.0, None))
    c = ours.e2e_case("llama", "float32", "prefill", 1, 2048)
    p = next((e for e in peers.part(6) if "what" not in e and e.get("context") == 2048), None)
    rows.append(e2e_row(ours, "Llama 2.5B prefill", "b1 L=2048; peer: HF sdpa, warm", c,
                        p["prefill_s"] * 1e3 if p else None, "≥ 2× HF", 2.0, None, tokens=2048))

    # SSD chunk scan, one layer.
    for L in (4096, 16384, 65536):
        c = ours.kernel("ssd_prefill", L=L)
        p = peers.find(3, seqlen=L)
        rows.append(kernel_row(ours, "SSD chunk scan, 1 layer", f"b1 L={L} h80 p64 n128 cs256", c,
                               p["median_ms"] if p else None, "≥ 3× peer", goal_ratio=3.0))
    # Mamba-2 decode state update.
    for sd in ("float32", "bfloat16"):
        for b in (1, 16, 128):
            c = ours.kernel("ssd_decode", tag=f"state {sd}", b=b)
            p = peers.find(4, batch=b, state_dtype=f"torch.{sd}")
            goal = "≥ 90% of copy bandwidth" if (sd == "float32" and b >= 16) else ""
            rows.append(kernel_row(ours, f"Mamba-2 state update [{sd} state]", f"b={b} h80 p64 n128", c,
                                   p["graph"]["median_ms"] if p else None, goal,
                                   goal_fraction=0.9 if goal else None, rate="GB/s",
                                   peer_rate=p.get("GB_per_s_graph", 0) * 1e9 if p else None,
                                   note="peer: CUDA graph"))
    # Attention prefill, causal, MHA.
    for L in (4096, 16384, 65536):
        c = ours.kernel("attention_prefill", L=L, hkv=32)
        for backend, goal, ratio in (("flash", "≥ 1.3× FA2", 1.3), ("cudnn", "≥ 1× cuDNN (stretch)", 1.0)):
            p = peers.find(2, "prefill", backend=backend, seqlen=L)
            rows.append(kernel_row(ours, f"attention prefill causal vs {'FA2' if backend == 'flash' else 'cuDNN'}",
                                   f"b1 h32 d128 s={L}", c, p["median_ms"] if p else None, goal, goal_ratio=ratio,
                                   rate="TFLOP/s", peer_rate=p["TFLOP_per_s"] * 1e12 if p else None))
    # Paged GQA decode.
    for L in (32768, 131072):
        for b in (1, 16):
            c = ours.kernel("attention_decode", b=b, L=L)
            p = peers.find(2, "decode", batch=b, kv_len=L, fastest=True)
            rows.append(kernel_row(ours, "GQA decode vs KV", f"b={b} L={L} 32q/8kv d128", c,
                                   p["median_ms"] if p else None, "≥ 90% of copy bandwidth", goal_fraction=0.9,
                                   rate="GB/s", peer_rate=p["GB_per_s"] * 1e9 if p else None,
                                   note=f"peer: {p['backend']}/{p['variant']}" if p else ""))

    # Every other kernel-bench case: no peer in peer_bench.py, no goal in TARGETS.md.
    for i, c in enumerate(ours.kernels.get("cases", [])):
        if i in ours.used:
            continue
        name = c["name"] + (f" [{c['tag']}]" if c.get("tag") else "")
        rate = "TFLOP/s" if c.get("bound") == "compute" else "GB/s"
        rows.append(kernel_row(ours, name, c["shape"], c, None, "", rate=rate))
    return rows


def kernel_row(ours, case, shape, c, peer_ms, goal, goal_ratio=None, goal_fraction=None, rate=None, peer_rate=None,
               note=""):
    if c and ("error" in c or "skipped" in c):
        return Row(case, shape, peer_ms=peer_ms, goal=goal, ours_text=("error: " + c["error"][:60]) if "error" in c
                   else "skipped", note=note)
    if c and c.get("method") == "graph":
        note = "; ".join(x for x in (note, "statelm: CUDA graph") if x)
    ours_rate = None
    if c and rate:
        ours_rate = (c.get("bytes_per_second") if rate == "GB/s" else c.get("flops_per_second"), rate)
    limit = ours.limit_ms(c.get("bytes"), c.get("flops")) if c else None
    return Row(case, shape, ours_ms=kms(c), peer_ms=peer_ms, ours_rate=ours_rate,
               peer_rate=(peer_rate, rate) if peer_rate else None, limit_ms=limit, goal=goal, goal_ratio=goal_ratio,
               goal_fraction=goal_fraction, note=note)


def e2e_row(ours, case, shape, c, peer_ms, goal, goal_ratio, goal_abs_ms, tokens=None):
    """Decode rows in ms per step; prefill rows (tokens given) in ms per prefill, with ktok/s."""
    if c is None:
        return Row(case, shape, peer_ms=peer_ms, goal=goal, goal_ratio=goal_ratio, goal_abs_ms=goal_abs_ms)
    steps = max(1, c.get("steps", 1))
    ms = c["ms_per_step"] if tokens is None else c["seconds"] * 1e3
    # Bytes and FLOPs of one repetition (all its steps) over its time: the same fraction per step.
    limit = ours.limit_ms(c.get("bytes"), c.get("flops"))
    if limit is not None and tokens is None:
        limit /= steps
    ours_rate = (tokens / (ms * 1e-3), "ktok/s") if tokens else None
    peer_rate = (tokens / (peer_ms * 1e-3), "ktok/s") if tokens and peer_ms else None
    return Row(case, shape, ours_ms=ms, peer_ms=peer_ms, ours_rate=ours_rate, peer_rate=peer_rate, limit_ms=limit,
               goal=goal, goal_ratio=goal_ratio, goal_abs_ms=goal_abs_ms)


def markdown(rows):
    head = ["case", "shape", "statelm", "peer", "speed-up", "% limit", "goal", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = r.cells()
        if r.note:
            cells[1] += f" ({r.note})"
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernels")
    ap.add_argument("--e2e", nargs="*", default=[])
    ap.add_argument("--peers")
    ap.add_argument("--out", help="also write the table (and notes) here")
    a = ap.parse_args(argv)
    notes = []
    kernels = load(a.kernels, notes)
    e2e = [load(p, notes) for p in a.e2e]
    peers_json = load(a.peers, notes)
    ours, peers = Ours(kernels, e2e), Peers(peers_json)
    rows = build_rows(ours, peers)
    text = [markdown(rows), ""]
    met = sum(r.met() == "met" for r in rows)
    missed = sum(r.met() == "missed" for r in rows)
    text.append(f"Goals: {met} met, {missed} missed (of {sum(bool(r.goal) for r in rows)} with a goal).")
    meta = peers.meta
    if meta:
        text.append(f"Peer run: {meta.get('gpu', '?')}, torch {meta.get('torch', '?')}, triton "
                    f"{meta.get('triton', '?')}, transformers {meta.get('transformers', '?')}, mamba_ssm "
                    f"{meta.get('mamba_ssm', {}).get('version', '?')}; {meta.get('elapsed_s', '?')} s.")
        for n, p in sorted(peers.parts.items()):
            if isinstance(p, dict) and ("partial_timeout" in p or "error" in p or "skipped" in p):
                why = p.get("partial_timeout") or p.get("error") or p.get("skipped")
                text.append(f"Peer part {n}: {str(why)[:200]}")
    if kernels:
        text.append(f"statelm kernels: {kernels.get('device', '?')}; {kernels.get('timing', '')}.")
    text += [f"Input {n}" for n in notes]
    out = "\n".join(text) + "\n"
    sys.stdout.write(out)
    if a.out:
        with open(a.out, "w") as f:
            f.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
