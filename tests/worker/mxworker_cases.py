#!/usr/bin/env python3
"""MPI integration tests of mxworker (stdlib only). One case per call:

  mxworker_cases.py CASE N --mpiexec M --mpiflags "F .." --mxworker PATH --writer PATH --workdir DIR
                    [--transport mpi|ucx] [--mxclient PATH]

--transport ucx adds `--transport ucx` to every mxworker command run on the N
ranks under test (the -n 1 references keep the default MPI transport when N > 1),
so the outputs are also compared across transports.

Every mpiexec runs under a time limit, so a hang is a failure, never a stuck CI.
Outputs of `run` are compared byte for byte with the -n 1 result (exact combine)
and every run also passes --check (single-process ref pipeline, same backend).
Fixed seeds; printed on failure."""
import argparse, json, os, random, shlex, shutil, signal, socket, struct, subprocess, sys, tempfile, time

SEED = 20261123
LIMIT = 60  # seconds per mpiexec; a hang fails the test


class Fail(Exception):
    pass


def with_transport(args, cmd, n):
    """--transport T after the subcommand of an mxworker command on the tested rank count"""
    if args.transport and n == args.n and len(cmd) >= 2 and cmd[0] == args.mxworker:
        return cmd[:2] + ["--transport", args.transport] + cmd[2:]
    return cmd


def mpi_cmd(args, cmd, n):
    return [args.mpiexec] + shlex.split(args.mpiflags) + ["-n", str(n)] + with_transport(args, cmd, n)


