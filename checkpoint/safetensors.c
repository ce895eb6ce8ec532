/* Strict safetensors reader (FORMATS.md Part 2 section 8): the header parser,
 * the sharded index parser and the mmapped file handle. Every failure is
 * MX_ERR_FORMAT (or MX_ERR_IO for the file system) naming the file, the tensor
 * and what was expected. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt_internal.h"

static const struct {
    const char *name;
    int bits;
} dtypes[MX_ST_DTYPE_COUNT] = {
    [MX_ST_BOOL] = {"BOOL", 8},
    [MX_ST_U8] = {"U8", 8},
    [MX_ST_I8] = {"I8", 8},
    [MX_ST_U16] = {"U16", 16},
    [MX_ST_I16] = {"I16", 16},
    [MX_ST_U32] = {"U32", 32},
    [MX_ST_I32] = {"I32", 32},
    [MX_ST_U64] = {"U64", 64},
    [MX_ST_I64] = {"I64", 64},
    [MX_ST_F16] = {"F16", 16},
    [MX_ST_BF16] = {"BF16", 16},
    [MX_ST_F32] = {"F32", 32},
    [MX_ST_F64] = {"F64", 64},
    [MX_ST_C64] = {"C64", 64},
    [MX_ST_F8_E4M3] = {"F8_E4M3", 8},
    [MX_ST_F8_E5M2] = {"F8_E5M2", 8},
    [MX_ST_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8},
    [MX_ST_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8},
    [MX_ST_F8_E8M0] = {"F8_E8M0", 8},
    [MX_ST_F4] = {"F4", 4},
    [MX_ST_F6_E2M3] = {"F6_E2M3", 6},
    [MX_ST_F6_E3M2] = {"F6_E3M2", 6},
};

const char *mx_st_dtype_name(mx_st_dtype_t dtype)
{
    return (unsigned)dtype < MX_ST_DTYPE_COUNT ? dtypes[dtype].name : "?";
}

int mx_st_dtype_bits(mx_st_dtype_t dtype)
{
    return (unsigned)dtype < MX_ST_DTYPE_COUNT ? dtypes[dtype].bits : 0;
}

mx_status_t mx_st_dtype_parse(const char *text, mx_st_dtype_t *dtype_p)
{
    for (int i = 0; text && i < MX_ST_DTYPE_COUNT; i++)
        if (strcmp(text, dtypes[i].name) == 0) {
            *dtype_p = (mx_st_dtype_t)i;
            return MX_OK;
        }
    return mx_error_set(MX_ERR_FORMAT,
                        "dtype '%s' is not a safetensors dtype (expected BOOL, U8..I64, F16, BF16, F32, "
                        "F64, C64, F8_E4M3, F8_E5M2, F8_E4M3FNUZ, F8_E5M2FNUZ, F8_E8M0, F4, F6_E2M3 "
                        "or F6_E3M2)",
                        text ? text : "(null)");
}

/* ---------------------------------------------------------------- name table */
uint64_t mxi_fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

mx_status_t mxi_names_init(mxi_names_t *t, size_t n_expected)
{
    size_t cap = 16;
    while (cap < 2 * n_expected + 1)
        cap *= 2;
    t->cap = cap;
    t->keys = calloc(cap, sizeof *t->keys);
    t->vals = calloc(cap, sizeof *t->vals);
    if (!t->keys || !t->vals) {
        free(t->keys);
        free(t->vals);
        t->keys = NULL;
        t->vals = NULL;
        return mx_error_set(MX_ERR_NOMEM, "name table of %zu entries", cap);
    }
    return MX_OK;
}

void mxi_names_fini(mxi_names_t *t)
{
    free(t->keys);
    free(t->vals);
    t->keys = NULL;
    t->vals = NULL;
    t->cap = 0;
}

int mxi_names_put(mxi_names_t *t, const char *key, int val, int *old_p)
{
    size_t i = mxi_fnv1a(key) & (t->cap - 1);
    while (t->keys[i]) {
        if (strcmp(t->keys[i], key) == 0) {
            if (old_p)
                *old_p = t->vals[i];
            return 0;
        }
        i = (i + 1) & (t->cap - 1);
    }
    t->keys[i] = key;
    t->vals[i] = val;
    return 1;
}

