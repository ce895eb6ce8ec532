/* mxworker run: reading `hidden_states` from a safetensors file and writing the
 * layer output (temporary file + rename: nothing half-written). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "worker_internal.h"

mx_status_t wk_st_read_hidden(const char *path, wk_hidden_t *h_p)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return mx_error_set(MX_ERR_IO, "--input %s: cannot open: %s", path, strerror(errno));
    mx_status_t st = MX_OK;
    char *hdr = NULL;
    cJSON *root = NULL;
    uint16_t *out = NULL;
    void *raw = NULL;
    uint8_t len8[8];
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        st = mx_error_set(MX_ERR_IO, "--input %s: not a regular file (expected a safetensors file)", path);
        goto done;
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        st = mx_error_set(MX_ERR_IO, "--input %s: cannot seek", path);
        goto done;
    }
    long fsize = ftell(f);
    rewind(f);
    if (fsize < 8 || fread(len8, 1, 8, f) != 8) {
        st = mx_error_set(MX_ERR_FORMAT, "--input %s: %ld bytes, too short for a safetensors file", path, fsize);
        goto done;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | len8[i];
    if (hlen == 0 || hlen > (uint64_t)fsize - 8 || hlen > (100u << 20)) {
        st = mx_error_set(MX_ERR_FORMAT, "--input %s: header length %llu does not fit the file of %ld bytes", path,
                          (unsigned long long)hlen, fsize);
        goto done;
    }
    hdr = malloc(hlen + 1);
    if (!hdr || fread(hdr, 1, hlen, f) != hlen) {
        st = mx_error_set(MX_ERR_IO, "--input %s: cannot read the header", path);
        goto done;
    }
    hdr[hlen] = 0;
    root = cJSON_Parse(hdr);
    if (!cJSON_IsObject(root)) {
        st = mx_error_set(MX_ERR_FORMAT, "--input %s: the header is not a JSON object", path);
        goto done;
    }
    cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "hidden_states");
    if (!cJSON_IsObject(t)) {
        st = mx_error_set(MX_ERR_FORMAT, "--input %s: no tensor 'hidden_states' (expected [T x H] BF16 or F32)", path);
        goto done;
    }
    cJSON *dt = cJSON_GetObjectItemCaseSensitive(t, "dtype"), *sh = cJSON_GetObjectItemCaseSensitive(t, "shape");
    cJSON *off = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2) {
        st = mx_error_set(MX_ERR_FORMAT, "--input %s: tensor 'hidden_states' lacks dtype, shape or data_offsets", path);
        goto done;
    }
    int is_bf16 = strcmp(dt->valuestring, "BF16") == 0, is_f32 = strcmp(dt->valuestring, "F32") == 0;
    if (!is_bf16 && !is_f32) {
        st = mx_error_set(MX_ERR_FORMAT, "--input %s: 'hidden_states' is %s; expected BF16 or F32", path,
                          dt->valuestring);
        goto done;
    }
    if (cJSON_GetArraySize(sh) != 2) {
        st = mx_error_set(MX_ERR_FORMAT, "--input %s: 'hidden_states' has %d dimensions; expected 2 [T x H]", path,
                          cJSON_GetArraySize(sh));
        goto done;
    }
    double d0 = cJSON_GetArrayItem(sh, 0)->valuedouble, d1 = cJSON_GetArrayItem(sh, 1)->valuedouble;
    double o0 = cJSON_GetArrayItem(off, 0)->valuedouble, o1 = cJSON_GetArrayItem(off, 1)->valuedouble;
    /* integers only, and the data inside the file (compared as doubles: a cast of an
     * offset near 2^64 to uint64_t would wrap 8 + hlen + o1 around to a small number) */
    double avail = (double)((uint64_t)fsize - 8 - hlen);
    if (d0 < 0 || d1 < 1 || d0 > 1e9 || d1 > 1e7 || o0 < 0 || o1 < o0 || d0 != floor(d0) || d1 != floor(d1) ||
        o0 != floor(o0) || o1 != floor(o1)) {
        st = mx_error_set(MX_ERR_FORMAT, "--input %s: bad shape or data_offsets of 'hidden_states'", path);
        goto done;
    }
    size_t rows = (size_t)d0, cols = (size_t)d1, esz = is_bf16 ? 2 : 4;
    size_t nbytes = rows * cols * esz;
    if (o1 > avail) {
        st = mx_error_set(MX_ERR_FORMAT,
                          "--input %s: 'hidden_states' [%zu x %zu] %s needs %zu bytes at data_offsets [%.0f, %.0f], "
                          "past the end of the file's %.0f data bytes (truncated?)",
                          path, rows, cols, dt->valuestring, nbytes, o0, o1, avail);
        goto done;
    }
    if ((size_t)(o1 - o0) != nbytes) {
        st = mx_error_set(MX_ERR_FORMAT,
                          "--input %s: 'hidden_states' [%zu x %zu] %s needs %zu bytes; data_offsets give %.0f, "
                          "file has %ld",
                          path, rows, cols, dt->valuestring, nbytes, o1 - o0, fsize);
        goto done;
    }
    out = malloc(rows * cols * 2 + 2);
    raw = malloc(nbytes + 4);
    if (!out || !raw) {
        st = mx_error_set(MX_ERR_NOMEM, "--input %s: out of memory", path);
        goto done;
    }
    if (fseek(f, (long)(8 + hlen + (uint64_t)o0), SEEK_SET) != 0 || fread(raw, 1, nbytes, f) != nbytes) {
        st = mx_error_set(MX_ERR_IO, "--input %s: cannot read the data of 'hidden_states'", path);
        goto done;
    }
    if (is_bf16)
        memcpy(out, raw, nbytes);
    else
        for (size_t i = 0; i < rows * cols; i++) {
            float v;
            memcpy(&v, (uint8_t *)raw + 4 * i, 4);
            out[i] = wk_f32_bf16(v);
        }
    h_p->rows = rows;
    h_p->cols = cols;
    h_p->bf16 = out;
    out = NULL;