def sh(args, cmd, n, timeout=LIMIT, env=None):
    full = mpi_cmd(args, cmd, n)
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
    # E8M0 0xFF is NaN (a defined code, so the loader takes it): every output is NaN, on any rank count alike
    # (bitwise "equal"), and --check must still fail the run, naming them
    nd = os.path.join(args.workdir, f"ckpt_nan_n{n}")
    shutil.rmtree(nd, ignore_errors=True)
    shutil.copytree(d, nd)
    st = os.path.join(nd, "model.safetensors")
    with open(st, "r+b") as f:
        b = f.read()
        hl = struct.unpack("<Q", b[:8])[0]
        t = json.loads(b[8:8 + hl])["model.layers.1.mlp.experts.down_proj_scales"]
        f.seek(8 + hl + t["data_offsets"][0])
        f.write(b"\xff" * (t["data_offsets"][1] - t["data_offsets"][0]))
    refused(args, [args.mxworker, "run", "--model", nd, "--layer", "1", "--input", inp, "--output",
                   os.path.join(args.workdir, f"ck_nan_n{n}.safetensors"), "--check"], n,
            must=("NON-FINITE", f"non-finite outputs: {31 * H}"))


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
    # --baseline layer (default): the same layers also ran over plain MPI_Alltoallv, with the same outputs
    t = j["totals"]
    if n > 1:
        if j["baseline"] != "layer" or t["alltoallv_in_layer_combine_ms"] <= 0 or not t["baseline_outputs_equal"] \
                or "plain MPI_Alltoallv in the layer" not in p.stdout or "waiting for peers" not in p.stdout:
            raise Fail(f"bench lacks the in-layer plain MPI_Alltoallv baseline or its split:\n{p.stdout}\n{t}")
        if any(k not in j["per_rank"][0]["combine_split"] for k in ("copy_ms", "arrive_ms", "finish_ms")):
            raise Fail(f"bench JSON lacks the exchange split: {j['per_rank'][0]}")
        ja = os.path.join(args.workdir, f"bench_alone_n{n}.json")
        p2 = ok(args, [args.mxworker, "bench", "--preset", "tiny", "--tokens", "5", "--iters", "1", "--baseline",
                       "alone", "--json", ja], n)
        with open(ja) as f:
            ja = json.load(f)
        if ja["baseline"] != "alone" or "alltoallv_in_layer_combine_ms" in ja["totals"] or \
                "in the layer  dispatch" in p2.stdout.replace("mxep exchange in the layer  dispatch", ""):
            raise Fail(f"--baseline alone still ran the layers over plain MPI_Alltoallv:\n{p2.stdout}")
    want_tr = args.transport or "mpi"
    if j["transport"] != want_tr or f"transport {want_tr}" not in p.stdout:
        raise Fail(f"bench does not report transport {want_tr}: JSON {j.get('transport')}\n{p.stdout}")
    if want_tr == "ucx" and not j["exchange"].startswith("ucx:"):
        raise Fail(f"the UCX transport's path should say which UCX transports it chose: {j['exchange']}")
    if args.transport == "ucx":
        # --transport both: the layers over MPI, and UCX timed alone on the same bytes beside MPI and MPI_Alltoallv
        jb = os.path.join(args.workdir, f"bench_both_n{n}.json")
        p = ok(args, [args.mxworker, "bench", "--preset", "tiny", "--tokens", "5", "--iters", "2", "--json", jb,
                      "--transport", "both"], n)
        with open(jb) as f:
            j = json.load(f)
        if j["transport"] != "mpi" or j.get("transport2", {}).get("transport") != "ucx" or \
                j["transport2"]["exchange_alone_dispatch_ms"] <= 0:
            raise Fail(f"--transport both JSON lacks the UCX timings: {j}")
        lines = [l for l in p.stdout.splitlines() if "exchange alone" in l]
        if len(lines) != 2 or "(ucx ucx:" not in lines[1] or "plain MPI_Alltoallv alone" not in p.stdout:
            raise Fail(f"--transport both does not show both transports beside MPI_Alltoallv:\n{p.stdout}")
    # info: the cluster table with every rank's backend choice, as text and JSON; no batch
    ji = os.path.join(args.workdir, f"info_n{n}.json")
    p = ok(args, [args.mxworker, "info", "--preset", "tiny", "--json", ji], n)
    if "oracle" not in p.stdout or "chosen" not in p.stdout:
        raise Fail(f"info does not show the oracle's choices:\n{p.stdout}")
    with open(ji) as f:
        j = json.load(f)
    if j["n_procs"] != n or any(not q["backend"] for q in j["procs"]):
        raise Fail(f"info JSON wrong: {j}")
    if j.get("transport") != want_tr or f"transport {want_tr}: exchange {j['exchange']}" not in p.stdout:
        raise Fail(f"info does not print transport {want_tr} and its path:\n{p.stdout}")
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
    refused(args, [w, "bench", "--preset", "deepep-ll", "--experts", "4", "--iters", "1"], n,
            must=("--experts 4", "top-8: give more experts"))
    refused(args, [w, "bench", "--preset", "tiny", "--backend", "no-such-backend", "--iters", "1"], n,
            must=("no-such-backend",))
    # the last resort against a hang: the whole job ends, with a message, soon after --timeout
    t0 = time.time()
    refused(args, [w, "bench", "--preset", "tiny", "--iters", "1000000", "--quiet", "--timeout", "2"], n,
            must=("--timeout 2",))
    if time.time() - t0 > 30:
        raise Fail("--timeout 2 took more than 30 s to end the job")
    # settings this machine cannot honour are errors naming them, not quiet fall backs (MXEP_CPU_ISA=avx2x ran the
    # scalar ref backend, 45x slower; the others were taken as unset)
    for var, val in (("MXEP_CPU_ISA", "avx2x"), ("MXEP_SHM_COPY_THREADS", "2x"), ("MXEP_TRANSPORT_HOSTS", "2abc")):
        refused(args, ["-x", f"{var}={val}", w, "bench", "--preset", "tiny", "--iters", "1"], n,
                must=(f"{var}='{val}'",))
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
        # a rank that dies mid-job (SIGKILL: no handler runs): the whole job ends soon, non-zero, the rank named
        cmd = mpi_cmd(args, [w, "bench", "--preset", "tiny", "--iters", "1000000", "--quiet"], n)
        print(f"[start] {' '.join(cmd)}")
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            t0 = time.time()
            victim = []
            while not victim and time.time() - t0 < 30 and p.poll() is None:
                time.sleep(0.5)
                victim = [c for c in children(p.pid) if mpi_rank(c) == last]
            if not victim:
                raise Fail(f"rank {last} of the bench not found under mpirun (exit {p.poll()})")
            time.sleep(1.0)  # inside the timed loop
            t0 = time.time()
            os.kill(victim[0], signal.SIGKILL)
            try:
                out, _ = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                raise Fail(f"rank {last} killed: the job did not end within 30 s (a hang)")
            if p.returncode == 0 or f"rank {last}" not in out:
                raise Fail(f"rank {last} killed: exit {p.returncode}, expected non-zero naming rank {last}:\n{out}")
            print(f"[{time.time() - t0:5.1f}s] rank {last} killed mid-bench: the job ended, exit {p.returncode}")
        finally:
            kill_job(p)


