#!/usr/bin/env python3
"""bench/gpu/torch_peer.py: issue 7's PyTorch peers, timed on this GPU, in the same device call as
mxgpu_bench, so that mxep's layer is compared with peers measured in the same run rather than with
the figures quoted in the issue.

The layer is gpt-oss-20b's expert part (default E 32, H = I = 2880, top-4, SwiGLU-OAI with gate and
up interleaved, alpha 1.702, limit 7), with BF16 weights:
  grouped: the rows gathered in expert order, torch._grouped_mm for gate/up, the activation,
           torch._grouped_mm for down, then the weighted sum per token (index_add_ in FP32);
  loop:    the same, one expert at a time (x[rows] @ W1[e], act, @ W2[e]) over the batch's experts,
           their row lists made on the host before timing.
Each is timed with CUDA events around one layer, median of --iters after 3 warm-ups, cycling
through --rotate routings (random top-k, seeds seed..seed+R-1). The weights (1.6 GB at the default
shape) are far larger than the L2, so every layer reads its experts' weights from HBM.

With --mxep FILE (mxgpu_bench --json of the same call) it prints mxep's layer_ms and cold_ms per
token count and the peers' time over them (x_grouped, x_loop: how many times faster mxep is).

Usage: python3 bench/gpu/torch_peer.py [--tokens 1,8,64,8192] [--iters 20] [--rotate 4]
           [--experts 32 --hidden 2880 --inter 2880 --top-k 4] [--seed 1] [--json OUT] [--mxep FILE]
Exit status: 0 ok, 1 a peer failed or the two peers disagree, 2 bad usage or no usable GPU.
"""
import argparse
import json
import statistics
import sys


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="1,8,64,8192", help="token counts, comma separated (default 1,8,64,8192)")
    ap.add_argument("--iters", type=int, default=20, help="timed layers per case (default 20)")
    ap.add_argument("--rotate", type=int, default=4, help="routings cycled over the timed layers (default 4)")
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=2880)
    ap.add_argument("--inter", type=int, default=2880)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cuda", help="torch device (default cuda)")
    ap.add_argument("--json", help="write the results as JSON here")
    ap.add_argument("--mxep", help="mxgpu_bench --json output of the same call: print the ratios to it")
    a = ap.parse_args(argv)
    try:
        a.tokens = [int(t) for t in a.tokens.split(",") if t]
    except ValueError:
        ap.error(f"--tokens {a.tokens!r}: expected positive integers separated by commas")
    if not a.tokens or min(a.tokens) < 1:
        ap.error("--tokens: expected positive integers separated by commas")
    for name in ("iters", "rotate", "experts", "hidden", "inter", "top_k"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} {getattr(a, name)}: expected at least 1")
    if a.top_k > a.experts:
        ap.error(f"--top-k {a.top_k}: expected at most --experts ({a.experts})")
    if a.hidden % 8 or a.inter % 8:
        ap.error("--hidden and --inter: expected multiples of 8 (16-byte rows for torch._grouped_mm)")
    return a


