/* mxclient: sends one batch of hidden states to an mxep front door (mxworker
 * serve) and writes the layer output. See --help and docs/PROTOCOL.md. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mxep/serve.h"

static const char *usage_text =
    "Usage: mxclient --url URL --input FILE [options]\n"
    "\n"
    "Sends the batch of hidden states [T x H] in FILE to an mxep front door (mxworker serve\n"
    "--listen URL) for one MoE layer, waits for the output [T x H] BF16, writes it, and\n"
    "reports the latency.\n"
    "\n"
    "  --url URL          nanomsg address of the server (tcp://HOST:PORT, ipc:///path)\n"
    "  --input FILE       the batch: raw little-endian values, or a .safetensors file\n"
    "  --format F         raw | safetensors (default: safetensors when FILE ends in\n"
    "                     .safetensors, raw otherwise)\n"
    "  --dtype D          raw input: bf16 (default) or f32\n"
    "  --hidden H         raw input: the hidden size (T = file size / (H * element size))\n"
    "  --tensor NAME      safetensors input: the 2-D BF16 or F32 tensor to send (default:\n"
    "                     the only tensor of the file)\n"
    "  --layer L          layer id (default 0)\n"
    "  --output FILE      where the output goes: a .safetensors file (one BF16 tensor\n"
    "                     \"output\" [T x H]) or raw BF16; written whole or not at all\n"
    "  --repeat N         send the batch N times (default 1); latency min/median/max\n"
    "  --timeout-ms MS    per request (default 30000)\n"
    "  --json             print one JSON object instead of text\n"
    "  -h, --help         this text\n"
    "\n"
    "Exit status: 0 when every request succeeded, 1 when the server answered with an error\n"
    "or did not answer (the message says which), 2 for bad usage or an unreadable input.\n";

/* --json (set before the options are read): errors go to stdout as JSON too. */
static int g_json, g_json_done;
static char g_err[1024];

/* An error: "mxclient: error: MESSAGE" on stderr, MESSAGE kept for --json. */
static void vsay(const char *fmt, va_list ap)
{
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    fprintf(stderr, "mxclient: error: %s\n", g_err);
}
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
    fprintf(stderr, "mxclient: run \"mxclient --help\" for usage\n");
    return 2;
}

