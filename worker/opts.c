/* mxworker command line: subcommands, flags, validation, --help. Local, no MPI. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "worker_internal.h"

static const char usage_main[] =
    "usage: mpirun -n N mxworker [bench|run|info|serve] [options]\n"
    "\n"
    "Runs Mixture-of-Experts layers across the MPI ranks of the job: every rank routes its\n"
    "own tokens, sends each token once to every rank holding one of its experts, runs the\n"
    "experts it holds with the backend its oracle chose, and combines what comes back.\n"
    "\n"
    "subcommands:\n"
    "  bench   (default) time layers on generated tokens; per-rank table, totals, and a plain\n"
    "          MPI_Alltoallv and a memcpy of the same bytes measured in the same run\n"
    "  run     compute one layer for hidden states read from a safetensors file\n"
    "  info    print the cluster table (hosts, CPUs, GPUs, each rank's backend choice and why\n"
    "          the other backends declined) and the transport's path; runs no batch\n"
    "  serve   rank 0 answers batches sent over nanomsg (mxclient, docs/PROTOCOL.md) with\n"
    "          the layer output, every rank computing; SIGTERM drains and stops the job\n"
    "\n"
    "exit status: 0 success, 1 the job failed (rank 0 printed which rank and why, or\n"
    "--check found a mismatch), 2 bad command line, 124 --timeout expired.\n"
    "\n"
    "`mxworker SUBCOMMAND --help` lists the options of each.\n";

static const char usage_model[] =
    "model:\n"
    "  --model DIR          checkpoint directory (config.json + safetensors); each rank reads\n"
    "                       only the experts it holds. Without it: a built-in synthetic model\n"
    "  --preset NAME        built-in model (default gpt-oss-20b): the presets of checkpoint/\n"
    "                       (gpt-oss-20b, gpt-oss-120b, qwen3-moe-fp8, deepseek-fp8, gemma4-fp8,\n"
    "                       w4a8, tiny, ...) and, for bench, deepep-ll (H 7168, 256 experts\n"
    "                       top-8, 128 tokens per rank, FP8 dispatch, uniform routing)\n"
    "  --experts N          built-in model with only N experts (fast tests of big presets)\n"
    "  --seed S             seed of the built-in weights and the bench tokens (default 1)\n"
    "  --layer L            layer index (default 0)\n"
    "placement and routing:\n"
    "  --placement P        JSON file {\"experts\": [[ranks of expert 0], ...]}, or\n"
    "                       'contiguous' (default) or 'replicated' (for more ranks than experts)\n"
    "  --router NAME        override the model's router: topk_softmax, softmax_topk,\n"
    "                       sigmoid_grouped, expert_choice, gemma4 (bench also: uniform)\n"
    "exchange and compute:\n"
    "  --dispatch-dtype D   bf16 (default, exact) or fp8 (E4M3 + one scale per 128)\n"
    "  --combine C          exact (default: bitwise the same for any rank count or placement)\n"
    "                       or reduce (pre-summed per rank; invariant only for a fixed\n"
    "                       placement without replicas)\n"
    "  --exchange X         auto (default: shared memory within a host, alltoallv across),\n"
    "                       alltoallv, or shm (the MPI transport's paths)\n"
    "  --transport T        mpi (default) or ucx: which transport moves the bytes (UCX picks\n"
    "                       shared memory or tcp itself; info and bench print its path).\n"
    "                       bench and info also take 'both': layers over MPI, UCX beside it\n"
    "  --backend NAME       force a kernel backend (ref, cpu, cuda, ...); default: the oracle\n"
    "                       (or $MXEP_BACKEND). An unusable forced backend is an error\n"
    "  --threads N          threads per rank (default: $OMP_NUM_THREADS, else the rank's cores\n"
    "                       / ranks on its host; where those ranks share the host's CPUs and\n"
    "                       some run on a GPU, a GPU rank takes 2 and the CPU ranks the rest)\n"
    "  --timeout S          abort the whole job if it has not finished after S seconds (a last\n"
    "                       resort against a hang; default 0 = no limit)\n";

static const char usage_bench[] =
    "usage: mpirun -n N mxworker bench [options]\n"
    "\n"
    "Times MoE layers on generated tokens and prints a per-rank table (host, device, backend,\n"
    "experts held, tokens in, compute ms, waiting ms) and totals (tokens/s, p50/p99 layer\n"
    "latency, dispatch/combine bytes and GB/s, load imbalance), beside a plain MPI_Alltoallv\n"
    "and a memcpy of the same bytes timed in the same run.\n"
    "\n"
    "  --layers N           layers to run, from --layer (default 1)\n"
    "  --tokens N           tokens per rank (default 64; deepep-ll: 128)\n"
    "  --tokens-total N     tokens of the whole job, split over the ranks (instead of --tokens)\n"
    "  --iters N            timed iterations (default 5)\n"
    "  --warmup N           untimed iterations first (default 1)\n"
    "  --check              also compare every layer's output with the single-process ref\n"
    "                       pipeline run with the same backend on rank 0 (bitwise for exact +\n"
    "                       bf16; tolerance for fp8 dispatch or reduce); exit 1 on mismatch\n"
    "  --json FILE          write the results as JSON (rank 0)\n"
    "  --quiet              no progress line on stderr\n"
    "  --transport both     also time the UCX transport alone on the same bytes, beside MPI's\n"
    "                       and the plain MPI_Alltoallv (the layers themselves run over MPI)\n"
    "  --baseline B         layer (default): every iteration also runs the layers over plain\n"
    "                       MPI_Alltoallv, so both exchanges are timed in the same conditions\n"
    "                       (same compute before them, same skew, same caches); alone: only\n"
    "                       the exchanges alone after a barrier (half the layers to run)\n";

static const char usage_run[] =
    "usage: mpirun -n N mxworker run --input X.safetensors --output Y.safetensors [options]\n"
    "\n"
    "Computes layer --layer for the tensor `hidden_states` [T x H] (BF16 or F32) of the input,\n"
    "the tokens split over the ranks, and writes `hidden_states` [T x H] BF16, `topk_ids`\n"
    "[T x k] I32 and `topk_weights` [T x k] F32 (expert choice: k = most experts any token got,\n"
    "padded with -1 / 0). With --combine exact the output does not depend on the rank count.\n"
    "The output is written to a temporary name and renamed: never half-written.\n"
    "\n"
    "  --input FILE         input safetensors (read by rank 0)\n"
    "  --output FILE        output safetensors (written by rank 0)\n"
    "  --check              compare with the single-process ref pipeline (same backend)\n";

static const char usage_info[] =
    "usage: mpirun -n N mxworker info [options]\n"
    "\n"
    "Prints the cluster table: per rank its host, node, local rank, cores, NUMA nodes, ISA,\n"
    "GPUs per runtime, device binding and the backend its oracle chose for the model's layer,\n"
    "then every rank's report of why the other backends declined, and the transport with the\n"
    "path it chose (MPI: shm, alltoallv, shm+alltoallv; UCX: its transports, e.g.\n"
    "ucx:posix/memory,tcp/eth0). Loads no weights and runs no batch.\n"
    "\n"
    "  --json FILE          write the table as JSON (rank 0)\n";

static const char usage_serve[] =
    "usage: mpirun -n N mxworker serve --listen URL [options]\n"
    "\n"
    "Rank 0 binds URL (any nanomsg address: tcp://127.0.0.1:5555, tcp://0.0.0.0:5555,\n"
    "ipc:///tmp/mxep.sock) and answers requests (a layer id and hidden states [T x H], BF16\n"
    "or F32; docs/PROTOCOL.md) with the layer output [T x H] BF16. Each request's tokens are\n"
    "split over all ranks as `run` splits them, so a reply equals `mxworker run` of the same\n"
    "tokens (bitwise with --combine exact). Clients: mxclient, or include/mxep/serve.h.\n"
    "Requests from several clients are taken one at a time; bad requests get an error reply\n"
    "and the server goes on. SIGTERM or SIGINT to any rank (the 'listening' line gives rank\n"
    "0's pid) answers the requests already received (at most one per client connection),\n"
    "then every rank exits 0. Through mpirun it does too, but Open MPI kills the ranks 1 s\n"
    "after it forwards the signal (MCA odls_base_sigkill_timeout): requests not answered by\n"
    "then get no reply.\n"
    "\n"
    "  --listen URL         address rank 0 binds (required)\n"
    "  --layers N           layers served, from --layer (default 1); others are refused\n"
    "  --max-tokens N       most tokens per request (default 4096, at most 65536)\n";

static void help(wk_cmd_t cmd, int has_cmd)
{
    if (!has_cmd) {
        fputs(usage_main, stdout);
        fputs("\noptions of bench (the default):\n", stdout);
    }
    if (cmd == WK_CMD_BENCH)
        fputs(has_cmd ? usage_bench : usage_bench + strlen("usage: mpirun -n N mxworker bench [options]\n"), stdout);
    else if (cmd == WK_CMD_RUN)
        fputs(usage_run, stdout);
    else if (cmd == WK_CMD_SERVE)
        fputs(usage_serve, stdout);
    else
        fputs(usage_info, stdout);
    fputs("\n", stdout);
    fputs(usage_model, stdout);
}

static int fail(char *msg, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, len, fmt, ap);
    va_end(ap);
    return 2;
}

static int parse_long(const char *flag, const char *v, long lo, long hi, long *out, char *msg, size_t len)
{
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || !end || *end || end == v || x < lo || x > hi)
        return fail(msg, len, "%s '%s': expected an integer in [%ld, %ld]", flag, v, lo, hi);
    *out = x;
    return 0;
}

/* An option of one subcommand only (WK_CMD_* want, -1 for any) given to another: 2
 * and the message naming both, else 0. */