def free_tcp_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def children(pid):
    """the rank processes mpirun started (its direct children on this host)"""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                if int(st.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def kill_job(p):
    """an mpirun still running: its rank processes and itself killed, waited for"""
    if p.poll() is None:
        for c in children(p.pid):
            try:
                os.kill(c, signal.SIGKILL)
            except OSError:
                pass
        p.kill()
        p.wait()


def mpi_rank(pid):
    """the MPI rank of a rank process, from its environment (Open MPI / PMIx set it), or -1"""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    except OSError:
        return -1
    for k in (b"OMPI_COMM_WORLD_RANK", b"PMIX_RANK", b"PMI_RANK"):
        if k in env and env[k].isdigit():
            return int(env[k])
    return -1


class Server:
    """mpiexec -n N mxworker serve, output to files; stopped by SIGTERM; never left running"""

    def __init__(self, args, n, url, extra, tag):
        self.out = os.path.join(args.workdir, f"serve_{tag}.out")
        self.err = os.path.join(args.workdir, f"serve_{tag}.err")
        self.cmd = mpi_cmd(args, [args.mxworker, "serve", "--preset", "tiny", "--listen", url] + extra, n)
        print(f"[start] {' '.join(self.cmd)}")
        with open(self.out, "w") as fo, open(self.err, "w") as fe:
            self.p = subprocess.Popen(self.cmd, stdout=fo, stderr=fe)

    def text(self):
        with open(self.out) as fo, open(self.err) as fe:
            return fo.read(), fe.read()

    def wait_listening(self, limit=30):
        t0 = time.time()
        while time.time() - t0 < limit:
            if self.p.poll() is not None:
                o, e = self.text()
                raise Fail(f"the server exited {self.p.returncode} before listening:\n{o}\n{e}")
            if "listening on" in self.text()[1]:
                return
            time.sleep(0.1)
        raise Fail(f"the server did not listen within {limit} s:\n{self.text()}")

    def wait(self, limit):
        try:
            return self.p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        kill_job(self.p)


def client(args, url, inp, out, extra=(), timeout_ms=20000):
    cmd = [args.mxclient, "--url", url, "--input", inp, "--output", out, "--timeout-ms", str(timeout_ms)] + list(extra)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def case_serve(args, n):
    """mxworker serve on n ranks: concurrent mxclient requests (BF16 and F32, several sizes and two layers)
    each equal bitwise to `mxworker run` on one rank; bad requests get error replies and the server
    goes on; another server on a busy address is refused; SIGTERM to the ranks (as mpirun forwards
    it) drains and every rank exits 0, SIGTERM to mpirun ends the job too, and SIGTERM to one follower
    alone (a `kill` of that process) stops the whole job as well, all in bounded time."""
    if not args.mxclient:
        raise Fail("the serve case needs --mxclient")
    H, E = model_hidden(args, [])
    rnd = random.Random(SEED + 5)
    cases = []  # (input file, layer, T)
    for i, (t, dt, layer) in enumerate([(1, "BF16", 0), (n, "F32", 1), (n + 1, "BF16", 1), (37, "BF16", 0),
                                        (13, "F32", 0), (64, "BF16", 1)]):
        inp = os.path.join(args.workdir, f"serve_in{i}.safetensors")
        write_input(inp, t, H, dt, rnd.randrange(1 << 30))
        ref = os.path.join(args.workdir, f"serve_ref{i}.safetensors")
        # the reference: one rank, default transport
        p = subprocess.run([args.mxworker, "run", "--preset", "tiny", "--layer", str(layer), "--input", inp,
                            "--output", ref], capture_output=True, text=True, timeout=LIMIT)
        if p.returncode != 0:
            raise Fail(f"reference run failed: {p.stderr}")
        cases.append((inp, layer, t, read_st(ref)["hidden_states"]))
    if n % 2 == 0:
        url = f"ipc://{args.workdir}/mxw.sock"
        if len(url) > 100:
            url = f"ipc:///tmp/mxw_serve_{os.getpid()}.sock"
    else:
        url = f"tcp://127.0.0.1:{free_tcp_port()}"
    srv = Server(args, n, url, ["--layers", "2", "--max-tokens", "100"], "main")
    try:
        srv.wait_listening()
        t0 = time.time()
        # every case from its own client, all at once, each twice (--repeat)
        procs = []
        for i, (inp, layer, t, want) in enumerate(cases):
            out = os.path.join(args.workdir, f"serve_out{i}.safetensors")
            procs.append((i, out, client(args, url, inp, out, ["--layer", str(layer), "--repeat", "2"])))
        for i, out, p in procs:
            try:
                o, e = p.communicate(timeout=LIMIT)
            except subprocess.TimeoutExpired:
                p.kill()
                raise Fail(f"mxclient of case {i} did not finish in {LIMIT} s")
            if p.returncode != 0:
                raise Fail(f"mxclient of case {i} exited {p.returncode}:\n{o}\n{e}")
            got = read_st(out)["output"]
            if got[0] != "BF16" or got[1] != [cases[i][2], H] or got[2] != cases[i][3][2]:
                raise Fail(f"serve reply of case {i} (layer {cases[i][1]}, T {cases[i][2]}) on {n} ranks differs "
                           f"from mxworker run on one rank (seed {SEED})")
        print(f"[{time.time() - t0:5.1f}s] {len(procs)} concurrent clients x 2 requests: every reply bitwise "
              f"equal to mxworker run")
        # bad requests: an error reply naming the problem, and the server keeps serving
        inp0, _, _, _ = cases[3]
        bad = [(["--layer", "5"], "layer"),
               (["--format", "raw", "--hidden", "32"], "hidden"),
               ([], "tokens")]  # 101+ tokens > --max-tokens 100
        big = os.path.join(args.workdir, "serve_big.safetensors")
        write_input(big, 101, H, "BF16", SEED + 6)
        for k, (extra, word) in enumerate(bad):
            src = big if word == "tokens" else (cases[3][0] if word != "hidden" else None)
            if word == "hidden":  # raw BF16 bytes of the 37 x H input read as rows of 32
                src = os.path.join(args.workdir, "serve_raw.bin")
                with open(src, "wb") as f:
                    f.write(cases[3][3][2])
            out = os.path.join(args.workdir, f"serve_bad{k}.safetensors")
            p = client(args, url, src, out, extra)
            o, e = p.communicate(timeout=LIMIT)
            if p.returncode != 1 or word not in (o + e).lower() or os.path.exists(out):
                raise Fail(f"bad request {extra} ({word}): exit {p.returncode}, expected 1 with an error naming "
                           f"'{word}' and no output file:\n{o}\n{e}")
        out = os.path.join(args.workdir, "serve_after.safetensors")
        p = client(args, url, cases[0][0], out, ["--layer", str(cases[0][1])])
        o, e = p.communicate(timeout=LIMIT)
        if p.returncode != 0 or read_st(out)["output"][2] != cases[0][3][2]:
            raise Fail(f"a good request after the bad ones failed (exit {p.returncode}):\n{o}\n{e}")
        # a second server on the same busy tcp address: refused clearly, in bounded time
        if url.startswith("tcp://"):
            p = sh(args, [args.mxworker, "serve", "--preset", "tiny", "--listen", url], n, timeout=LIMIT)
            if p.returncode != 1 or url not in p.stderr:
                raise Fail(f"a second server on busy {url}: exit {p.returncode}, expected 1 naming the url:\n"
                           f"{p.stderr}")
        # SIGTERM to every rank (what mpirun forwards): drain, every rank exits 0
        ranks = children(srv.p.pid)
        if len(ranks) != n:
            raise Fail(f"found {len(ranks)} rank processes under mpirun, expected {n}")
        t0 = time.time()
        for r in ranks:
            os.kill(r, signal.SIGTERM)
        rc = srv.wait(30)
        if rc is None:
            raise Fail(f"SIGTERM to the {n} ranks: the job did not end within 30 s")
        o, e = srv.text()
        if rc != 0 or "mxworker serve: stopped after" not in o:
            raise Fail(f"SIGTERM to the ranks: mpiexec exited {rc} (expected 0: every rank exits 0):\n{o}\n{e}")
        want = len(cases) * 2 + 1 + len(bad)
        if f"stopped after {want} requests ({want - len(bad)} ok, {len(bad)} error replies" not in o:
            raise Fail(f"serve's final counts are not {want} requests with {len(bad)} error replies:\n{o}")
        print(f"[{time.time() - t0:5.1f}s] SIGTERM to the ranks: every rank exited 0")
    finally:
        srv.kill()
    # SIGTERM to mpiexec itself (Ctrl-C / kill of the launcher): the ranks drain and the job ends in bounded time
    # (Open MPI's mpirun reports a non-zero status when it was signalled itself; the ranks' own exit is clean)
    srv = Server(args, n, url, [], "term")
    try:
        srv.wait_listening()
        t0 = time.time()
        srv.p.send_signal(signal.SIGTERM)
        if srv.wait(30) is None:
            raise Fail("SIGTERM to mpiexec: the job did not end within 30 s")
        o, e = srv.text()
        if "mxworker serve: stopped after 0 requests" not in o:
            raise Fail(f"SIGTERM to mpiexec: rank 0 did not stop cleanly:\n{o}\n{e}")
        print(f"[{time.time() - t0:5.1f}s] SIGTERM to mpiexec: the job ended, rank 0 drained")
    finally:
        srv.kill()
    if n < 2:
        return
    # SIGTERM to the last rank alone: it asks rank 0 to stop, the job drains and every rank exits 0
    srv = Server(args, n, url, [], "one")
    try:
        srv.wait_listening()
        follower = [r for r in children(srv.p.pid) if mpi_rank(r) == n - 1]
        if len(follower) != 1:
            raise Fail(f"rank {n - 1} not found among mpirun's children {children(srv.p.pid)}")
        t0 = time.time()
        os.kill(follower[0], signal.SIGTERM)
        rc = srv.wait(30)
        if rc is None:
            raise Fail(f"SIGTERM to rank {n - 1} alone: the job did not end within 30 s")
        o, e = srv.text()
        if rc != 0 or "mxworker serve: stopped after 0 requests" not in o:
            raise Fail(f"SIGTERM to rank {n - 1} alone: mpiexec exited {rc} (expected 0 after rank 0 drained):\n"
                       f"{o}\n{e}")
        print(f"[{time.time() - t0:5.1f}s] SIGTERM to rank {n - 1} alone: every rank exited 0")
    finally:
        srv.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("case")
    ap.add_argument("n", type=int)
    ap.add_argument("--mpiexec", required=True)
    ap.add_argument("--mpiflags", default="")
    ap.add_argument("--mxworker", required=True)
    ap.add_argument("--writer", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--transport", choices=("mpi", "ucx"), default=None)
    ap.add_argument("--mxclient", default=None)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    tr = f"{args.transport}_" if args.transport else ""
    args.workdir = tempfile.mkdtemp(prefix=f"{args.case}_{tr}n{args.n}_", dir=args.workdir)
    try:
        globals()["case_" + args.case](args, args.n)
    except Fail as e:
        print(f"FAIL {args.case} n={args.n} transport={args.transport or 'mpi'} (seed {SEED}): {e}")
        return 1
    print(f"ok {args.case} n={args.n} transport={args.transport or 'mpi'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