/* A raw input the batch cannot be made of: the message, the file's bytes freed, exit 2. */
static int input_error(unsigned char *data, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int input_error(unsigned char *data, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
    free(data);
    return 2;
}

static int read_file(const char *path, unsigned char **data_p, size_t *len_p)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        say("cannot open '%s': %s", path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 16, len = 0;
    unsigned char *buf = malloc(cap);
    while (buf) {
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (len < cap)
            break;
        unsigned char *nb = realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    int err = ferror(f);
    fclose(f);
    if (!buf || err) {
        say("cannot read '%s'%s", path, buf ? "" : ": out of memory");
        free(buf);
        return -1;
    }
    *data_p = buf;
    *len_p = len;
    return 0;
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Finds the 2-D tensor `want` (or the only one) of a safetensors file in memory. */
static int safetensors_pick(const char *path, const unsigned char *data, size_t len, const char *want,
                            mx_serve_wire_dtype_t *dtype_p, size_t *t_p, size_t *h_p, const unsigned char **payload_p)
{
    if (len < 8 || le64(data) > len - 8) {
        say("'%s': not a safetensors file (header length missing or past the end)", path);
        return -1;
    }
    size_t hlen = (size_t)le64(data);
    char *js = malloc(hlen + 1);
    if (!js)
        return -1;
    memcpy(js, data + 8, hlen);
    js[hlen] = 0;
    cJSON *root = cJSON_Parse(js);
    free(js);
    if (!cJSON_IsObject(root)) {
        say("'%s': the safetensors header is not a JSON object", path);
        cJSON_Delete(root);
        return -1;
    }
    const cJSON *pick = NULL;
    int count = 0;
    for (const cJSON *it = root->child; it; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0)
            continue;
        count++;
        if (want ? strcmp(it->string, want) == 0 : count == 1)
            pick = it;
    }
    int rc = -1;
    if (!want && count != 1) {
        say("'%s' holds %d tensors: choose one with --tensor NAME", path, count);
        goto out;
    }
    if (!pick) {
        say("'%s': no tensor named '%s'", path, want ? want : "");
        goto out;
    }
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(pick, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(pick, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(pick, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(shape) || cJSON_GetArraySize(shape) != 2 || !cJSON_IsArray(offs) ||
        cJSON_GetArraySize(offs) != 2) {
        say("'%s': tensor '%s' must have a dtype, a 2-D shape [T, H] and data_offsets", path, pick->string);
        goto out;
    }
    mx_serve_wire_dtype_t dtype;
    if (strcmp(dt->valuestring, "BF16") == 0)
        dtype = MX_SERVE_WIRE_BF16;
    else if (strcmp(dt->valuestring, "F32") == 0)
        dtype = MX_SERVE_WIRE_F32;
    else {
        say("'%s': tensor '%s' is %s: expected BF16 or F32", path, pick->string, dt->valuestring);
        goto out;
    }
    double t = cJSON_GetArrayItem(shape, 0)->valuedouble, h = cJSON_GetArrayItem(shape, 1)->valuedouble;
    double b = cJSON_GetArrayItem(offs, 0)->valuedouble, e = cJSON_GetArrayItem(offs, 1)->valuedouble;
    size_t data_len = len - 8 - hlen;
    if (t != floor(t) || h != floor(h) || b != floor(b) || e != floor(e)) { /* [2.5, 64] was read as [2, 64] */
        say("'%s': tensor '%s' has a shape or data_offsets that are not whole numbers (shape [%g, %g], offsets "
            "[%g, %g])",
            path, pick->string, t, h, b, e);
        goto out;
    }
    if (t < 1 || h < 1 || t > MX_SERVE_WIRE_MAX_TOKENS || h > MX_SERVE_WIRE_MAX_HIDDEN || b < 0 || e < b ||
        e > (double)data_len || (e - b) != t * h * (double)mx_serve_wire_dtype_size(dtype)) {
        say("'%s': tensor '%s' has a bad shape or data_offsets (shape [%.0f, %.0f], "
            "offsets [%.0f, %.0f], %zu data bytes)",
            path, pick->string, t, h, b, e, data_len);
        goto out;
    }
    *dtype_p = dtype;
    *t_p = (size_t)t;
    *h_p = (size_t)h;
    *payload_p = data + 8 + hlen + (size_t)b;
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

/* Writes the output whole or not at all (temporary file, then rename). */
static int write_output(const char *path, const uint16_t *out, size_t t, size_t h)
{
    size_t plen = strlen(path);
    int st = plen > 12 && strcmp(path + plen - 12, ".safetensors") == 0;
    char *tmp = malloc(plen + 32);
    if (!tmp)
        return -1;
    snprintf(tmp, plen + 32, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        say("cannot write '%s': %s", tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    int ok = 1;
    size_t bytes = t * h * 2;
    if (st) {
        char hdr[256];
        int n = snprintf(hdr, sizeof hdr,
                         "{\"output\":{\"dtype\":\"BF16\",\"shape\":[%zu,%zu],\"data_offsets\":[0,%zu]}}", t, h, bytes);
        while (n % 8)
            hdr[n++] = ' ';
        unsigned char len8[8];
        for (int i = 0; i < 8; i++)
            len8[i] = (unsigned char)((uint64_t)n >> (8 * i));
        ok = fwrite(len8, 1, 8, f) == 8 && fwrite(hdr, 1, (size_t)n, f) == (size_t)n;
    }
    ok = ok && fwrite(out, 1, bytes, f) == bytes;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        say("cannot write '%s': %s", path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return -1;
    }
    free(tmp);
    return 0;
}

/* --json: one {"ok": false, "status": ..., "message": ...} object on stdout. */
static void json_fail(const char *status, const char *message)
{
    cJSON *o = cJSON_CreateObject();
    char *text = NULL;
    if (o && cJSON_AddFalseToObject(o, "ok") && cJSON_AddStringToObject(o, "status", status) &&
        cJSON_AddStringToObject(o, "message", message))
        text = cJSON_PrintUnformatted(o);
    printf("%s\n", text ? text : "{\"ok\": false}");
    g_json_done = 1;
    cJSON_free(text);
    cJSON_Delete(o);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int client_main(int argc, char **argv);

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) /* --json takes no value: errors found before it is read are JSON too */
        g_json |= strcmp(argv[i], "--json") == 0;
    const int rc = client_main(argc, argv);
    if (rc == 2 && g_json && !g_json_done) /* bad usage or input: {"ok": false, ...} as for every failure */
        json_fail("MX_ERR_INVALID", g_err[0] ? g_err : "bad usage");
    return rc;
}

static int client_main(int argc, char **argv)
{
    const char *url = NULL, *input = NULL, *format = NULL, *dtype_s = NULL, *tensor = NULL, *output = NULL;
    long hidden = -1, layer = 0, repeat = 1, timeout_ms = 30000; /* hidden -1: not given */
    int json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **sval = NULL;
        long *lval = NULL, lmin = 0;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage_text, stdout);
            return 0;
        } else if (strcmp(a, "--json") == 0) {
            json = 1;
            continue;
        } else if (strcmp(a, "--url") == 0)
            sval = &url;
        else if (strcmp(a, "--input") == 0)
            sval = &input;
        else if (strcmp(a, "--format") == 0)
            sval = &format;
        else if (strcmp(a, "--dtype") == 0)
            sval = &dtype_s;
        else if (strcmp(a, "--tensor") == 0)
            sval = &tensor;
        else if (strcmp(a, "--output") == 0)
            sval = &output;
        else if (strcmp(a, "--hidden") == 0)
            lval = &hidden;
        else if (strcmp(a, "--layer") == 0)
            lval = &layer;
        else if (strcmp(a, "--repeat") == 0) {
            lval = &repeat;
            lmin = 1;
        } else if (strcmp(a, "--timeout-ms") == 0) {
            lval = &timeout_ms;
            lmin = 1;
        } else
            return usage_error("unknown option '%s'", a);
        if (i + 1 >= argc)
            return usage_error("%s needs a value", a);
        const char *v = argv[++i];
        if (sval) {
            *sval = v;
        } else {
            char *end = NULL;
            errno = 0;
            long x = strtol(v, &end, 10);
            if (errno || !end || *end || end == v || x < lmin || x > 1000000000L) {
                say("%s '%s': expected a whole number from %ld to 1000000000", a, v, lmin);
                return 2;
            }
            *lval = x;
        }
    }
    if (!url)
        return usage_error("%s", "no server address: give --url URL (e.g. tcp://127.0.0.1:5555)");
    if (!input)
        return usage_error("%s", "no batch to send: give --input FILE");
    size_t ilen = strlen(input);
    int is_st =
        format ? strcmp(format, "safetensors") == 0 : (ilen > 12 && strcmp(input + ilen - 12, ".safetensors") == 0);
    if (format && !is_st && strcmp(format, "raw") != 0)
        return usage_error("--format '%s': expected raw or safetensors", format);
    /* flags of the other format would be ignored: refuse them instead */
    if (is_st && (dtype_s || hidden >= 0))
        return usage_error("%s applies to raw input; a safetensors file gives its tensor's dtype and shape",
                           dtype_s ? "--dtype" : "--hidden");
    if (!dtype_s)
        dtype_s = "bf16";
    if (!is_st && tensor)
        return usage_error("%s", "--tensor applies to safetensors input; raw input has no tensor names");

    unsigned char *data = NULL;
    size_t len = 0;
    if (read_file(input, &data, &len) != 0)
        return 2;
    mx_serve_wire_dtype_t dtype = MX_SERVE_WIRE_BF16;
    size_t t = 0, h = 0;
    const unsigned char *payload = NULL;
    if (is_st) {
        if (safetensors_pick(input, data, len, tensor, &dtype, &t, &h, &payload) != 0) {
            free(data);
            return 2;
        }
    } else {
        if (strcmp(dtype_s, "bf16") == 0)
            dtype = MX_SERVE_WIRE_BF16;
        else if (strcmp(dtype_s, "f32") == 0)
            dtype = MX_SERVE_WIRE_F32;
        else {
            free(data);
            return usage_error("--dtype '%s': expected bf16 or f32", dtype_s);
        }
        size_t row = (size_t)hidden * mx_serve_wire_dtype_size(dtype);
        if (hidden < 1 || hidden > (long)MX_SERVE_WIRE_MAX_HIDDEN) {
            free(data);
            return usage_error("%s", "raw input needs --hidden H (1..65536)");
        }
        if (len == 0 || len % row)
            return input_error(
                data, "'%s' has %zu bytes: expected a whole number (>= 1) of rows of %ld %s values (%zu bytes)", input,
                len, hidden, dtype_s, row);
        t = len / row;
        h = (size_t)hidden;
        payload = data;
        if (t > MX_SERVE_WIRE_MAX_TOKENS)
            return input_error(data,
                               "'%s' holds %zu rows of %ld %s values: expected at most %u (the protocol's limit; "
                               "split the batch)",
                               input, t, hidden, dtype_s, MX_SERVE_WIRE_MAX_TOKENS);
    }

    mx_client_h client = NULL;
    mx_status_t st = mx_client_create(url, (int)timeout_ms, &client);
    if (st != MX_OK) {
        say("%s", mx_error_detail());
        if (json)
            json_fail(mx_status_str(st), mx_error_detail());
        free(data);
        return st == MX_ERR_INVALID ? 2 : 1; /* a malformed --url is bad usage */
    }
    double *lat = calloc((size_t)repeat, sizeof(double));
    mx_client_reply_t reply = {0};
    int rc = 0;
    for (long r = 0; r < repeat && lat; r++) {
        mx_client_reply_fini(&reply);
        st = mx_client_request(client, (int)layer, dtype, t, h, payload, &reply);
        if (st != MX_OK) {
            say("%s: %s", mx_status_str(st), mx_error_detail());
            if (json)
                json_fail(mx_status_str(st), mx_error_detail());
            rc = 1;
            break;
        }
        if (reply.status != MX_OK) {
            if (json)
                json_fail(mx_status_str(reply.status), reply.message);
            fprintf(stderr, "mxclient: the server refused the request: %s: %s\n", mx_status_str(reply.status),
                    reply.message);
            rc = 1;
            break;
        }
        lat[r] = reply.latency_ms;
    }
    if (rc == 0 && !lat) {
        say("out of memory for %ld latencies", repeat);
        if (json)
            json_fail(mx_status_str(MX_ERR_NOMEM), "out of memory for the latencies of --repeat");
        rc = 1;
    }
    if (rc == 0 && output && write_output(output, reply.out, reply.n_tokens, reply.hidden) != 0) {
        if (json)
            json_fail(mx_status_str(MX_ERR_IO), "cannot write the output file (see stderr)");
        rc = 2;
    }
    if (rc == 0) {
        qsort(lat, (size_t)repeat, sizeof(double), cmp_double);
        double mn = lat[0], md = lat[repeat / 2], mxl = lat[repeat - 1];
        if (json) {
            cJSON *o = output ? cJSON_CreateString(output) : cJSON_CreateNull();
            char *os = o ? cJSON_PrintUnformatted(o) : NULL;
            printf("{\"ok\": true, \"layer\": %ld, \"tokens\": %zu, \"hidden\": %zu, \"dtype\": \"%s\", \"requests\": "
                   "%ld, "
                   "\"latency_ms\": {\"min\": %.3f, \"median\": %.3f, \"max\": %.3f}, \"output\": %s}\n",
                   layer, t, h, dtype == MX_SERVE_WIRE_BF16 ? "bf16" : "f32", repeat, mn, md, mxl, os ? os : "null");
            cJSON_free(os);
            cJSON_Delete(o);
        } else
            printf("mxclient: layer %ld, %zu tokens x %zu: %ld request(s), latency min %.3f ms, median %.3f ms, max "
                   "%.3f ms%s%s\n",
                   layer, t, h, repeat, mn, md, mxl, output ? ", output written to " : "", output ? output : "");
    }
    mx_client_reply_fini(&reply);
    mx_client_destroy(client);
    free(lat);
    free(data);
    return rc;
}