static int scope_fail(char *msg, size_t len, const char *name, int want, int cmd, const char *cmdname)
{
    static const char *const names[] = {[WK_CMD_BENCH] = "bench", [WK_CMD_RUN] = "run", [WK_CMD_SERVE] = "serve"};
    if (want < 0 || want == cmd)
        return 0;
    const int layers = strcmp(name, "--layers") == 0; /* bench and serve take it */
    return fail(msg, len, "%s%s is an option of mxworker %s%s, not of mxworker %s", name,
                strcmp(name, "--router") == 0 ? " uniform" : "", names[want], layers ? " and serve" : "", cmdname);
}

/* --listen: the transports nanomsg binds (tcp, ws: HOST:PORT with a port of
 * 1..65535, HOST possibly * or an interface; ipc, inproc: a name), so that a
 * malformed address is a bad command line, not a failed job. */
static int listen_url_ok(const char *u)
{
    static const char *const named[] = {"ipc://", "inproc://"}, *const hosted[] = {"tcp://", "ws://"};
    for (int i = 0; i < 2; i++)
        if (strncmp(u, named[i], strlen(named[i])) == 0)
            return u[strlen(named[i])] != 0;
    for (int i = 0; i < 2; i++) {
        if (strncmp(u, hosted[i], strlen(hosted[i])) != 0)
            continue;
        const char *h = u + strlen(hosted[i]), *end = h + strcspn(h, "/"); /* ws may have a path */
        const char *c = end;
        while (c > h && c[-1] != ':')
            c--;
        if (c <= h + 1 || c == end || end - c > 5) /* no host, no port, or too long a port */
            return 0;
        long port = 0;
        for (const char *d = c; d < end; d++) {
            if (*d < '0' || *d > '9')
                return 0;
            port = 10 * port + (*d - '0');
        }
        return port >= 1 && port <= 65535;
    }
    return 0;
}