int mxi_names_get(const mxi_names_t *t, const char *key)
{
    if (!t->cap)
        return -1;
    size_t i = mxi_fnv1a(key) & (t->cap - 1);
    while (t->keys[i]) {
        if (strcmp(t->keys[i], key) == 0)
            return t->vals[i];
        i = (i + 1) & (t->cap - 1);
    }
    return -1;
}

/* ---------------------------------------------------------------- header parser */
/* A JSON number that is a non-negative integer exactly representable. */
static int json_uint(const cJSON *item, uint64_t *v_p)
{
    if (!cJSON_IsNumber(item))
        return 0;
    double d = item->valuedouble;
    if (!(d >= 0.0) || d > 9007199254740992.0 || floor(d) != d)
        return 0;
    *v_p = (uint64_t)d;
    return 1;
}

typedef struct {
    uint64_t begin, end;
    int index;
} span_t;

static int span_cmp(const void *a, const void *b)
{
    const span_t *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return x->index - y->index;
}

static mx_status_t parse_entry(const char *file, const cJSON *e, uint64_t data_size, mx_st_tensor_t *t,
                               uint64_t *begin_p, uint64_t *end_p)
{
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return mx_error_set(MX_ERR_FORMAT, "%s: tensor '%s': expected an object with dtype, shape and data_offsets",
                            file, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt))
        return mx_error_set(MX_ERR_FORMAT, "%s: tensor '%s': expected a string \"dtype\"", file, name);
    if (mx_st_dtype_parse(dt->valuestring, &t->dtype) != MX_OK)
        return mx_error_set(MX_ERR_FORMAT, "%s: tensor '%s': dtype '%s' is not a known safetensors dtype", file, name,
                            dt->valuestring);
    if (!cJSON_IsArray(sh))
        return mx_error_set(MX_ERR_FORMAT, "%s: tensor '%s': expected an array \"shape\"", file, name);
    int nd = cJSON_GetArraySize(sh);
    if (nd > MX_ST_MAX_DIMS)
        return mx_error_set(MX_ERR_FORMAT, "%s: tensor '%s': %d dimensions, at most %d supported", file, name, nd,
                            MX_ST_MAX_DIMS);
    t->ndim = nd;
    /* element count with overflow checks: bits must stay below 2^63 */
    uint64_t nelem = 1;
    int overflow = 0;
    int d = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, sh)
    {
        uint64_t v;
        if (!json_uint(dim, &v))
            return mx_error_set(MX_ERR_FORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer", file, name,
                                d);
        t->shape[d++] = (int64_t)v;
        if (v && nelem > (UINT64_MAX >> 8) / v)
            overflow = 1;
        else
            nelem *= v;
    }
    for (int i = nd; i < MX_ST_MAX_DIMS; i++)
        t->shape[i] = 0;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2)
        return mx_error_set(MX_ERR_FORMAT, "%s: tensor '%s': expected \"data_offsets\": [begin, end]", file, name);
    uint64_t b, en;
    if (!json_uint(cJSON_GetArrayItem(off, 0), &b) || !json_uint(cJSON_GetArrayItem(off, 1), &en))
        return mx_error_set(MX_ERR_FORMAT, "%s: tensor '%s': data_offsets must be non-negative integers", file, name);
    if (b > en)
        return mx_error_set(MX_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu) end before begin", file, name,
                            (unsigned long long)b, (unsigned long long)en);
    if (en > data_size)
        return mx_error_set(MX_ERR_FORMAT,
                            "%s: tensor '%s': data_offsets [%llu, %llu) outside the data area of %llu bytes", file,
                            name, (unsigned long long)b, (unsigned long long)en, (unsigned long long)data_size);
    int bits = mx_st_dtype_bits(t->dtype);
    if (overflow)
        return mx_error_set(MX_ERR_FORMAT, "%s: tensor '%s': shape is too large (element count overflows)", file, name);
    uint64_t nbits = nelem * (uint64_t)bits;
    if (nbits % 8)
        return mx_error_set(MX_ERR_FORMAT,
                            "%s: tensor '%s': %llu elements of %s (%d bits) are not a whole number of bytes", file,
                            name, (unsigned long long)nelem, dtypes[t->dtype].name, bits);
    if (nbits / 8 != en - b)
        return mx_error_set(MX_ERR_FORMAT,
                            "%s: tensor '%s': shape x dtype = %llu elements x %s = %llu bytes, but data_offsets "
                            "[%llu, %llu) span %llu bytes",
                            file, name, (unsigned long long)nelem, dtypes[t->dtype].name,
                            (unsigned long long)(nbits / 8), (unsigned long long)b, (unsigned long long)en,
                            (unsigned long long)(en - b));
    t->nbytes = (size_t)(en - b);
    *begin_p = b;
    *end_p = en;
    return MX_OK;
}

