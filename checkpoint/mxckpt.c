/* mxckpt: write synthetic checkpoints and inspect real ones. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt_internal.h"
#include "mxep/checkpoint.h"

static void usage(FILE *f)
{
    int n;
    const char *const *names = mx_synth_presets(&n);
    fprintf(f, "usage:\n"
               "  mxckpt make --preset NAME --layers N --seed S --out DIR [--shard-bytes B] [--experts E]\n"
               "      Writes a checkpoint directory DIR (config.json + safetensors, sharded with a\n"
               "      model.safetensors.index.json once a shard would pass B bytes; default 4 GiB) whose\n"
               "      expert weights are deterministic random values of (preset, seed, layer, expert),\n"
               "      quantized as the preset's real checkpoints are. DIR must not exist; the files are\n"
               "      written under DIR.tmp-PID and renamed at the end, so a failed run leaves nothing.\n"
               "      --experts E keeps only experts 0..E-1 (same bytes as the full model; for tests).\n"
               "      Progress goes to stderr. Presets:");
    for (int i = 0; i < n; i++)
        fprintf(f, " %s", names[i]);
    fprintf(f, "\n"
               "  mxckpt inspect DIR [--json] [--all]\n"
               "      Opens DIR strictly (safetensors headers, index, config.json) and prints the model type,\n"
               "      normalized quantization and scheme, router, activation, expert layout, sizes and\n"
               "      anything suspicious. It loads the router and the first and last expert of every layer\n"
               "      (each load checks shapes, dtypes, the scheme's format and scale and bias values);\n"
               "      --all loads every expert of every layer that has experts, one at a time, so it reads the\n"
               "      whole checkpoint (progress on stderr). --json prints one JSON object on stdout. Exit\n"
               "      status 1 if the checkpoint cannot be opened or (--all) an expert of a layer with experts\n"
               "      cannot be loaded, 0 otherwise (warnings included; layers without experts, such as\n"
               "      DeepSeek's first dense layers, are a warning).\n"
               "  mxckpt fuzz-seeds DIR\n"
               "      Writes the fuzz seed corpus (safetensors headers, index and config of every preset)\n"
               "      into the existing directory DIR (scripts/fuzz.sh uses it).\n"
               "  mxckpt --help\n");
}

/* SIGINT / SIGTERM / SIGHUP during make: the write stops at its next 1% (the
 * temporary directory removed), then the signal is raised again. */
static volatile sig_atomic_t g_signal;
static void on_signal(int sig)
{
    g_signal = sig;
}

/* "WHAT  42%" on stderr: rewritten in place on a terminal, a line per 10% in a log file. */
static void progress_line(const char *what, double fraction)
{
    static int tty = -1, last = -1;
    if (tty < 0)
        tty = isatty(2);
    int pct = (int)(100.0 * fraction);
    if (tty) {
        fprintf(stderr, "\r%s %3d%%%s", what, pct, fraction >= 1.0 ? "\n" : "");
    } else if (pct / 10 != last / 10 || fraction >= 1.0) {
        if (pct != last)
            fprintf(stderr, "%s %3d%%\n", what, pct);
    }
    last = pct;
    fflush(stderr);
}

static int progress(double fraction, void *arg)
{
    (void)arg;
    if (g_signal)
        return 1;
    progress_line("mxckpt: writing", fraction);
    return 0;
}

static int parse_u64(const char *flag, const char *text, uint64_t *v_p)
{
    char *end;
    errno = 0;
    if (!text || !*text || *text == '-') {
        fprintf(stderr, "mxckpt: %s needs a non-negative integer\n", flag);
        return -1;
    }
    /* decimal, or hex after 0x (010 is ten, not octal eight) */
    unsigned long long v = strtoull(text, &end, (text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) ? 16 : 10);
    if (errno || *end) {
        fprintf(stderr, "mxckpt: %s '%s': expected a non-negative integer\n", flag, text);
        return -1;
    }
    *v_p = v;
    return 0;
}