int wk_opts_parse(int argc, char **argv, wk_opts_t *o, char *msg, size_t msg_len, int print_help)
{
    memset(o, 0, sizeof *o);
    o->cmd = WK_CMD_BENCH;
    o->preset = "gpt-oss-20b";
    o->layers = 1;
    o->layer = 0;
    o->tokens = -1;
    o->tokens_total = -1;
    o->iters = 5;
    o->warmup = 1;
    o->placement = "contiguous";
    o->router = WK_ROUTER_MODEL;
    o->dtype = MX_DISPATCH_BF16;
    o->combine = MX_COMBINE_EXACT;
    o->exchange = MX_EXCHANGE_AUTO;
    o->seed = 1;
    o->baseline = WK_BASELINE_LAYER;
    int i = 1, has_cmd = 0;
    if (argc > 1 && argv[1][0] != '-') {
        if (strcmp(argv[1], "bench") == 0)
            o->cmd = WK_CMD_BENCH;
        else if (strcmp(argv[1], "run") == 0)
            o->cmd = WK_CMD_RUN;
        else if (strcmp(argv[1], "info") == 0)
            o->cmd = WK_CMD_INFO;
        else if (strcmp(argv[1], "serve") == 0)
            o->cmd = WK_CMD_SERVE;
        else if (strcmp(argv[1], "help") == 0) {
            if (print_help)
                help(WK_CMD_BENCH, 0);
            return 1;
        } else
            return fail(msg, msg_len, "unknown subcommand '%s': expected bench, run, info or serve (mxworker --help)",
                        argv[1]);
        has_cmd = 1;
        i = 2;
    }
    const char *cmdname = o->cmd == WK_CMD_BENCH  ? "bench"
                          : o->cmd == WK_CMD_RUN  ? "run"
                          : o->cmd == WK_CMD_INFO ? "info"
                                                  : "serve";
    if (o->cmd == WK_CMD_SERVE && !WK_HAVE_SERVE)
        return fail(msg, msg_len,
                    "mxworker serve: this mxworker was built without nanomsg (the front door); rebuild with "
                    "nanomsg installed (-DMXEP_WITH_NANOMSG=ON)");
    int dtype_set = 0, iters_set = 0, layers_set = 0, exchange_set = 0;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            if (print_help)
                help(o->cmd, has_cmd);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0)
            return fail(msg, msg_len, "unexpected argument '%s' (options start with --; mxworker %s --help)", a,
                        cmdname);
        char name[64];
        const char *val = NULL;
        const char *eq = strchr(a, '=');
        if (eq) {
            size_t n = (size_t)(eq - a);
            if (n >= sizeof name)
                n = sizeof name - 1;
            memcpy(name, a, n);
            name[n] = 0;
            val = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", a);
        }
        /* boolean flags */
        if (strcmp(name, "--check") == 0 || strcmp(name, "--quiet") == 0) {
            if (val)
                return fail(msg, msg_len, "%s takes no value", name);
            if (strcmp(name, "--check") == 0) {
                if (o->cmd == WK_CMD_INFO || o->cmd == WK_CMD_SERVE)
                    return fail(msg, msg_len, "--check is not an option of mxworker %s", cmdname);
                o->check = 1;
            } else {
                o->quiet = 1; /* the progress line is bench's */
                if (scope_fail(msg, msg_len, name, WK_CMD_BENCH, o->cmd, cmdname))
                    return 2;
            }
            continue;
        }
        static const char *const valued[] = {
            "--model",          "--preset",  "--experts",    "--seed",    "--layer",   "--layers",    "--tokens",
            "--tokens-total",   "--iters",   "--warmup",     "--threads", "--backend", "--placement", "--router",
            "--dispatch-dtype", "--combine", "--exchange",   "--json",    "--input",   "--output",    "--timeout",
            "--transport",      "--listen",  "--max-tokens", "--baseline"};
        int known = 0;
        for (size_t q = 0; q < sizeof valued / sizeof valued[0]; q++)
            known |= strcmp(name, valued[q]) == 0;
        if (!known)
            return fail(msg, msg_len, "unknown option '%s' for mxworker %s (mxworker %s --help)", name, cmdname,
                        cmdname);
        if (!val) {
            if (i + 1 >= argc)
                return fail(msg, msg_len, "%s needs a value (mxworker %s --help)", name, cmdname);
            val = argv[++i];
            /* `--json --quiet`: the next option is not this one's value (write --json=--quiet for a file so named) */
            if (strncmp(val, "--", 2) == 0 && val[2])
                return fail(msg, msg_len,
                            "%s needs a value, got the option '%s' (mxworker %s --help; %s=VALUE if "
                            "the value starts with --)",
                            name, val, cmdname, name);
        }
        long x = 0;
        int r = 0;
        int only = -1; /* the subcommand this option belongs to, -1: any */
        if (strcmp(name, "--model") == 0)
            o->model_dir = val;
        else if (strcmp(name, "--preset") == 0) {
            o->preset = val;
            o->preset_set = 1;
        } else if (strcmp(name, "--experts") == 0) {
            r = parse_long(name, val, 1, 1 << 20, &x, msg, msg_len);
            o->experts = (int)x;
        } else if (strcmp(name, "--seed") == 0) {
            char *end = NULL;
            errno = 0;
            /* decimal, or hex after 0x (010 is ten, not octal eight) */
            unsigned long long s = strtoull(val, &end, (val[0] == '0' && (val[1] == 'x' || val[1] == 'X')) ? 16 : 10);
            if (errno || !end || *end || end == val || val[0] < '0' || val[0] > '9') /* " -5" wrapped */
                return fail(msg, msg_len, "--seed '%s': expected a non-negative integer", val);
            o->seed = s;
        } else if (strcmp(name, "--layer") == 0) {
            r = parse_long(name, val, 0, 1 << 20, &x, msg, msg_len);
            o->layer = (int)x;
        } else if (strcmp(name, "--layers") == 0) {
            if (o->cmd != WK_CMD_SERVE)
                only = WK_CMD_BENCH;
            r = parse_long(name, val, 1, 1 << 20, &x, msg, msg_len);
            o->layers = (int)x;
            layers_set = 1;
        } else if (strcmp(name, "--tokens") == 0) {
            only = WK_CMD_BENCH;
            r = parse_long(name, val, 0, 1L << 24, &x, msg, msg_len);
            o->tokens = x;
        } else if (strcmp(name, "--tokens-total") == 0) {
            only = WK_CMD_BENCH;
            r = parse_long(name, val, 0, 1L << 30, &x, msg, msg_len);
            o->tokens_total = x;
        } else if (strcmp(name, "--iters") == 0) {
            only = WK_CMD_BENCH;
            r = parse_long(name, val, 1, 1000000, &x, msg, msg_len);
            o->iters = (int)x;
            iters_set = 1;
        } else if (strcmp(name, "--warmup") == 0) {
            only = WK_CMD_BENCH;
            r = parse_long(name, val, 0, 1000000, &x, msg, msg_len);
            o->warmup = (int)x;
        } else if (strcmp(name, "--threads") == 0) {
            r = parse_long(name, val, 1, 4096, &x, msg, msg_len);
            o->threads = (int)x;
        } else if (strcmp(name, "--timeout") == 0) {
            r = parse_long(name, val, 0, 7 * 86400, &x, msg, msg_len);
            o->timeout = (int)x;
        } else if (strcmp(name, "--backend") == 0) {
            if (strspn(val, " \t") == strlen(val)) /* blank: it meant the default oracle (MXEP_BACKEND ignored) */
                return fail(msg, msg_len, "--backend '%s': expected a backend name or list (e.g. cpu, cuda,cpu, ^cuda)",
                            val);
            o->backend = val;
        } else if (strcmp(name, "--placement") == 0)
            o->placement = val;
        else if (strcmp(name, "--transport") == 0) {
            if (strcasecmp(val, "mpi") == 0)
                o->transport = WK_TRANSPORT_MPI;
            else if (strcasecmp(val, "ucx") == 0)
                o->transport = WK_TRANSPORT_UCX;
            else if (strcasecmp(val, "both") == 0) {
                if (o->cmd != WK_CMD_BENCH && o->cmd != WK_CMD_INFO)
                    return fail(msg, msg_len,
                                "--transport both is for mxworker bench and info (layers over MPI, UCX timed "
                                "beside it); mxworker %s takes mpi or ucx",
                                cmdname);
                o->transport = WK_TRANSPORT_BOTH;
            } else
                return fail(msg, msg_len, "--transport '%s': expected mpi or ucx (bench and info also: both)", val);
            if (o->transport != WK_TRANSPORT_MPI && !WK_HAVE_UCX)
                return fail(msg, msg_len,
                            "--transport %s: this mxworker was built without UCX; rebuild with UCX installed "
                            "(-DMXEP_WITH_UCX=ON) or use --transport mpi",
                            val);
        } else if (strcmp(name, "--baseline") == 0) {
            only = WK_CMD_BENCH;
            if (strcasecmp(val, "layer") == 0)
                o->baseline = WK_BASELINE_LAYER;
            else if (strcasecmp(val, "alone") == 0)
                o->baseline = WK_BASELINE_ALONE;
            else
                return fail(msg, msg_len, "--baseline '%s': expected layer or alone", val);
        } else if (strcmp(name, "--listen") == 0) {
            only = WK_CMD_SERVE;
            if (!listen_url_ok(val))
                return fail(msg, msg_len,
                            "--listen '%s': expected a nanomsg address: tcp://HOST:PORT or ws://HOST:PORT (PORT 1 .. "
                            "65535), ipc:///path or inproc://name",
                            val);
            o->listen = val;
        } else if (strcmp(name, "--max-tokens") == 0) {
            only = WK_CMD_SERVE;
            r = parse_long(name, val, 1, 65536, &x, msg, msg_len);
            o->max_tokens = x;
        } else if (strcmp(name, "--router") == 0) {
            mx_router_kind_t k;
            if (strcasecmp(val, "uniform") == 0) {
                only = WK_CMD_BENCH;
                o->router = WK_ROUTER_UNIFORM;
            } else if (mx_router_parse(val, &k) == MX_OK)
                o->router = (int)k;
            else
                return fail(msg, msg_len,
                            "--router '%s': expected topk_softmax, softmax_topk, sigmoid_grouped, expert_choice, "
                            "gemma4 or (bench) uniform",
                            val);
        } else if (strcmp(name, "--dispatch-dtype") == 0) {
            if (mx_dispatch_dtype_parse(val, &o->dtype) != MX_OK)
                return fail(msg, msg_len, "--dispatch-dtype '%s': expected bf16 or fp8", val);
            dtype_set = 1;
        } else if (strcmp(name, "--combine") == 0) {
            if (mx_combine_mode_parse(val, &o->combine) != MX_OK)
                return fail(msg, msg_len, "--combine '%s': expected exact or reduce", val);
        } else if (strcmp(name, "--exchange") == 0) {
            if (mx_exchange_mode_parse(val, &o->exchange) != MX_OK)
                return fail(msg, msg_len, "--exchange '%s': expected auto, alltoallv or shm", val);
            exchange_set = 1;
        } else if (strcmp(name, "--json") == 0) {
            if (o->cmd == WK_CMD_RUN)
                return fail(msg, msg_len, "--json is not an option of mxworker run (the output is --output)");
            if (o->cmd == WK_CMD_SERVE)
                return fail(msg, msg_len, "--json is not an option of mxworker serve (replies go to the clients)");
            o->json = val;
        } else if (strcmp(name, "--input") == 0) {
            only = WK_CMD_RUN;
            o->input = val;
        } else if (strcmp(name, "--output") == 0) {
            only = WK_CMD_RUN;
            o->output = val;
        } else
            return fail(msg, msg_len, "unknown option '%s' for mxworker %s (mxworker %s --help)", name, cmdname,
                        cmdname);
        if (r)
            return r;
        if (scope_fail(msg, msg_len, name, only, o->cmd, cmdname))
            return 2;
    }
    if (o->tokens >= 0 && o->tokens_total >= 0)
        return fail(msg, msg_len, "--tokens (per rank) and --tokens-total exclude each other: give one");
    if (exchange_set && o->transport == WK_TRANSPORT_UCX)
        return fail(msg, msg_len,
                    "--exchange picks the MPI transport's path; --transport ucx does not use it (--transport both "
                    "runs the layers over MPI and times UCX too)");
    if (o->model_dir && o->preset_set)
        return fail(msg, msg_len, "--preset %s names a built-in model; it does not combine with --model %s", o->preset,
                    o->model_dir);
    if (o->model_dir && o->experts)
        return fail(msg, msg_len, "--experts applies to the built-in model only, not to --model %s", o->model_dir);
    if (o->cmd == WK_CMD_SERVE && !o->listen)
        return fail(msg, msg_len,
                    "mxworker serve needs --listen URL (a nanomsg address such as tcp://127.0.0.1:5555; "
                    "mxworker serve --help)");
    if (o->cmd == WK_CMD_RUN && (!o->input || !o->output))
        return fail(msg, msg_len, "mxworker run needs --input FILE and --output FILE (mxworker run --help)");
    if (strcmp(o->preset, "deepep-ll") == 0) {
        if (o->cmd == WK_CMD_RUN || o->cmd == WK_CMD_SERVE)
            return fail(msg, msg_len, "--preset deepep-ll is a bench shape (uniform routing); use it with bench");
        if (!dtype_set)
            o->dtype = MX_DISPATCH_FP8;
        if (o->tokens < 0 && o->tokens_total < 0)
            o->tokens = 128;
        if (o->router == WK_ROUTER_MODEL)
            o->router = WK_ROUTER_UNIFORM;
    }
    if (o->tokens < 0 && o->tokens_total < 0)
        o->tokens = 64;
    (void)iters_set;
    (void)layers_set;
    return 0;
}

const char *wk_transport_name(wk_transport_t t)
{
    return t == WK_TRANSPORT_UCX ? "ucx" : t == WK_TRANSPORT_BOTH ? "both" : "mpi";
}