mx_status_t mxi_st_parse(const char *file, const uint8_t *buf, size_t size, mx_st_tensor_t **tensors_p, int *n_p,
                         char **pool_p)
{
    if (size < 8)
        return mx_error_set(MX_ERR_FORMAT,
                            "%s: %zu bytes, too short for a safetensors file (expected 8 bytes of "
                            "header length, then the header)",
                            file, size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | buf[i];
    if (hlen > MXI_ST_HEADER_MAX)
        return mx_error_set(MX_ERR_FORMAT, "%s: header length %llu bytes is over the 100 MB limit", file,
                            (unsigned long long)hlen);
    if (hlen > size - 8)
        return mx_error_set(MX_ERR_FORMAT, "%s: header length %llu bytes runs past the end of the file (%zu bytes)",
                            file, (unsigned long long)hlen, size);
    if (hlen < 2)
        return mx_error_set(MX_ERR_FORMAT, "%s: header of %llu bytes, expected a JSON object", file,
                            (unsigned long long)hlen);
    const char *json = (const char *)buf + 8;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, (size_t)hlen, &end, 0);
    if (!root)
        return mx_error_set(MX_ERR_FORMAT, "%s: header is not well-formed JSON (near byte %lld of the header)", file,
                            end ? (long long)(end - json) : -1LL);
    mx_status_t st = MX_OK;
    mx_st_tensor_t *ts = NULL;
    span_t *spans = NULL;
    char *pool = NULL;
    mxi_names_t names = {0};
    for (const char *p = end; p && p < json + hlen; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != '\0') {
            st = mx_error_set(MX_ERR_FORMAT, "%s: header has trailing bytes after the JSON object (byte %lld)", file,
                              (long long)(p - json));
            goto out;
        }
    if (!cJSON_IsObject(root)) {
        st = mx_error_set(MX_ERR_FORMAT, "%s: header is JSON but not an object of tensors", file);
        goto out;
    }
    uint64_t data_size = size - 8 - hlen;
    int n = 0;
    size_t pool_len = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, root)
    {
        if (!e->string) {
            st = mx_error_set(MX_ERR_FORMAT, "%s: header entry without a name", file);
            goto out;
        }
        if (strcmp(e->string, "__metadata__") == 0)
            continue;
        n++;
        pool_len += strlen(e->string) + 1;
    }
    ts = calloc(n ? (size_t)n : 1, sizeof *ts);
    spans = calloc(n ? (size_t)n : 1, sizeof *spans);
    pool = malloc(pool_len + strlen(file) + 2);
    if (!ts || !spans || !pool) {
        st = mx_error_set(MX_ERR_NOMEM, "%s: %d tensor entries", file, n);
        goto out;
    }
    st = mxi_names_init(&names, (size_t)n + 1);
    if (st)
        goto out;
    char *fname = pool;
    strcpy(fname, file);
    char *q = pool + strlen(file) + 1;
    int i = 0, seen_meta = 0;
    cJSON_ArrayForEach(e, root)
    {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (seen_meta++) {
                st = mx_error_set(MX_ERR_FORMAT, "%s: duplicate \"__metadata__\" entry", file);
                goto out;
            }
            if (!cJSON_IsObject(e)) {
                st = mx_error_set(MX_ERR_FORMAT, "%s: \"__metadata__\" must be an object of strings", file);
                goto out;
            }
            const cJSON *m;
            cJSON_ArrayForEach(m, e) if (!cJSON_IsString(m))
            {
                st = mx_error_set(MX_ERR_FORMAT, "%s: \"__metadata__\" value '%s' must be a string", file,
                                  m->string ? m->string : "?");
                goto out;
            }
            continue;
        }
        strcpy(q, e->string);
        ts[i].name = q;
        ts[i].file = fname;
        q += strlen(q) + 1;
        if (!mxi_names_put(&names, ts[i].name, i, NULL)) {
            st = mx_error_set(MX_ERR_FORMAT, "%s: tensor '%s' appears twice in the header (names must be unique)", file,
                              ts[i].name);
            goto out;
        }
        uint64_t b = 0, en = 0;
        st = parse_entry(fname, e, data_size, &ts[i], &b, &en);
        if (st)
            goto out;
        ts[i].data = buf + 8 + hlen + b;
        spans[i].begin = b;
        spans[i].end = en;
        spans[i].index = i;
        i++;
    }
    qsort(spans, (size_t)n, sizeof *spans, span_cmp);
    for (int k = 1; k < n; k++)
        if (spans[k].begin < spans[k - 1].end) {
            st = mx_error_set(MX_ERR_FORMAT,
                              "%s: tensor '%s' data_offsets [%llu, %llu) overlap tensor '%s' [%llu, %llu) (expected "
                              "disjoint byte ranges)",
                              file, ts[spans[k].index].name, (unsigned long long)spans[k].begin,
                              (unsigned long long)spans[k].end, ts[spans[k - 1].index].name,
                              (unsigned long long)spans[k - 1].begin, (unsigned long long)spans[k - 1].end);
            goto out;
        }
    /* hand out the tensors in offset order */
    mx_st_tensor_t *sorted = calloc(n ? (size_t)n : 1, sizeof *sorted);
    if (!sorted) {
        st = mx_error_set(MX_ERR_NOMEM, "%s: %d tensors", file, n);
        goto out;
    }
    for (int k = 0; k < n; k++)
        sorted[k] = ts[spans[k].index];
    free(ts);
    ts = NULL;
    *tensors_p = sorted;
    *n_p = n;
    *pool_p = pool;
    pool = NULL;
