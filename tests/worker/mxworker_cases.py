#!/usr/bin/env python3
"""MPI integration tests of mxworker (stdlib only). One case per call:

  mxworker_cases.py CASE N --mpiexec M --mpiflags "F .." --mxworker PATH --writer PATH --workdir DIR

Every mpiexec runs under a time limit, so a hang is a failure, never a stuck CI.
Outputs of `run` are compared byte for byte with the -n 1 result (exact combine)
and every run also passes --check (single-process ref pipeline, same backend).
Fixed seeds; printed on failure."""
import argparse, json, os, random, shlex, struct, subprocess, sys, tempfile, time

SEED = 20261123
LIMIT = 60  # seconds per mpiexec; a hang fails the test


class Fail(Exception):
    pass


def sh(args, cmd, n, timeout=LIMIT, env=None):
    full = [args.mpiexec] + shlex.split(args.mpiflags) + ["-n", str(n)] + cmd
    t0 = time.time()
    try:
        p = subprocess.run(full, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise Fail(f"timed out after {timeout}s (a hang): {' '.join(full)}")
    dt = time.time() - t0
    print(f"[{dt:5.1f}s rc={p.returncode}] {' '.join(full)}")
    return p


def ok(args, cmd, n, **kw):
    p = sh(args, cmd, n, **kw)
    if p.returncode != 0:
        raise Fail(f"exit {p.returncode}, expected 0\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def refused(args, cmd, n, must=(), **kw):
    p = sh(args, cmd, n, **kw)
    if p.returncode == 0:
        raise Fail(f"exit 0, expected a failure\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    for m in must:
        if m not in p.stderr:
            raise Fail(f"stderr lacks {m!r}:\n{p.stderr}")
    return p


def bf16(x):
    u = struct.unpack("<I", struct.pack("<f", x))[0]
    u += 0x7FFF + ((u >> 16) & 1)
    return (u >> 16) & 0xFFFF


def write_input(path, rows, cols, dtype, seed):
    rnd = random.Random(seed)
    vals = [rnd.uniform(-2.0, 2.0) for _ in range(rows * cols)]
    if dtype == "BF16":
        data = struct.pack(f"<{len(vals)}H", *[bf16(v) for v in vals])
    else:
        data = struct.pack(f"<{len(vals)}f", *vals)
    hdr = json.dumps({"hidden_states": {"dtype": dtype, "shape": [rows, cols], "data_offsets": [0, len(data)]}})
    hdr += " " * ((8 - len(hdr) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hdr)) + hdr.encode() + data)


def read_st(path):
    with open(path, "rb") as f:
        b = f.read()
    n = struct.unpack("<Q", b[:8])[0]
    hdr = json.loads(b[8:8 + n])
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        out[k] = (v["dtype"], v["shape"], b[8 + n + s:8 + n + e])
    return out


def model_hidden(args, extra):
    js = os.path.join(args.workdir, "probe.json")
    ok(args, [args.mxworker, "bench", "--preset", "tiny", "--tokens", "1", "--iters", "1", "--warmup", "0",
              "--quiet", "--json", js] + extra, 1)
    with open(js) as f:
        j = json.load(f)
    return j["hidden"], j["n_experts"]


def run_and_compare(args, n, extra, tag, inp, ref_cache):
    """run on n ranks with --check; compare bitwise with the -n 1 output of the same flags."""
    out = os.path.join(args.workdir, f"out_{tag}_n{n}.safetensors")
    ok(args, [args.mxworker, "run", "--preset", "tiny", "--input", inp, "--output", out, "--check"] + extra, n)
    key = tag
    if key not in ref_cache:
        ref = os.path.join(args.workdir, f"out_{tag}_n1.safetensors")
        if n != 1:
            ok(args, [args.mxworker, "run", "--preset", "tiny", "--input", inp, "--output", ref] + extra, 1)
        ref_cache[key] = ref
    a, b = read_st(out), read_st(ref_cache[key])
    for t in ("hidden_states", "topk_ids", "topk_weights"):
        if a[t] != b[t]:
            raise Fail(f"{tag}: tensor {t} on {n} ranks differs from 1 rank (seed {SEED})")
    return a


def case_routers(args, n):
    H, E = model_hidden(args, [])
    inp = os.path.join(args.workdir, "in.safetensors")
    write_input(inp, 37, H, "BF16", SEED)
    cache = {}
    for r in (None, "topk_softmax", "softmax_topk", "sigmoid_grouped", "expert_choice"):
        extra = ["--router", r] if r else []
        a = run_and_compare(args, n, extra, r or "model", inp, cache)
        dt, shape, _ = a["hidden_states"]
        if dt != "BF16" or shape != [37, H]:
            raise Fail(f"hidden_states is {dt} {shape}, expected BF16 [37, {H}]")


def case_combine(args, n):
    H, E = model_hidden(args, [])
    inp = os.path.join(args.workdir, "in32.safetensors")
    write_input(inp, 29, H, "F32", SEED + 1)
    # reduce and fp8: tolerance against the ref (--check), exit 0 needed
    for extra in (["--combine", "reduce"], ["--dispatch-dtype", "fp8"], ["--dispatch-dtype", "fp8", "--combine", "reduce"]):
        out = os.path.join(args.workdir, f"o_{'_'.join(extra)}_n{n}.safetensors")
        p = ok(args, [args.mxworker, "run", "--preset", "tiny", "--input", inp, "--output", out, "--check"] + extra, n)
        if "check layer" not in p.stderr:
            raise Fail(f"--check printed no summary:\n{p.stderr}")
    # exact combine from an F32 input is still bitwise across rank counts
    run_and_compare(args, n, [], "f32", inp, {})


def case_placement(args, n):
    H, E = model_hidden(args, [])
    inp = os.path.join(args.workdir, "in.safetensors")
    write_input(inp, 23, H, "BF16", SEED + 2)
    plc = os.path.join(args.workdir, f"place_n{n}.json")
    experts = []
    for e in range(E):
        rs = sorted({e % n, (e * 3 + 1) % n})
        experts.append(rs)
    with open(plc, "w") as f:
        json.dump({"experts": experts}, f)
    cache = {}
    ref = os.path.join(args.workdir, "ref_contig.safetensors")
    ok(args, [args.mxworker, "run", "--preset", "tiny", "--input", inp, "--output", ref], 1)
    cache["placed"] = ref
    run_and_compare(args, n, ["--placement", plc], "placed", inp, cache)
    # more ranks than experts: contiguous is refused clearly, replicated works and is bitwise the same
    small = 2
    ref2 = os.path.join(args.workdir, "ref_small.safetensors")
    ok(args, [args.mxworker, "run", "--preset", "tiny", "--experts", str(small), "--input", inp, "--output", ref2], 1)
    if n > small:
        refused(args, [args.mxworker, "run", "--preset", "tiny", "--experts", str(small), "--input", inp, "--output",
                       os.path.join(args.workdir, "never.safetensors")], n, must=("rank 0 failed", "experts"))
        if os.path.exists(os.path.join(args.workdir, "never.safetensors")):
            raise Fail("a refused run left an output file")
    run_and_compare(args, n, ["--experts", str(small), "--placement", "replicated"], "small", inp, {"small": ref2})


def case_ckpt(args, n):
    H, E = model_hidden(args, [])
    d = os.path.join(args.workdir, "ckpt")
    if not os.path.isdir(d):
        p = subprocess.run([args.writer, "tiny", "2", "0", "7", d], capture_output=True, text=True, timeout=LIMIT)
        if p.returncode != 0:
            raise Fail(f"writing the checkpoint failed: {p.stderr}")
    inp = os.path.join(args.workdir, "in.safetensors")
    write_input(inp, 31, H, "BF16", SEED + 3)
    out = os.path.join(args.workdir, f"ck_n{n}.safetensors")
    ok(args, [args.mxworker, "run", "--model", d, "--layer", "1", "--input", inp, "--output", out, "--check"], n)
    syn = os.path.join(args.workdir, "syn.safetensors")
    ok(args, [args.mxworker, "run", "--preset", "tiny", "--seed", "7", "--layer", "1", "--input", inp, "--output",
              syn], 1)
    if read_st(out) != read_st(syn):
        raise Fail("checkpoint on disk and the built-in model of the same seed give different outputs")


def case_bench(args, n):
    js = os.path.join(args.workdir, f"bench_n{n}.json")
    p = ok(args, [args.mxworker, "bench", "--preset", "tiny", "--tokens", "9", "--layers", "2", "--iters", "2",
                  "--check", "--json", js], n)
    for m in ("rank", "compute_ms", "waiting_ms", "tokens/s", "MPI_Alltoallv", "memcpy"):
        if m not in p.stdout:
            raise Fail(f"bench table lacks {m!r}:\n{p.stdout}")
    with open(js) as f:
        j = json.load(f)
    if len(j["per_rank"]) != n or j["tokens_total"] != 9 * n or j["totals"]["layer_ms_p50"] <= 0:
        raise Fail(f"bench JSON wrong: {j}")
    # info: the cluster table with every rank's backend choice, as text and JSON; no batch
    ji = os.path.join(args.workdir, f"info_n{n}.json")
    p = ok(args, [args.mxworker, "info", "--preset", "tiny", "--json", ji], n)
    if "oracle" not in p.stdout or "chosen" not in p.stdout:
        raise Fail(f"info does not show the oracle's choices:\n{p.stdout}")
    with open(ji) as f:
        j = json.load(f)
    if j["n_procs"] != n or any(not q["backend"] for q in j["procs"]):
        raise Fail(f"info JSON wrong: {j}")
    # zero tokens on some ranks (1 token for the whole job) still works and checks
    ok(args, [args.mxworker, "bench", "--preset", "tiny", "--tokens-total", "1", "--iters", "1", "--check"], n)


def case_hosts2(args, n):
    """ranks pretending to sit on two hosts (MXEP_TRANSPORT_HOSTS=2): shared memory within
    a host, MPI_Ialltoallv across; outputs still bitwise those of one rank"""
    H, E = model_hidden(args, [])
    inp = os.path.join(args.workdir, "in.safetensors")
    write_input(inp, 41, H, "BF16", SEED + 4)
    env = dict(os.environ, MXEP_TRANSPORT_HOSTS="2")
    cache = {}
    for r in (None, "expert_choice"):
        extra = ["--router", r] if r else []
        tag = r or "model"
        ref = os.path.join(args.workdir, f"ref_{tag}.safetensors")
        ok(args, [args.mxworker, "run", "--preset", "tiny", "--input", inp, "--output", ref] + extra, 1)
        cache[tag] = ref
        out = os.path.join(args.workdir, f"out_{tag}.safetensors")
        ok(args, ["-x", "MXEP_TRANSPORT_HOSTS=2", args.mxworker, "run", "--preset", "tiny", "--input", inp,
                  "--output", out, "--check"] + extra, n, env=env)
        if read_st(out) != read_st(ref):
            raise Fail(f"{tag}: two pretend hosts on {n} ranks differ from 1 rank (seed {SEED})")
    p = ok(args, ["-x", "MXEP_TRANSPORT_HOSTS=2", args.mxworker, "bench", "--preset", "tiny", "--iters", "2"], n,
           env=env)
    want = "shm+alltoallv" if n > 1 else "shm"
    if f"exchange {want}" not in p.stdout:
        raise Fail(f"bench does not report the {want} path:\n{p.stdout}")
    if n > 1:
        refused(args, ["-x", "MXEP_TRANSPORT_HOSTS=2", args.mxworker, "bench", "--preset", "tiny", "--exchange",
                       "shm"], n, must=("--exchange shm needs every rank on one host",), env=env)


def case_errors(args, n):
    w = args.mxworker
    refused(args, [w, "bench", "--tokens", "-3"], n, must=("--tokens",))
    refused(args, [w, "bench", "--frobnicate"], n, must=("unknown option '--frobnicate'",))
    refused(args, [w, "run", "--preset", "tiny"], n, must=("--input",))
    refused(args, [w, "bench", "--preset", "no-such-model"], n, must=("no-such-model",))
    refused(args, [w, "bench", "--preset", "tiny", "--backend", "no-such-backend", "--iters", "1"], n,
            must=("no-such-backend",))
    # the last resort against a hang: the whole job ends, with a message, soon after --timeout
    t0 = time.time()
    refused(args, [w, "bench", "--preset", "tiny", "--iters", "1000000", "--quiet", "--timeout", "2"], n,
            must=("--timeout 2",))
    if time.time() - t0 > 30:
        raise Fail("--timeout 2 took more than 30 s to end the job")
    p = ok(args, [w, "bench", "--help"], n)
    if "--tokens-total" not in p.stdout:
        raise Fail("bench --help does not list --tokens-total")
    if n >= 2:
        last = n - 1
        # flags that differ on one rank (environment trick): one clear message from rank 0
        script = (f'if [ "${{OMPI_COMM_WORLD_RANK:-0}}" = "{last}" ]; then exec {w} bench --preset tiny --iters 1 '
                  f'--seed 2; else exec {w} bench --preset tiny --iters 1 --seed 1; fi')
        refused(args, ["sh", "-c", script], n, must=("disagree", "seed"))
        # a rank that cannot load its model: every rank exits non-zero, the message names the rank
        script = (f'if [ "${{OMPI_COMM_WORLD_RANK:-0}}" = "{last}" ]; then exec {w} bench --model /nonexistent/mxep '
                  f'--iters 1; else exec {w} bench --preset tiny --iters 1; fi')
        refused(args, ["sh", "-c", script], n, must=(f"rank {last} failed", "/nonexistent/mxep"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case")
    ap.add_argument("n", type=int)
    ap.add_argument("--mpiexec", required=True)
    ap.add_argument("--mpiflags", default="")
    ap.add_argument("--mxworker", required=True)
    ap.add_argument("--writer", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    args.workdir = tempfile.mkdtemp(prefix=f"{args.case}_n{args.n}_", dir=args.workdir)
    try:
        globals()["case_" + args.case](args, args.n)
    except Fail as e:
        print(f"FAIL {args.case} n={args.n} (seed {SEED}): {e}")
        return 1
    print(f"ok {args.case} n={args.n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