def main(argv):
    a = parse_args(argv)
    try:
        import torch
    except ImportError as e:
        print(f"torch_peer.py: PyTorch is not importable here ({e})", file=sys.stderr)
        return 2
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("torch_peer.py: no CUDA device visible to PyTorch", file=sys.stderr)
        return 2
    E, H, I, K = a.experts, a.hidden, a.inter, a.top_k
    bf = torch.bfloat16
    gen = torch.Generator(device="cpu").manual_seed(a.seed)
    # weights: [E, K, N] as torch._grouped_mm takes them (2D x 3D, offsets on the rows)
    gdev = torch.Generator(device=dev).manual_seed(a.seed)
    w1 = torch.randn(E, H, 2 * I, generator=gdev, device=dev).mul_(H ** -0.5).to(bf)
    w2 = torch.randn(E, I, H, generator=gdev, device=dev).mul_(I ** -0.5).to(bf)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
    print(f"torch {torch.__version__} on {name}; E {E}, H {H}, I {I}, top-{K}, BF16 weights "
          f"({(w1.numel() + w2.numel()) * 2 / 1e9:.2f} GB)")

    def act(h):  # SwiGLU-OAI, gate/up interleaved, FP32 math, BF16 out
        g = h[:, 0::2].float().clamp(max=7.0)
        u = h[:, 1::2].float().clamp(-7.0, 7.0)
        return (g * torch.sigmoid(1.702 * g) * (u + 1.0)).to(bf)

    have_grouped = hasattr(torch, "_grouped_mm")
    w1g, w2g = w1, w2
    grouped_note = "" if have_grouped else "torch._grouped_mm is not in this PyTorch"

    def routing(T, seed):
        g = torch.Generator(device="cpu").manual_seed(seed)
        ex = torch.rand(T, E, generator=g).topk(K, dim=1).indices  # K distinct experts per token
        wt = torch.softmax(torch.rand(T, K, generator=g), dim=1)
        ex, wt = ex.reshape(-1), wt.reshape(-1)
        tok = torch.arange(T).repeat_interleave(K)
        order = torch.argsort(ex, stable=True)
        ex_s, tok_s, w_s = ex[order], tok[order], wt[order]
        counts = torch.bincount(ex_s, minlength=E)
        offs = torch.cumsum(counts, 0).to(torch.int32)
        groups, start = [], 0
        for e in range(E):  # the loop peer's row lists, made before timing
            n = int(counts[e])
            if n:
                groups.append((e, tok_s[start:start + n].to(dev), w_s[start:start + n].to(dev)))
            start += n
        return {"tok_s": tok_s.to(dev), "w_s": w_s.to(dev), "offs": offs.to(dev), "groups": groups,
                "active": len(groups)}

    def grouped_layer(x, r):
        xs = x.index_select(0, r["tok_s"])
        h = torch._grouped_mm(xs, w1g, offs=r["offs"])
        y = torch._grouped_mm(act(h), w2g, offs=r["offs"])
        out = torch.zeros(x.shape[0], H, dtype=torch.float32, device=dev)
        out.index_add_(0, r["tok_s"], y.float() * r["w_s"][:, None])
        return out

    def loop_layer(x, r):
        out = torch.zeros(x.shape[0], H, dtype=torch.float32, device=dev)
        for e, ti, wv in r["groups"]:
            y = act(x.index_select(0, ti) @ w1[e]) @ w2[e]
            out.index_add_(0, ti, y.float() * wv[:, None])
        return out

    def timed(fn, xs, rs):
        for i in range(3):
            fn(xs[i % len(xs)], rs[i % len(rs)])
        ts = []
        for i in range(a.iters):
            x, r = xs[i % len(xs)], rs[i % len(rs)]
            if dev.type == "cuda":
                s, t = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn(x, r)
                t.record()
                t.synchronize()
                ts.append(s.elapsed_time(t))
            else:
                import time
                t0 = time.perf_counter()
                fn(x, r)
                ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)

    if have_grouped:  # some builds want the weights column-major in their last two dims
        try:
            r = routing(2, a.seed)
            grouped_layer(torch.randn(2, H, generator=gen).to(bf).to(dev), r)
        except RuntimeError as e1:
            try:
                w1g = w1.transpose(1, 2).contiguous().transpose(1, 2)
                w2g = w2.transpose(1, 2).contiguous().transpose(1, 2)
                grouped_layer(torch.randn(2, H, generator=gen).to(bf).to(dev), r)
                grouped_note = "weights column-major (the row-major call was refused)"
            except RuntimeError as e2:
                have_grouped = False
                grouped_note = f"torch._grouped_mm refused: {str(e1).splitlines()[0]} / {str(e2).splitlines()[0]}"
    if grouped_note:
        print(f"note: {grouped_note}")

    status, points = 0, []
    for T in a.tokens:
        rs = [routing(T, a.seed + 1000 * T + j) for j in range(a.rotate)]
        xs = [torch.randn(T, H, generator=gen).to(bf).to(dev) for _ in range(2)]
        p = {"tokens": T, "active_experts": statistics.mean(r["active"] for r in rs)}
        try:
            p["loop_ms"] = timed(loop_layer, xs, rs)
        except RuntimeError as e:
            print(f"T={T}: the loop peer failed: {str(e).splitlines()[0]}", file=sys.stderr)
            status = 1
        if have_grouped:
            try:
                p["grouped_ms"] = timed(grouped_layer, xs, rs)
                ref, got = loop_layer(xs[0], rs[0]), grouped_layer(xs[0], rs[0])
                p["rel_l2_grouped_vs_loop"] = float((got - ref).norm() / ref.norm().clamp_min(1e-30))
                if p["rel_l2_grouped_vs_loop"] > 1e-2:
                    print(f"T={T}: grouped and loop peers disagree (rel L2 {p['rel_l2_grouped_vs_loop']:.2e})",
                          file=sys.stderr)
                    status = 1
            except RuntimeError as e:
                print(f"T={T}: the grouped peer failed: {str(e).splitlines()[0]}", file=sys.stderr)
                status = 1
        points.append(p)
        print(f"T={T:<5} active {p['active_experts']:5.1f}  grouped {p.get('grouped_ms', -1):8.4f} ms  "
              f"loop {p.get('loop_ms', -1):8.4f} ms  rel L2 grouped vs loop {p.get('rel_l2_grouped_vs_loop', -1):.2e}",
              flush=True)

    if a.mxep:
        try:
            with open(a.mxep) as f:
                mx = json.load(f)
        except (OSError, ValueError) as e:
            print(f"torch_peer.py: --mxep {a.mxep}: {e}", file=sys.stderr)
            return 1
        if (mx.get("experts"), mx.get("hidden"), mx.get("inter"), mx.get("top_k")) != (E, H, I, K):
            print(f"torch_peer.py: --mxep {a.mxep} is another shape (E {mx.get('experts')}, H {mx.get('hidden')}, "
                  f"I {mx.get('inter')}, top-{mx.get('top_k')})", file=sys.stderr)
            return 1
        by_t = {q["tokens"]: q for q in mx.get("points", [])}
        print(f"\nmxep ({mx.get('scheme')}, {mx.get('device')}) against the peers measured above; x_*: peer ms / mxep ms")
        print(f"{'T':>6} {'layer_ms':>10} {'cold_ms':>10} {'x_grouped':>10} {'x_loop':>8} "
              f"{'x_grouped(cold)':>16} {'x_loop(cold)':>13}")
        for p in points:
            q = by_t.get(p["tokens"])
            if not q:
                continue
            row = {"layer_ms": q["layer_ms"], "cold_ms": q.get("cold_ms", -1)}
            for peer in ("grouped", "loop"):
                pm = p.get(f"{peer}_ms")
                row[f"x_{peer}"] = pm / q["layer_ms"] if pm else -1
                row[f"x_{peer}_cold"] = pm / q["cold_ms"] if pm and q.get("cold_ms", -1) > 0 else -1
            p["mxep"] = row
            print(f"{p['tokens']:>6} {row['layer_ms']:>10.4f} {row['cold_ms']:>10.4f} {row['x_grouped']:>10.2f} "
                  f"{row['x_loop']:>8.2f} {row['x_grouped_cold']:>16.2f} {row['x_loop_cold']:>13.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "experts": E, "hidden": H, "inter": I,
                       "top_k": K, "iters": a.iters, "rotate": a.rotate, "grouped_note": grouped_note,
                       "points": points}, f, indent=1)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