out:
    mxi_names_fini(&names);
    free(ts);
    free(spans);
    free(pool);
    cJSON_Delete(root);
    return st;
}

/* ---------------------------------------------------------------- index parser */
void mxi_index_fini(mxi_index_t *x)
{
    for (int i = 0; i < x->n_tensors; i++)
        free(x->names[i]);
    for (int i = 0; i < x->n_shards; i++)
        free(x->shards[i]);
    free(x->names);
    free(x->shard);
    free(x->shards);
    memset(x, 0, sizeof *x);
}

static int shard_name_ok(const char *s)
{
    if (!*s || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return 0;
    for (; *s; s++)
        if (*s == '/' || *s == '\\')
            return 0;
    return 1;
}

mx_status_t mxi_index_parse(const char *file, const char *json, size_t len, mxi_index_t *index_p)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root)
        return mx_error_set(MX_ERR_FORMAT, "%s: not well-formed JSON (near byte %lld)", file,
                            end ? (long long)(end - json) : -1LL);
    mx_status_t st = MX_OK;
    mxi_index_t x = {0};
    mxi_names_t names = {0}, shard_names = {0};
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(root) || !cJSON_IsObject(wm)) {
        st = mx_error_set(MX_ERR_FORMAT, "%s: expected an object with a \"weight_map\" object (tensor -> shard file)",
                          file);
        goto out;
    }
    int n = cJSON_GetArraySize(wm);
    x.names = calloc(n ? (size_t)n : 1, sizeof *x.names);
    x.shard = calloc(n ? (size_t)n : 1, sizeof *x.shard);
    x.shards = calloc(n ? (size_t)n : 1, sizeof *x.shards);
    if (!x.names || !x.shard || !x.shards) {
        st = mx_error_set(MX_ERR_NOMEM, "%s: %d entries", file, n);
        goto out;
    }
    if ((st = mxi_names_init(&names, (size_t)n)) || (st = mxi_names_init(&shard_names, (size_t)n)))
        goto out;
    const cJSON *e;
    cJSON_ArrayForEach(e, wm)
    {
        if (!e->string || !cJSON_IsString(e)) {
            st = mx_error_set(MX_ERR_FORMAT, "%s: weight_map entry '%s' must map to a shard file name (a string)", file,
                              e->string ? e->string : "?");
            goto out;
        }
        if (!shard_name_ok(e->valuestring)) {
            st = mx_error_set(MX_ERR_FORMAT,
                              "%s: tensor '%s' maps to shard '%s' (expected a file name in the same directory)", file,
                              e->string, e->valuestring);
            goto out;
        }
        char *nm = strdup(e->string);
        if (!nm) {
            st = mx_error_set(MX_ERR_NOMEM, "%s", file);
            goto out;
        }
        x.names[x.n_tensors] = nm;
        if (!mxi_names_put(&names, nm, x.n_tensors, NULL)) {
            x.n_tensors++;
            st = mx_error_set(MX_ERR_FORMAT, "%s: tensor '%s' appears twice in weight_map", file, nm);
            goto out;
        }
        int s = mxi_names_get(&shard_names, e->valuestring);
        if (s < 0) {
            char *sn = strdup(e->valuestring);
            if (!sn) {
                x.n_tensors++;
                st = mx_error_set(MX_ERR_NOMEM, "%s", file);
                goto out;
            }
            s = x.n_shards;
            x.shards[x.n_shards++] = sn;
            mxi_names_put(&shard_names, sn, s, NULL);
        }
        x.shard[x.n_tensors++] = s;
    }
    *index_p = x;
    memset(&x, 0, sizeof x);