static int cmd_make(int argc, char **argv)
{
    const char *preset = NULL, *out = NULL;
    uint64_t layers = 0, seed = 0, shard = 0, experts = 0;
    int have_layers = 0, have_seed = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        enum { O_PRESET, O_OUT, O_LAYERS, O_SEED, O_SHARD, O_EXPERTS, O_COUNT };
        static const char *const names[O_COUNT] = {"--preset", "--out",         "--layers",
                                                   "--seed",   "--shard-bytes", "--experts"};
        int o = 0;
        while (o < O_COUNT && strcmp(a, names[o]) != 0)
            o++;
        if (o == O_COUNT) { /* before the value: a stray word is no option's value */
            fprintf(stderr, "mxckpt make: unknown option '%s' (see mxckpt --help)\n", a);
            return 2;
        }
        if (!v) {
            fprintf(stderr, "mxckpt make: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (o == O_PRESET)
            preset = v;
        else if (o == O_OUT)
            out = v;
        else if (o == O_LAYERS) {
            if (parse_u64(a, v, &layers))
                return 2;
            have_layers = 1;
        } else if (o == O_SEED) {
            if (parse_u64(a, v, &seed))
                return 2;
            have_seed = 1;
        } else if (o == O_SHARD) {
            if (parse_u64(a, v, &shard))
                return 2;
            if (!shard) {
                fprintf(stderr, "mxckpt make: --shard-bytes must be positive\n");
                return 2;
            }
        } else { /* O_EXPERTS */
            if (parse_u64(a, v, &experts))
                return 2;
            if (!experts || experts > 1 << 20) {
                fprintf(stderr, "mxckpt make: --experts %" PRIu64 ": expected 1 .. %d\n", experts, 1 << 20);
                return 2;
            }
        }
    }
    if (!preset || !out || !have_layers || !have_seed) {
        fprintf(stderr, "mxckpt make: --preset, --layers, --seed and --out are required (see mxckpt --help)\n");
        return 2;
    }
    if (!*out) {
        fprintf(stderr, "mxckpt make: --out '': expected a directory path\n");
        return 2;
    }
    if (layers < 1 || layers > 4096) {
        fprintf(stderr, "mxckpt make: --layers %" PRIu64 ": expected 1 .. 4096\n", layers);
        return 2;
    }
    static const int sigs[3] = {SIGINT, SIGTERM, SIGHUP};
    struct sigaction sa, old[3];
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 3; i++)
        sigaction(sigs[i], &sa, &old[i]);
    mx_status_t st = mx_synth_write_ex(preset, (int)layers, (int)experts, seed, out, (size_t)shard, progress, NULL);
    for (int i = 0; i < 3; i++)
        sigaction(sigs[i], &old[i], NULL);
    if (g_signal) {
        if (st == MX_OK) /* the signal came after the last write: the directory stays, complete */
            fprintf(stderr, "mxckpt: wrote %s (complete before the signal came)\n", out);
        else
            fprintf(stderr, "\nmxckpt make: %s: stopped, nothing written\n", strsignal(g_signal));
        raise(g_signal); /* the default action now: the caller sees the signal */
        return 1;
    }
    if (st) {
        fprintf(stderr, "\nmxckpt make: %s: %s\n", mx_status_str(st), mx_error_detail());
        return 1;
    }
    fprintf(stderr, "mxckpt: wrote %s (preset %s, %" PRIu64 " layers, seed %" PRIu64 ")\n", out, preset, layers, seed);
    return 0;
}

/* ---------------------------------------------------------------- inspect */
typedef struct {
    cJSON *warnings;
} report_t;