done:
    free(raw);
    free(out);
    cJSON_Delete(root);
    free(hdr);
    fclose(f);
    return st;
}

mx_status_t wk_st_write_output(const char *path, const uint16_t *hidden, size_t rows, size_t cols,
                               const int32_t *topk_ids, const float *topk_weights, size_t k)
{
    size_t b_h = rows * cols * 2, b_i = rows * k * 4, b_w = rows * k * 4;
    char hdr[1024];
    int n = snprintf(hdr, sizeof hdr,
                     "{\"__metadata__\":{\"producer\":\"mxworker run\"},"
                     "\"hidden_states\":{\"dtype\":\"BF16\",\"shape\":[%zu,%zu],\"data_offsets\":[0,%zu]},"
                     "\"topk_ids\":{\"dtype\":\"I32\",\"shape\":[%zu,%zu],\"data_offsets\":[%zu,%zu]},"
                     "\"topk_weights\":{\"dtype\":\"F32\",\"shape\":[%zu,%zu],\"data_offsets\":[%zu,%zu]}}",
                     rows, cols, b_h, rows, k, b_h, b_h + b_i, rows, k, b_h + b_i, b_h + b_i + b_w);
    if (n < 0 || (size_t)n + 8 >= sizeof hdr)
        return mx_error_set(MX_ERR_INTERNAL, "output header too long");
    while (n % 8)
        hdr[n++] = ' ';
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
        return mx_error_set(MX_ERR_INVALID, "--output %s: path too long", path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return mx_error_set(MX_ERR_IO, "--output %s: cannot create %s: %s", path, tmp, strerror(errno));
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)n >> (8 * i));
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(hdr, 1, (size_t)n, f) == (size_t)n &&
             (b_h == 0 || fwrite(hidden, 1, b_h, f) == b_h) && (b_i == 0 || fwrite(topk_ids, 1, b_i, f) == b_i) &&
             (b_w == 0 || fwrite(topk_weights, 1, b_w, f) == b_w);
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    const int err = wk_file_commit(f, ok, tmp, path);
    if (err)
        return mx_error_set(MX_ERR_IO, "--output %s: writing failed: %s (nothing written)", path, strerror(err));
    return MX_OK;
}

int wk_file_commit(FILE *f, int ok, const char *tmp, const char *path)
{
    int err = ok ? 0 : errno ? errno : EIO;
    if (fclose(f) != 0 && !err)
        err = errno;
    if (!err && rename(tmp, path) != 0)
        err = errno;
    if (err)
        unlink(tmp);
    return err;
}