out:
    mxi_names_fini(&names);
    mxi_names_fini(&shard_names);
    mxi_index_fini(&x);
    cJSON_Delete(root);
    return st;
}

/* ---------------------------------------------------------------- mmapped file */
struct mx_st_file {
    char *path;
    uint8_t *map;
    size_t size;
    int n;
    mx_st_tensor_t *tensors;
    char *pool;
    mxi_names_t names;
};

mx_status_t mx_st_file_open(const char *path, mx_st_file_h *file_p)
{
    if (!path || !file_p)
        return mx_error_set(MX_ERR_INVALID, "mx_st_file_open: NULL argument");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mx_error_set(MX_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return mx_error_set(MX_ERR_IO, "%s: not a regular file", path);
    }
    struct mx_st_file *f = calloc(1, sizeof *f);
    if (!f) {
        close(fd);
        return mx_error_set(MX_ERR_NOMEM, "%s", path);
    }
    f->size = (size_t)sb.st_size;
    f->path = strdup(path);
    mx_status_t st = MX_OK;
    if (!f->path) {
        st = mx_error_set(MX_ERR_NOMEM, "%s", path);
        goto fail;
    }
    if (f->size) {
        void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            st = mx_error_set(MX_ERR_IO, "%s: mmap of %zu bytes failed: %s", path, f->size, strerror(errno));
            goto fail;
        }
        f->map = m;
    }
    close(fd);
    fd = -1;
    st = mxi_st_parse(path, f->map ? f->map : (const uint8_t *)"", f->size, &f->tensors, &f->n, &f->pool);
    if (st)
        goto fail;
    if ((st = mxi_names_init(&f->names, (size_t)f->n)))
        goto fail;
    for (int i = 0; i < f->n; i++)
        mxi_names_put(&f->names, f->tensors[i].name, i, NULL);
    *file_p = f;
    return MX_OK;
fail:
    if (fd >= 0)
        close(fd);
    mx_st_file_close(f);
    return st;
}

void mx_st_file_close(mx_st_file_h f)
{
    if (!f)
        return;
    if (f->map)
        munmap(f->map, f->size);
    mxi_names_fini(&f->names);
    free(f->tensors);
    free(f->pool);
    free(f->path);
    free(f);
}

int mx_st_file_count(mx_st_file_h f)
{
    return f ? f->n : 0;
}

const mx_st_tensor_t *mx_st_file_tensor(mx_st_file_h f, int i)
{
    return f && i >= 0 && i < f->n ? &f->tensors[i] : NULL;
}

mx_status_t mx_st_file_find(mx_st_file_h f, const char *name, mx_st_tensor_t *tensor_p)
{
    int i = mxi_names_get(&f->names, name);
    if (i < 0)
        return mx_error_set(MX_ERR_FORMAT, "%s: no tensor '%s'", f->path, name);
    *tensor_p = f->tensors[i];
    return MX_OK;
}

int mxi_st_file_index(mx_st_file_h f, const char *name)
{
    return f ? mxi_names_get(&f->names, name) : -1;
}
const char *mxi_st_file_path(mx_st_file_h f)
{
    return f ? f->path : NULL;
}