static void warn(report_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(report_t *r, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    cJSON_AddItemToArray(r->warnings, cJSON_CreateString(buf));
}

static const char *order_name(mx_gateup_order_t o)
{
    return o == MX_GATEUP_INTERLEAVED ? "interleaved" : "halves";
}

static const char *wfmt_name(mx_wfmt_t f)
{
    return f == MX_WFMT_MXFP4 ? "mxfp4" : f == MX_WFMT_FP8 ? "fp8_e4m3" : "bf16";
}

static const char *wscale_name(mx_wscale_t s)
{
    static const char *const n[] = {"none", "e8m0_per_32", "block_128x128", "per_channel", "per_tensor"};
    return (unsigned)s < 5 ? n[s] : "?";
}

/* Warnings for what the loader takes but is suspicious: MXFP4 scales of 0xFF (NaN, a
 * defined code) and FP8 scales of 0 (NaN, infinite and negative ones it refuses). */
static void scale_warnings(report_t *r, int L, mx_expert_set_h set)
{
    const mx_expert_weights_t *w = mx_expert_set_weights(set);
    for (int i = 0; i < mx_expert_set_count(set); i++) {
        const mx_matrix_t *ms[2] = {&w[i].gate_up, &w[i].down};
        for (int k = 0; k < 2; k++) {
            size_t db, sb, bad = 0;
            mxi_matrix_bytes(ms[k]->fmt, ms[k]->scale_kind, ms[k]->rows, ms[k]->cols, &db, &sb);
            if (ms[k]->fmt == MX_WFMT_MXFP4) {
                for (size_t b = 0; b < sb; b++)
                    bad += ((const uint8_t *)ms[k]->scales)[b] == 0xFF;
            } else if (ms[k]->fmt == MX_WFMT_FP8) {
                for (size_t b = 0; b < sb / sizeof(float); b++)
                    bad += ((const float *)ms[k]->scales)[b] == 0.0f;
            }
            if (bad)
                warn(r, "layer %d expert %d %s: %zu scales are %s", L, mx_expert_set_ids(set)[i],
                     k ? "down" : "gate_up", bad, ms[k]->fmt == MX_WFMT_MXFP4 ? "0xFF (NaN)" : "zero");
        }
    }
}

/* What the report says about the experts: the first loaded one's. */
typedef struct {
    size_t bytes;
    const char *fmt, *scale;
    float in_scale;
    int bias;
} summary_t;

static void summarize(const mx_expert_weights_t *w, summary_t *s)
{
    size_t a, b, d, e;
    mxi_matrix_bytes(w->gate_up.fmt, w->gate_up.scale_kind, w->gate_up.rows, w->gate_up.cols, &a, &b);
    mxi_matrix_bytes(w->down.fmt, w->down.scale_kind, w->down.rows, w->down.cols, &d, &e);
    s->bytes = a + b + d + e;
    s->fmt = wfmt_name(w->gate_up.fmt);
    s->scale = wscale_name(w->gate_up.scale_kind);
    s->in_scale = w->input_scale;
    s->bias = w->gate_up_bias != NULL;
}

/* --all: layers done, on stderr. */
static void inspect_progress(int done, int total)
{
    char what[64];
    snprintf(what, sizeof what, "mxckpt inspect: layer %d of %d,", done, total);
    progress_line(what, (double)done / (total > 0 ? total : 1));
}

/* --all: experts [j0, j1) of layer L loaded one at a time (scale warnings; the summary
 * from the first if it has none). Returns how many loaded, or -1 when a signal stopped
 * it; *bad_p counts the others, err gets the first one's error. */
static int load_each(mx_ckpt_h ck, int L, int j0, int j1, report_t *r, summary_t *sum, long *bad_p, char *err,
                     size_t cap)
{
    int loaded = 0;
    for (int j = j0; j < j1; j++) {
        if (g_signal) {
            fprintf(stderr, "mxckpt inspect: stopped by signal %d\n", (int)g_signal);
            return -1;
        }
        mx_expert_set_h one;
        if (mx_ckpt_load_experts(ck, L, &j, 1, &one) != MX_OK) {
            if (!(*bad_p)++)
                snprintf(err, cap, "layer %d expert %d: %s", L, j, mx_error_detail());
            continue;
        }
        loaded++;
        if (!sum->bytes)
            summarize(mx_expert_set_weights(one), sum);
        scale_warnings(r, L, one);
        mx_expert_set_destroy(one);
    }
    return loaded;
}

static int cmd_inspect(int argc, char **argv)
{
    const char *dir = NULL;
    int json = 0, all = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = 1;
        else if (strcmp(argv[i], "--all") == 0)
            all = 1;
        else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "mxckpt inspect: unknown option '%s'\n", argv[i]);
            return 2;
        } else if (!dir)
            dir = argv[i];
        else {
            fprintf(stderr, "mxckpt inspect: one directory expected, got '%s' too\n", argv[i]);
            return 2;
        }
    }
    if (!dir) {
        fprintf(stderr, "mxckpt inspect: DIR is required (see mxckpt --help)\n");
        return 2;
    }
    mx_ckpt_h ck;
    mx_status_t st = mx_ckpt_open(dir, &ck);
    if (st) {
        if (json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "dir", dir);
            cJSON_AddBoolToObject(o, "ok", 0);
            cJSON_AddStringToObject(o, "status", mx_status_str(st));
            cJSON_AddStringToObject(o, "error", mx_error_detail());
            char *s = cJSON_Print(o);
            printf("%s\n", s);
            free(s);
            cJSON_Delete(o);
        }
        fprintf(stderr, "mxckpt inspect: %s: %s\n", mx_status_str(st), mx_error_detail());
        return 1;
    }
    const mx_model_config_t *c = mx_ckpt_config(ck);
    report_t r = {cJSON_CreateArray()};
    size_t total = 0;
    int nt = mx_ckpt_tensor_count(ck);
    for (int i = 0; i < nt; i++) {
        mx_st_tensor_t t;
        if (mx_ckpt_tensor_at(ck, i, &t) == MX_OK)
            total += t.nbytes;
    }
    const char *layout = mx_ckpt_layout_name(ck);
    if (strcmp(layout, "none") == 0)
        warn(&r, "no expert tensors found in any known layout");
    /* every layer: router and the first and last expert load */
    int moe_layers = 0, first_bad = -1;
    int g_seen[2] = {0, 0}, g_layers[2] = {0, 0}; /* gemma4 router.scale, router.per_expert_scale */
    float g_min[2] = {0.0f, 0.0f}, g_max[2] = {0.0f, 0.0f};
    char first_err[600] = "", first_expert_err[700] = "";
    long bad_experts = 0;
    if (all) {
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
    }
    summary_t sum = {0, "", "", 0.0f, 0};
    int stopped = 0; /* --all: a signal stopped the loads (exit 1, no report) */
    for (int L = 0; L < c->n_layers && strcmp(layout, "none") != 0; L++) {
        int ids[2] = {0, c->n_experts - 1};
        mx_expert_set_h set;
        st = mx_ckpt_load_experts(ck, L, ids, c->n_experts > 1 ? 2 : 1, &set);
        if (st) {
            char err[600];
            snprintf(err, sizeof err, "%s", mx_error_detail());
            /* --all: a layer where some expert loads has experts, and the others are broken;
             * one where none does has none (a dense layer) or is broken whole: a warning */
            long bad_here = 0;
            char err_here[700] = "";
            const int loaded =
                all ? load_each(ck, L, 0, c->n_experts, &r, &sum, &bad_here, err_here, sizeof err_here) : 0;
            if ((stopped = loaded < 0))
                break;
            if (loaded) {
                moe_layers++;
                if (!bad_experts)
                    snprintf(first_expert_err, sizeof first_expert_err, "%s", err_here);
                bad_experts += bad_here;
            } else if (first_bad < 0) {
                first_bad = L;
                snprintf(first_err, sizeof first_err, "%s", err);
            }
            if (all)
                inspect_progress(L + 1, c->n_layers);
            continue;
        }
        moe_layers++;
        int first_missing = -1, missing = mxi_ckpt_missing_experts(ck, L, &first_missing);
        if (missing)
            warn(&r, "layer %d: %d of %d experts have no weights (first: expert %d)", L, missing, c->n_experts,
                 first_missing);
        const mx_expert_weights_t *w = mx_expert_set_weights(set);
        if (!sum.bytes)
            summarize(w, &sum);
        if (c->moe.scheme == MX_SCHEME_W4A8 && (w->input_scale <= 0.0f || w->down_input_scale <= 0.0f))
            warn(&r, "layer %d: W4A8 scheme but expert 0 has no static input scale", L);
        scale_warnings(&r, L, set);
        mx_expert_set_destroy(set);
        if (all && (stopped = load_each(ck, L, 1, c->n_experts - 1, &r, &sum, &bad_experts, first_expert_err,
                                        sizeof first_expert_err) < 0)) /* the others, one at a time */
            break;
        if (all)
            inspect_progress(L + 1, c->n_layers);
        mx_router_weights_t rw;
        if (mx_ckpt_load_router(ck, L, &rw) == MX_OK) {
            if (c->router.kind == MX_ROUTER_SIGMOID_GROUPED && !rw.correction_bias)
                warn(&r, "layer %d: sigmoid grouped router without e_score_correction_bias", L);
            /* Gemma 4: router.scale [H] and router.per_expert_scale [E], their ranges over all layers */
            const float *gv[2] = {rw.scale, rw.per_expert_scale};
            const size_t gn[2] = {rw.hidden, (size_t)rw.n_experts};
            static const char *const gname[2] = {"router.scale", "router.per_expert_scale"};
            for (int k = 0; k < 2; k++) {
                if (!gv[k])
                    continue;
                size_t nonfinite = 0;
                for (size_t i = 0; i < gn[k]; i++) {
                    float v = gv[k][i];
                    if (!isfinite(v)) {
                        nonfinite++;
                        continue;
                    }
                    if (!g_seen[k] || v < g_min[k])
                        g_min[k] = v;
                    if (!g_seen[k] || v > g_max[k])
                        g_max[k] = v;
                    g_seen[k] = 1;
                }
                if (nonfinite)
                    warn(&r, "layer %d: %zu values of %s are NaN or infinite", L, nonfinite, gname[k]);
                g_layers[k]++;
            }
            mx_router_weights_fini(&rw);
        } else
            warn(&r, "layer %d: %s", L, mx_error_detail());
    }
    if (stopped) {
        mx_ckpt_close(ck);
        cJSON_Delete(r.warnings);
        return 1;
    }
    if (first_bad >= 0)
        warn(&r, "%d of %d layers have no loadable experts; first: layer %d: %s", c->n_layers - moe_layers, c->n_layers,
             first_bad, first_err);
    if (c->moe.scheme == MX_SCHEME_W4A8 && sum.in_scale <= 0.0f && moe_layers)
        warn(&r, "W4A8 checkpoint without static input scales");
    if (bad_experts)
        warn(&r, "%ld experts cannot be loaded; first: %s", bad_experts, first_expert_err);
    if (c->moe.act_group && c->moe.act_group != 128) /* it said "per 128 group" for any size */
        warn(&r, "activation scales per %d group: the backends take per-token or per-128-group scales only",
             c->moe.act_group);

    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "dir", dir);
        cJSON_AddBoolToObject(o, "ok", bad_experts == 0);
        cJSON_AddBoolToObject(o, "all_experts_loaded", all);
        cJSON_AddNumberToObject(o, "experts_not_loadable", (double)bad_experts);
        cJSON_AddStringToObject(o, "model_type", c->model_type);
        cJSON_AddStringToObject(o, "quant_method", c->quant_method);
        cJSON_AddStringToObject(o, "scheme", mx_scheme_name(c->moe.scheme));
        cJSON_AddStringToObject(o, "activation", mx_act_name(c->moe.act));
        cJSON_AddStringToObject(o, "gate_up_order", order_name(c->moe.order));
        if (c->moe.act == MX_ACT_SWIGLU_OAI) {
            cJSON_AddNumberToObject(o, "swiglu_limit", c->moe.swiglu_limit);
            cJSON_AddNumberToObject(o, "swiglu_alpha", c->moe.swiglu_alpha);
        }
        cJSON_AddNumberToObject(o, "act_group", c->moe.act_group);
        cJSON *ro = cJSON_AddObjectToObject(o, "router");
        cJSON_AddStringToObject(ro, "kind", mx_router_name(c->router.kind));
        cJSON_AddNumberToObject(ro, "top_k", c->router.top_k);
        cJSON_AddBoolToObject(ro, "renormalize", c->router.renormalize);
        if (c->router.kind == MX_ROUTER_GEMMA4)
            cJSON_AddNumberToObject(ro, "rms_norm_eps", c->rms_norm_eps);
        for (int k = 0; k < 2; k++) {
            if (!g_layers[k])
                continue;
            cJSON *go = cJSON_AddObjectToObject(ro, k ? "per_expert_scale" : "scale");
            cJSON_AddNumberToObject(go, "layers", g_layers[k]);
            cJSON_AddNumberToObject(go, "min", g_seen[k] ? g_min[k] : 0.0);
            cJSON_AddNumberToObject(go, "max", g_seen[k] ? g_max[k] : 0.0);
        }
        if (c->router.kind == MX_ROUTER_SIGMOID_GROUPED) {
            cJSON_AddNumberToObject(ro, "n_group", c->router.n_group);
            cJSON_AddNumberToObject(ro, "topk_group", c->router.topk_group);
            cJSON_AddNumberToObject(ro, "scaling_factor", c->router.scaling_factor);
        }
        cJSON_AddNumberToObject(o, "layers", c->n_layers);
        cJSON_AddNumberToObject(o, "moe_layers", moe_layers);
        cJSON_AddNumberToObject(o, "experts", c->n_experts);
        cJSON_AddNumberToObject(o, "hidden", (double)c->hidden);
        cJSON_AddNumberToObject(o, "intermediate", (double)c->inter);
        cJSON_AddStringToObject(o, "layout", layout);
        cJSON_AddStringToObject(o, "weight_format", sum.fmt);
        cJSON_AddStringToObject(o, "weight_scales", sum.scale);
        cJSON_AddBoolToObject(o, "expert_biases", sum.bias);
        cJSON_AddNumberToObject(o, "bytes_per_expert", (double)sum.bytes);
        cJSON_AddNumberToObject(o, "files", mx_ckpt_file_count(ck));
        cJSON_AddNumberToObject(o, "tensors", nt);
        cJSON_AddNumberToObject(o, "total_bytes", (double)total);
        cJSON_AddItemToObject(o, "warnings", r.warnings);
        r.warnings = NULL;
        char *s = cJSON_Print(o);
        printf("%s\n", s);
        free(s);
        cJSON_Delete(o);
    } else {
        printf("checkpoint     %s\n", dir);
        printf("model type     %s\n", c->model_type[0] ? c->model_type : "(none)");
        printf("quantization   %s -> scheme %s", c->quant_method, mx_scheme_name(c->moe.scheme));
        if (c->moe.scheme == MX_SCHEME_W8A8) {
            if (c->moe.act_group)
                printf(" (activation scales per %d group)", c->moe.act_group);
            else
                printf(" (activation scales per token)");
        }
        printf("\n");
        printf("activation     %s, gate/up %s", mx_act_name(c->moe.act), order_name(c->moe.order));
        if (c->moe.act == MX_ACT_SWIGLU_OAI)
            printf(" (limit %g, alpha %g)", c->moe.swiglu_limit, c->moe.swiglu_alpha);
        printf("\n");
        printf("router         %s, top-%d%s", mx_router_name(c->router.kind), c->router.top_k,
               c->router.renormalize ? ", renormalized" : "");
        if (c->router.kind == MX_ROUTER_SIGMOID_GROUPED)
            printf(", %d groups keep %d, scaling %g", c->router.n_group, c->router.topk_group,
                   c->router.scaling_factor);
        if (c->router.kind == MX_ROUTER_GEMMA4)
            printf(", input RMSNorm eps %g", c->rms_norm_eps);
        printf("\n");
        for (int k = 0; k < 2; k++)
            if (g_layers[k])
                printf("%-15s%s in %d layers, values %g .. %g\n", k ? "  expert scale" : "  input scale",
                       k ? "router.per_expert_scale" : "router.scale", g_layers[k], g_seen[k] ? g_min[k] : 0.0,
                       g_seen[k] ? g_max[k] : 0.0);
        printf("layers         %d (%d with loadable experts; %s)\n", c->n_layers, moe_layers,
               all ? "--all: every expert tried" : "first and last expert of each loaded, --all for every one");
        printf("experts        %d, hidden %zu, intermediate %zu\n", c->n_experts, c->hidden, c->inter);
        printf("layout         %s: %s weights, %s scales%s\n", layout, sum.fmt, sum.scale,
               sum.bias ? ", with biases" : "");
        printf("per expert     %.2f MiB\n", (double)sum.bytes / (1024.0 * 1024.0));
        printf("files          %d, %d tensors, %.2f GiB\n", mx_ckpt_file_count(ck), nt,
               (double)total / (1024.0 * 1024.0 * 1024.0));
        int nw = cJSON_GetArraySize(r.warnings);
        if (!nw)
            printf("warnings       none\n");
        if (bad_experts)
            fprintf(stderr, "mxckpt inspect: %ld experts cannot be loaded (exit status 1)\n", bad_experts);
        for (int i = 0; i < nw; i++)
            printf("warning        %s\n", cJSON_GetArrayItem(r.warnings, i)->valuestring);
    }
    cJSON_Delete(r.warnings);
    mx_ckpt_close(ck);
    return bad_experts ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "make") == 0)
        return cmd_make(argc - 2, argv + 2);
    if (strcmp(argv[1], "inspect") == 0)
        return cmd_inspect(argc - 2, argv + 2);
    if (strcmp(argv[1], "fuzz-seeds") == 0) {
        if (argc == 3 && (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0)) {
            usage(stdout);
            return 0;
        }
        if (argc != 3 || argv[2][0] == '-') {
            fprintf(stderr, "mxckpt fuzz-seeds: one directory expected\n");
            return 2;
        }
        mx_status_t st = mxi_synth_fuzz_seeds(argv[2]);
        if (st) {
            fprintf(stderr, "mxckpt fuzz-seeds: %s: %s\n", mx_status_str(st), mx_error_detail());
            return 1;
        }
        return 0;
    }
    fprintf(stderr, "mxckpt: unknown command '%s' (expected make, inspect or fuzz-seeds; see mxckpt --help)\n",
            argv[1]);
    return 2;
}
