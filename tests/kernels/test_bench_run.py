"""mxbench kernels on real cases: the cases --model, --scheme and --tokens name, in
that order, each once as the timed backend (peer false) and, up to --ref-peer-max
tokens, once as the ref peer (peer true); the fields issue 5 asks for, finite and
consistent with each other; the weight bytes those of the active experts; every
case checked against ref within FORMATS.md's tolerance.
usage: test_bench_run.py MXBENCH"""
import json
import math
import os
import subprocess
import sys
import tempfile

mx = sys.argv[1]
fails = []


def fail(msg):
    fails.append(msg)
    print("FAIL " + msg)


# qwen3-30b-a3b: E 128, H 2048, I 768, top-8 (the smaller of the two shapes)
H, I, TOPK = 2048, 768, 8
# per expert: MXFP4 codes with one E8M0 byte per 32; E4M3 with an FP32 scale per 128 x 128 block (gate/up
# 2I x H, down H x I)
EXPERT_BYTES = {"W4A16": 3 * H * I * 17 // 32,
                "W8A8": 3 * H * I + 4 * (-(-2 * I // 128) * -(-H // 128) + -(-H // 128) * -(-I // 128))}
TOL = {"W4A16": 2e-3, "W8A8": 5e-3}
with tempfile.TemporaryDirectory() as tmp:
    js = os.path.join(tmp, "k.json")
    args = [mx, "kernels", "--model", "qwen3-30b-a3b", "--scheme", "W8A8,W4A16", "--tokens", "3,1", "--iters", "2",
            "--threads", "2", "--ref-peer-max", "1", "--json", js]
    p = subprocess.run(args, capture_output=True, text=True, timeout=240)
    if p.returncode != 0:
        fail("exit %d: %s" % (p.returncode, p.stderr[-2000:]))
        sys.exit(1)
    recs = json.load(open(js))
# the table too: one line per case (and one per peer)
rows = [l for l in p.stdout.splitlines() if l.startswith("qwen3-30b-a3b")]
if len(rows) != len(recs):
    fail("%d table rows, %d JSON records" % (len(rows), len(recs)))
main = [r for r in recs if r.get("peer") is False]
peers = [r for r in recs if r.get("peer") is True]
if len(main) + len(peers) != len(recs):
    fail("records without a boolean 'peer': %s" % [r for r in recs if not isinstance(r.get("peer"), bool)])
want = [("W8A8", 3), ("W8A8", 1), ("W4A16", 3), ("W4A16", 1)]
got = [(r.get("scheme"), r.get("tokens")) for r in main]
if got != want:
    fail("cases %s, expected %s (the order of --scheme and --tokens)" % (got, want))
if [(r.get("scheme"), r.get("tokens")) for r in peers] != [("W8A8", 1), ("W4A16", 1)]:
    fail("peer records %s, expected the T = 1 cases only" % [(r.get("scheme"), r.get("tokens")) for r in peers])
need = ["model", "backend", "isa", "scheme", "tokens", "top_k", "active_experts", "threads", "ms", "weight_bytes",
        "gbps", "gflops", "read_bw_gbps", "fma_peak_gflops", "read_bw_ratio", "fma_peak_ratio"]
for r in recs:
    tag = "%s T=%s %s" % (r.get("scheme"), r.get("tokens"), r.get("backend"))
    miss = [k for k in need if k not in r]
    if miss:
        fail("%s: fields missing: %s" % (tag, miss))
        continue
    if r["backend"] != ("ref" if r["peer"] else "cpu"):
        fail("%s: backend %s" % (tag, r["backend"]))
    if r["model"] != "qwen3-30b-a3b" or r["top_k"] != TOPK:
        fail("%s: model %s top_k %s" % (tag, r["model"], r["top_k"]))
    nums = [r[k] for k in ("ms", "gbps", "gflops", "read_bw_gbps", "fma_peak_gflops", "read_bw_ratio",
                           "fma_peak_ratio")]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in nums):
        fail("%s: a timing figure is not a finite positive number: %s" % (tag, nums))
        continue
    a = r["active_experts"]
    if not (1 <= a <= min(128, r["tokens"] * TOPK)):
        fail("%s: %s active experts" % (tag, a))
    wb = a * EXPERT_BYTES[r["scheme"]]
    if r["weight_bytes"] != wb:
        fail("%s: weight_bytes %s, expected %d active experts x %d bytes = %d" %
             (tag, r["weight_bytes"], a, EXPERT_BYTES[r["scheme"]], wb))
    rel = lambda x, y: abs(x - y) <= 1e-3 * abs(y)
    if not rel(r["gbps"], r["weight_bytes"] / (r["ms"] * 1e-3) / 1e9):
        fail("%s: gbps %s is not weight_bytes / ms" % (tag, r["gbps"]))
    if not rel(r["gflops"], 2.0 * r["tokens"] * TOPK * 3 * H * I / (r["ms"] * 1e-3) / 1e9):
        fail("%s: gflops %s is not 2 x tokens x top-k x 3 x H x I / ms" % (tag, r["gflops"]))
    if not rel(r["read_bw_ratio"], r["gbps"] / r["read_bw_gbps"]) or \
            not rel(r["fma_peak_ratio"], r["gflops"] / r["fma_peak_gflops"]):
        fail("%s: ratios are not gbps / read_bw_gbps and gflops / fma_peak_gflops" % tag)
    if not r["peer"]:
        e = r.get("rel_l2_vs_ref")
        if not (isinstance(e, (int, float)) and 0 < e <= TOL[r["scheme"]]):
            fail("%s: rel_l2_vs_ref %s, expected in (0, %g]" % (tag, e, TOL[r["scheme"]]))
print("bench run: %d records checked, %d failures" % (len(recs), len(fails)))
sys.exit(1 if fails else 0)
