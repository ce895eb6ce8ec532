/* A checkpoint directory: config.json + model.safetensors or a sharded index;
 * layout detection and loading the router and a subset of experts of a layer
 * into the canonical per-expert view (include/mxep/moe.h). */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ckpt_internal.h"

static const char *const layout_names[MXI_LAYOUT_COUNT] = {
    "none", "gpt_oss_fused", "openai_original", "fused_3d_halves", "per_expert_2d", "mixtral_w123", "vllm_w13"};

const char *mxi_layout_name(mxi_layout_t l)
{
    return (unsigned)l < MXI_LAYOUT_COUNT ? layout_names[l] : "?";
}

struct mx_ckpt {
    char *dir;
    mx_model_config_t cfg;
    int n_files;
    mx_st_file_h *files;
    int n_tensors;
    int *ref_file, *ref_idx;
    mxi_names_t names;
    mxi_layout_t layout;
    char pre[256], post[256]; /* tensor prefix of layer L = pre + L + post */
};

/* ---------------------------------------------------------------- small helpers */
static mx_status_t read_text(const char *path, char **text_p, size_t *len_p)
{
    struct stat sb;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode)) /* a FIFO would block the read, a folder has no size */
        return mx_error_set(MX_ERR_IO, "%s: not a regular file (expected a JSON file)", path);
    FILE *f = fopen(path, "rb");
    if (!f)
        return mx_error_set(MX_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return mx_error_set(MX_ERR_IO, "%s: cannot seek", path);
    }
    long n = ftell(f);
    if (n < 0 || n > (long)MXI_ST_HEADER_MAX) {
        fclose(f);
        return mx_error_set(MX_ERR_FORMAT, "%s: %ld bytes (expected a JSON file under 100 MB)", path, n);
    }
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    if (!buf) {
        fclose(f);
        return mx_error_set(MX_ERR_NOMEM, "%s: %ld bytes", path, n);
    }
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        fclose(f);
        return mx_error_set(MX_ERR_IO, "%s: short read", path);
    }
    fclose(f);
    buf[n] = 0;
    *text_p = buf;
    *len_p = (size_t)n;
    return MX_OK;
}

static int file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* ---------------------------------------------------------------- layout detection */
/* Splits `prefix` (the tensor name up to the layout's suffix) around its last
 * ".<digits>." into pre/post; returns the layer or -1. */
static int split_layer(const char *prefix, size_t plen, char *pre, char *post, size_t cap)
{
    for (size_t i = plen; i-- > 0;) {
        if (!isdigit((unsigned char)prefix[i]))
            continue;
        size_t e = i + 1; /* one past the digits */
        size_t b = i;
        while (b > 0 && isdigit((unsigned char)prefix[b - 1]))
            b--;
        if (e >= plen || prefix[e] != '.' || (b > 0 && prefix[b - 1] != '.'))
            continue;
        if (b >= cap || plen - e >= cap || e - b > 6)
            return -1;
        memcpy(pre, prefix, b);
        pre[b] = 0;
        memcpy(post, prefix + e, plen - e);
        post[plen - e] = 0;
        return atoi(prefix + b);
    }
    return -1;
}

/* Does `name` end in the key tensor of some layout? Fills the layer template. */
static mxi_layout_t match_layout(const char *name, char *pre, char *post, size_t cap, int *layer_p)
{
    static const struct {
        const char *suffix;
        mxi_layout_t layout;
    } fixed[] = {
        {"experts.gate_up_proj_blocks", MXI_LAYOUT_GPT_OSS_FUSED},
        {"mlp1_weight.blocks", MXI_LAYOUT_OPENAI_ORIGINAL},
        {"experts.w13_weight", MXI_LAYOUT_VLLM_W13},
        {"experts.gate_up_proj", MXI_LAYOUT_FUSED_3D_HALVES},
    };
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        if (ends_with(name, fixed[i].suffix)) {
            size_t plen = n - strlen(fixed[i].suffix);
            if (plen && name[plen - 1] != '.')
                continue;
            int L = split_layer(name, plen, pre, post, cap);
            if (L >= 0) {
                *layer_p = L;
                return fixed[i].layout;
            }
        }
    /* per-expert: <P>experts.<j>.gate_proj.weight or <P>experts.<j>.w1.weight */
    const char *sfx[2] = {".gate_proj.weight", ".w1.weight"};
    mxi_layout_t lay[2] = {MXI_LAYOUT_PER_EXPERT_2D, MXI_LAYOUT_MIXTRAL_W123};
    for (int k = 0; k < 2; k++) {
        if (!ends_with(name, sfx[k]))
            continue;
        size_t e = n - strlen(sfx[k]);
        size_t b = e;
        while (b > 0 && isdigit((unsigned char)name[b - 1]))
            b--;
        if (b == e || b < 8 || strncmp(name + b - 8, "experts.", 8) != 0)
            continue;
        size_t plen = b - 8;
        int L = split_layer(name, plen, pre, post, cap);
        if (L >= 0) {
            *layer_p = L;
            return lay[k];
        }
    }
    return MXI_LAYOUT_NONE;
}

static void detect_layout(struct mx_ckpt *ck)
{
    char pre[256], post[256];
    int best_layer = INT_MAX;
    for (int i = 0; i < ck->n_tensors; i++) {
        const char *name = mx_st_file_tensor(ck->files[ck->ref_file[i]], ck->ref_idx[i])->name;
        int L;
        mxi_layout_t l = match_layout(name, pre, post, sizeof pre, &L);
        if (l == MXI_LAYOUT_NONE)
            continue;
        if (L < best_layer) {
            best_layer = L;
            ck->layout = l;
            strcpy(ck->pre, pre);
            strcpy(ck->post, post);
        }
    }
}

/* ---------------------------------------------------------------- open / close */
static mx_status_t add_file(struct mx_ckpt *ck, const char *path, int *index_p)
{
    mx_st_file_h f;
    mx_status_t st = mx_st_file_open(path, &f);
    if (st)
        return st;
    mx_st_file_h *nf = realloc(ck->files, (size_t)(ck->n_files + 1) * sizeof *nf);
    if (!nf) {
        mx_st_file_close(f);
        return mx_error_set(MX_ERR_NOMEM, "%s", path);
    }
    ck->files = nf;
    ck->files[ck->n_files] = f;
    *index_p = ck->n_files++;
    return MX_OK;
}

static mx_status_t open_tensors(struct mx_ckpt *ck)
{
    size_t dl = strlen(ck->dir);
    char *path = malloc(dl + 4096);
    if (!path)
        return mx_error_set(MX_ERR_NOMEM, "path");
    mx_status_t st = MX_OK;
    mxi_index_t idx = {0};
    char *text = NULL;
    int *shard_file = NULL;
    snprintf(path, dl + 4096, "%s/model.safetensors.index.json", ck->dir);
    if (file_exists(path)) {
        size_t len;
        if ((st = read_text(path, &text, &len)) || (st = mxi_index_parse(path, text, len, &idx)))
            goto out;
        shard_file = malloc((size_t)(idx.n_shards ? idx.n_shards : 1) * sizeof *shard_file);
        ck->ref_file = malloc((size_t)(idx.n_tensors ? idx.n_tensors : 1) * sizeof *ck->ref_file);
        ck->ref_idx = malloc((size_t)(idx.n_tensors ? idx.n_tensors : 1) * sizeof *ck->ref_idx);
        if (!shard_file || !ck->ref_file || !ck->ref_idx) {
            st = mx_error_set(MX_ERR_NOMEM, "%s", path);
            goto out;
        }
        for (int s = 0; s < idx.n_shards; s++) {
            char *sp = malloc(dl + strlen(idx.shards[s]) + 2);
            if (!sp) {
                st = mx_error_set(MX_ERR_NOMEM, "shard path");
                goto out;
            }
            sprintf(sp, "%s/%s", ck->dir, idx.shards[s]);
            if (!file_exists(sp)) {
                st = mx_error_set(MX_ERR_FORMAT, "%s: shard '%s' listed in weight_map is missing (expected %s)", path,
                                  idx.shards[s], sp);
                free(sp);
                goto out;
            }
            st = add_file(ck, sp, &shard_file[s]);
            free(sp);
            if (st)
                goto out;
        }
        if ((st = mxi_names_init(&ck->names, (size_t)idx.n_tensors)))
            goto out;
        for (int i = 0; i < idx.n_tensors; i++) {
            mx_st_file_h f = ck->files[shard_file[idx.shard[i]]];
            int fi = mxi_st_file_index(f, idx.names[i]);
            if (fi < 0) {
                st = mx_error_set(MX_ERR_FORMAT,
                                  "%s: weight_map puts tensor '%s' in shard '%s', which has no such tensor", path,
                                  idx.names[i], idx.shards[idx.shard[i]]);
                goto out;
            }
            ck->ref_file[i] = shard_file[idx.shard[i]];
            ck->ref_idx[i] = fi;
            mxi_names_put(&ck->names, mx_st_file_tensor(f, fi)->name, i, NULL);
        }
        ck->n_tensors = idx.n_tensors;
        goto out;
    }
    snprintf(path, dl + 4096, "%s/model.safetensors", ck->dir);
    if (!file_exists(path)) {
        st = mx_error_set(MX_ERR_IO, "%s: no model.safetensors and no model.safetensors.index.json (expected one)",
                          ck->dir);
        goto out;
    }
    int fi;
    if ((st = add_file(ck, path, &fi)))
        goto out;
    int n = mx_st_file_count(ck->files[fi]);
    ck->ref_file = malloc((size_t)(n ? n : 1) * sizeof *ck->ref_file);
    ck->ref_idx = malloc((size_t)(n ? n : 1) * sizeof *ck->ref_idx);
    if (!ck->ref_file || !ck->ref_idx) {
        st = mx_error_set(MX_ERR_NOMEM, "%s", path);
        goto out;
    }
    if ((st = mxi_names_init(&ck->names, (size_t)n)))
        goto out;
    for (int i = 0; i < n; i++) {
        ck->ref_file[i] = fi;
        ck->ref_idx[i] = i;
        mxi_names_put(&ck->names, mx_st_file_tensor(ck->files[fi], i)->name, i, NULL);
    }
    ck->n_tensors = n;
out:
    /* the index was parsed with its lookups; with the references set it can go */
    free(shard_file);
    free(text);
    mxi_index_fini(&idx);
    free(path);
    return st;
}

mx_status_t mx_ckpt_open(const char *dir, mx_ckpt_h *ckpt_p)
{
    if (!dir || !ckpt_p)
        return mx_error_set(MX_ERR_INVALID, "mx_ckpt_open: NULL argument");
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return mx_error_set(MX_ERR_IO, "%s: not a checkpoint directory (expected a directory with config.json)", dir);
    struct mx_ckpt *ck = calloc(1, sizeof *ck);
    if (!ck)
        return mx_error_set(MX_ERR_NOMEM, "checkpoint");
    mx_status_t st = MX_OK;
    char *text = NULL, *path = NULL;
    if (!(ck->dir = strdup(dir)) || !(path = malloc(strlen(dir) + 32))) {
        st = mx_error_set(MX_ERR_NOMEM, "checkpoint");
        goto fail;
    }
    sprintf(path, "%s/config.json", dir);
    size_t len;
    if ((st = read_text(path, &text, &len)) || (st = mx_ckpt_config_parse(text, len, path, &ck->cfg)))
        goto fail;
    if ((st = open_tensors(ck)))
        goto fail;
    detect_layout(ck);
    /* blocks + scales are MXFP4 whatever the config says: the original OpenAI
     * checkpoint's config has no quantization_config at all */
    if (strcmp(ck->cfg.quant_method, "none") == 0 &&
        (ck->layout == MXI_LAYOUT_OPENAI_ORIGINAL || ck->layout == MXI_LAYOUT_GPT_OSS_FUSED))
        mxi_config_set_mxfp4(&ck->cfg);
    free(text);
    free(path);
    *ckpt_p = ck;
    return MX_OK;
fail:
    free(text);
    free(path);
    mx_ckpt_close(ck);
    return st;
}

void mx_ckpt_close(mx_ckpt_h ck)
{
    if (!ck)
        return;
    for (int i = 0; i < ck->n_files; i++)
        mx_st_file_close(ck->files[i]);
    free(ck->files);
    free(ck->ref_file);
    free(ck->ref_idx);
    mxi_names_fini(&ck->names);
    free(ck->dir);
    free(ck);
}

const mx_model_config_t *mx_ckpt_config(mx_ckpt_h ck)
{
    return ck ? &ck->cfg : NULL;
}
int mx_ckpt_file_count(mx_ckpt_h ck)
{
    return ck ? ck->n_files : 0;
}
const char *mx_ckpt_file_path(mx_ckpt_h ck, int i)
{
    return ck && i >= 0 && i < ck->n_files ? mxi_st_file_path(ck->files[i]) : NULL;
}
int mx_ckpt_tensor_count(mx_ckpt_h ck)
{
    return ck ? ck->n_tensors : 0;
}

mx_status_t mx_ckpt_tensor_at(mx_ckpt_h ck, int i, mx_st_tensor_t *tensor_p)
{
    if (!ck || !tensor_p || i < 0 || i >= ck->n_tensors)
        return mx_error_set(MX_ERR_INVALID, "tensor index %d out of range", i);
    *tensor_p = *mx_st_file_tensor(ck->files[ck->ref_file[i]], ck->ref_idx[i]);
    return MX_OK;
}

const char *mx_ckpt_layout_name(mx_ckpt_h ck)
{
    return ck ? mxi_layout_name(ck->layout) : "none";
}

mx_status_t mx_ckpt_tensor(mx_ckpt_h ck, const char *name, mx_st_tensor_t *tensor_p)
{
    if (!ck || !name || !tensor_p)
        return mx_error_set(MX_ERR_INVALID, "mx_ckpt_tensor: NULL argument");
    int i = mxi_names_get(&ck->names, name);
    if (i < 0)
        return mx_error_set(MX_ERR_FORMAT, "%s: no tensor '%s' in the checkpoint", ck->dir, name);
    *tensor_p = *mx_st_file_tensor(ck->files[ck->ref_file[i]], ck->ref_idx[i]);
    return MX_OK;
}

static const mx_st_tensor_t *find(mx_ckpt_h ck, const char *name)
{
    int i = mxi_names_get(&ck->names, name);
    return i < 0 ? NULL : mx_st_file_tensor(ck->files[ck->ref_file[i]], ck->ref_idx[i]);
}

/* ---------------------------------------------------------------- shape checks */
static void shape_str(const int64_t *s, int nd, char *buf, size_t cap)
{
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < nd && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)s[i]);
    if (o < cap)
        snprintf(buf + o, cap - o, "]");
}

static mx_status_t expect_shape(const mx_st_tensor_t *t, int nd, const int64_t *dims)
{
    int ok = t->ndim == nd;
    for (int i = 0; ok && i < nd; i++)
        ok = t->shape[i] == dims[i];
    if (ok)
        return MX_OK;
    char a[160], b[160];
    shape_str(t->shape, t->ndim, a, sizeof a);
    shape_str(dims, nd, b, sizeof b);
    return mx_error_set(MX_ERR_FORMAT, "%s: tensor '%s' has shape %s %s, expected %s", t->file, t->name, a,
                        mx_st_dtype_name(t->dtype), b);
}

static mx_status_t expect_dtype(const mx_st_tensor_t *t, int n, const mx_st_dtype_t *ok, const char *what)
{
    for (int i = 0; i < n; i++)
        if (t->dtype == ok[i])
            return MX_OK;
    return mx_error_set(MX_ERR_FORMAT, "%s: tensor '%s' is %s, expected %s", t->file, t->name,
                        mx_st_dtype_name(t->dtype), what);
}

static mx_status_t need(mx_ckpt_h ck, const char *name, int layer, const mx_st_tensor_t **t_p)
{
    const mx_st_tensor_t *t = find(ck, name);
    if (!t)
        return mx_error_set(MX_ERR_FORMAT, "%s: layer %d: missing tensor '%s' (layout %s)", ck->dir, layer, name,
                            mxi_layout_name(ck->layout));
    *t_p = t;
    return MX_OK;
}

static float scalar_at(const mx_st_tensor_t *t, size_t i)
{
    if (t->dtype == MX_ST_F32) {
        float f;
        memcpy(&f, t->data + 4 * i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, t->data + 2 * i, 2);
    return mxi_bf16_to_f32(h);
}

static const mx_st_dtype_t float_dtypes[2] = {MX_ST_F32, MX_ST_BF16};

/* A scale value read from tensor t at index i: finite and > 0 (POS) or >= 0;
 * anything else (NaN, an infinity, a negative) would only show later as NaN
 * or sign-flipped outputs. */
static mx_status_t check_scale(const mx_st_tensor_t *t, size_t i, float v, int pos)
{
    if (isfinite(v) && (pos ? v > 0.0f : v >= 0.0f))
        return MX_OK;
    return mx_error_set(MX_ERR_FORMAT, "%s: tensor '%s' value %zu is %g, expected a finite scale %s 0", t->file,
                        t->name, i, (double)v, pos ? ">" : ">=");
}

/* ---------------------------------------------------------------- router */
void mx_router_weights_fini(mx_router_weights_t *r)
{
    if (!r)
        return;
    free(r->weight);
    free(r->bias);
    free(r->correction_bias);
    free(r->scale);
    free(r->per_expert_scale);
    memset(r, 0, sizeof *r);
}

static mx_status_t to_floats(const mx_st_tensor_t *t, size_t n, float **out_p)
{
    mx_status_t st = expect_dtype(t, 2, float_dtypes, "F32 or BF16");
    if (st)
        return st;
    float *o = malloc((n ? n : 1) * sizeof *o);
    if (!o)
        return mx_error_set(MX_ERR_NOMEM, "%s: %zu floats", t->name, n);
    for (size_t i = 0; i < n; i++)
        o[i] = scalar_at(t, i);
    *out_p = o;
    return MX_OK;
}

static void layer_prefix(mx_ckpt_h ck, int layer, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s%d%s", ck->pre, layer, ck->post);
}

static mx_status_t check_layer(mx_ckpt_h ck, int layer)
{
    if (layer < 0 || layer >= ck->cfg.n_layers)
        return mx_error_set(MX_ERR_INVALID, "%s: layer %d out of range (config has %d layers)", ck->dir, layer,
                            ck->cfg.n_layers);
    if (ck->layout == MXI_LAYOUT_NONE)
        return mx_error_set(MX_ERR_FORMAT,
                            "%s: no expert tensors found in any known layout (gpt-oss fused, OpenAI original, fused "
                            "3-D halves, per-expert 2-D, Mixtral w1/w3/w2, vLLM w13)",
                            ck->dir);
    return MX_OK;
}

mx_status_t mx_ckpt_load_router(mx_ckpt_h ck, int layer, mx_router_weights_t *router_p)
{
    if (!ck || !router_p)
        return mx_error_set(MX_ERR_INVALID, "mx_ckpt_load_router: NULL argument");
    mx_status_t st = check_layer(ck, layer);
    if (st)
        return st;
    char P[600], name[700];
    layer_prefix(ck, layer, P, sizeof P);
    static const char *const wn[] = {"router.weight", "gate.weight", "router.proj.weight"};
    static const char *const bn[] = {"router.bias", "gate.bias", "router.proj.bias"};
    const mx_st_tensor_t *w = NULL, *b = NULL, *cb = NULL;
    int k;
    for (k = 0; k < 3 && !w; k++) {
        snprintf(name, sizeof name, "%s%s", P, wn[k]);
        w = find(ck, name);
    }
    if (!w)
        return mx_error_set(MX_ERR_FORMAT,
                            "%s: layer %d: no router weight (looked for %srouter.weight, %sgate.weight, "
                            "%srouter.proj.weight)",
                            ck->dir, layer, P, P, P);
    k--;
    snprintf(name, sizeof name, "%s%s", P, bn[k]);
    b = find(ck, name);
    snprintf(name, sizeof name, "%sgate.e_score_correction_bias", P);
    cb = find(ck, name);
    /* Gemma 4: router.scale [H] and router.per_expert_scale [E] (older
     * exports keep the latter as moe.per_expert_scale; vLLM gemma4.py maps
     * both). A gemma4 router needs both: every Gemma4TextRouter has them. */
    const mx_st_tensor_t *sc = NULL, *pes = NULL;
    snprintf(name, sizeof name, "%srouter.scale", P);
    sc = find(ck, name);
    snprintf(name, sizeof name, "%srouter.per_expert_scale", P);
    pes = find(ck, name);
    if (!pes) {
        snprintf(name, sizeof name, "%smoe.per_expert_scale", P);
        pes = find(ck, name);
    }
    if (ck->cfg.router.kind == MX_ROUTER_GEMMA4 && (!sc || !pes))
        return mx_error_set(MX_ERR_FORMAT,
                            "%s: layer %d: the gemma4 router needs %s (looked for %srouter.scale [%zu] and "
                            "%srouter.per_expert_scale or %smoe.per_expert_scale [%d])",
                            ck->dir, layer, !sc ? "router.scale" : "router.per_expert_scale", P, ck->cfg.hidden, P, P,
                            ck->cfg.n_experts);
    int64_t E = ck->cfg.n_experts, H = (int64_t)ck->cfg.hidden;
    int64_t dw[2] = {E, H}, db[1] = {E}, dh[1] = {H};
    if ((st = expect_shape(w, 2, dw)) || (b && (st = expect_shape(b, 1, db))) ||
        (cb && (st = expect_shape(cb, 1, db))) || (sc && (st = expect_shape(sc, 1, dh))) ||
        (pes && (st = expect_shape(pes, 1, db))))
        return st;
    mx_router_weights_t r = {.n_experts = (int)E, .hidden = (size_t)H, .rms_eps = ck->cfg.rms_norm_eps};
    if ((st = to_floats(w, (size_t)(E * H), &r.weight)) || (b && (st = to_floats(b, (size_t)E, &r.bias))) ||
        (cb && (st = to_floats(cb, (size_t)E, &r.correction_bias))) ||
        (sc && (st = to_floats(sc, (size_t)H, &r.scale))) ||
        (pes && (st = to_floats(pes, (size_t)E, &r.per_expert_scale)))) {
        mx_router_weights_fini(&r);
        return st;
    }
    *router_p = r;
    return MX_OK;
}

/* ---------------------------------------------------------------- expert sets */
void mxi_matrix_bytes(mx_wfmt_t fmt, mx_wscale_t sk, size_t rows, size_t cols, size_t *data_p, size_t *scales_p)
{
    size_t d = 0, s = 0;
    switch (fmt) {
    case MX_WFMT_BF16:
        d = rows * cols * 2;
        break;
    case MX_WFMT_MXFP4:
        d = rows * cols / 2;
        s = rows * (cols / 32);
        break;
    case MX_WFMT_FP8:
        d = rows * cols;
        if (sk == MX_WSCALE_BLOCK)
            s = ((rows + 127) / 128) * ((cols + 127) / 128) * sizeof(float);
        else if (sk == MX_WSCALE_CHANNEL)
            s = rows * sizeof(float);
        else
            s = sizeof(float);
        break;
    }
    *data_p = d;
    *scales_p = s;
}

mx_status_t mxi_expert_set_create(const int *ids, int count, mx_expert_set_h *set_p)
{
    struct mx_expert_set *s = calloc(1, sizeof *s);
    if (!s)
        return mx_error_set(MX_ERR_NOMEM, "expert set");
    size_t n = count > 0 ? (size_t)count : 1;
    s->ids = malloc(n * sizeof *s->ids);
    s->w = calloc(n, sizeof *s->w);
    s->bufs = calloc(n, sizeof *s->bufs);
    if (!s->ids || !s->w || !s->bufs) {
        mx_expert_set_destroy(s);
        return mx_error_set(MX_ERR_NOMEM, "expert set of %d", count);
    }
    s->count = count;
    if (count > 0)
        memcpy(s->ids, ids, (size_t)count * sizeof *ids);
    *set_p = s;
    return MX_OK;
}

static size_t align64(size_t x)
{
    return (x + 63) & ~(size_t)63;
}

mx_status_t mxi_expert_alloc(mx_expert_set_h set, int i, int gate_up_bias, int down_bias)
{
    mx_expert_weights_t *w = &set->w[i];
    size_t gd, gs, dd, ds;
    mxi_matrix_bytes(w->gate_up.fmt, w->gate_up.scale_kind, w->gate_up.rows, w->gate_up.cols, &gd, &gs);
    mxi_matrix_bytes(w->down.fmt, w->down.scale_kind, w->down.rows, w->down.cols, &dd, &ds);
    size_t gb = gate_up_bias ? w->gate_up.rows * sizeof(float) : 0;
    size_t db = down_bias ? w->down.rows * sizeof(float) : 0;
    size_t total = align64(gd) + align64(gs) + align64(dd) + align64(ds) + align64(gb) + align64(db);
    uint8_t *buf = aligned_alloc(64, total ? total : 64);
    if (!buf)
        return mx_error_set(MX_ERR_NOMEM, "expert %d: %zu bytes", set->ids[i], total);
    set->bufs[i] = buf;
    size_t o = 0;
    w->gate_up.data = buf + o;
    o += align64(gd);
    w->gate_up.scales = gs ? buf + o : NULL;
    o += align64(gs);
    w->down.data = buf + o;
    o += align64(dd);
    w->down.scales = ds ? buf + o : NULL;
    o += align64(ds);
    w->gate_up_bias = gb ? (const float *)(buf + o) : NULL;
    o += align64(gb);
    w->down_bias = db ? (const float *)(buf + o) : NULL;
    return MX_OK;
}

int mx_expert_set_count(mx_expert_set_h s)
{
    return s ? s->count : 0;
}
const mx_expert_weights_t *mx_expert_set_weights(mx_expert_set_h s)
{
    return s ? s->w : NULL;
}
const int *mx_expert_set_ids(mx_expert_set_h s)
{
    return s ? s->ids : NULL;
}

void mx_expert_set_destroy(mx_expert_set_h s)
{
    if (!s)
        return;
    for (int i = 0; s->bufs && i < s->count; i++)
        free(s->bufs[i]);
    free(s->bufs);
    free(s->w);
    free(s->ids);
    free(s);
}

/* ---------------------------------------------------------------- matrix sources */
/* One source matrix of one expert in a file: its data bytes (canonical order)
 * and its scales (raw dtype of scale_t, `n_scales` entries from scale_data). */
typedef struct {
    mx_wfmt_t fmt;
    mx_wscale_t sk;
    size_t rows, cols;
    const uint8_t *data;
    const mx_st_tensor_t *scale_t;
    const uint8_t *scale_data;
    const mx_st_tensor_t *bias_t;
    const uint8_t *bias_data;
    float input_scale;
    const char *name; /* the weight tensor's name (messages) */
} msrc_t;

static float scale_at(const msrc_t *s, size_t i)
{
    if (s->scale_t->dtype == MX_ST_F32) {
        float f;
        memcpy(&f, s->scale_data + 4 * i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, s->scale_data + 2 * i, 2);
    return mxi_bf16_to_f32(h);
}

static float bias_at(const msrc_t *s, size_t i)
{
    if (s->bias_t->dtype == MX_ST_F32) {
        float f;
        memcpy(&f, s->bias_data + 4 * i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, s->bias_data + 2 * i, 2);
    return mxi_bf16_to_f32(h);
}

/* The canonical scale kind of `n` sources stacked by rows. */
static mx_status_t stacked_kind(mx_ckpt_h ck, const msrc_t *src, int n, mx_wscale_t *sk_p)
{
    if (n == 1 || src[0].fmt != MX_WFMT_FP8) {
        *sk_p = src[0].sk;
        return MX_OK;
    }
    int block = 0, other = 0;
    for (int i = 0; i < n; i++) {
        if (src[i].sk == MX_WSCALE_BLOCK)
            block++;
        else
            other++;
    }
    if (block && other)
        return mx_error_set(MX_ERR_UNSUPPORTED, "%s: gate and up projections mix block and per-channel scales",
                            ck->dir);
    if (block) {
        for (int i = 0; i < n - 1; i++)
            if (src[i].rows % 128)
                return mx_error_set(MX_ERR_UNSUPPORTED,
                                    "%s: gate/up with 128x128 block scales need I %% 128 == 0 to fuse (I = %zu)",
                                    ck->dir, src[i].rows);
        *sk_p = MX_WSCALE_BLOCK;
    } else {
        *sk_p = MX_WSCALE_CHANNEL; /* per-tensor scales of gate and up become per-row scales */
    }
    return MX_OK;
}

/* The index in its whole tensor of value i of a source's scales (bias: 1). */
static size_t src_index(const msrc_t *s, int bias, size_t i)
{
    const mx_st_tensor_t *t = bias ? s->bias_t : s->scale_t;
    const uint8_t *d = bias ? s->bias_data : s->scale_data;
    return (size_t)(d - t->data) / (t->dtype == MX_ST_F32 ? 4 : 2) + i;
}

/* Copies `n` sources stacked by rows into the canonical matrix m (allocated);
 * FP8 scales must be finite and >= 0, biases finite (named otherwise). */
static mx_status_t stack_into(mx_matrix_t *m, const msrc_t *src, int n, float *bias_out)
{
    uint8_t *d = (uint8_t *)m->data;
    size_t off = 0, soff = 0, row0 = 0;
    mx_status_t st;
    for (int i = 0; i < n; i++) {
        size_t db, sb;
        mxi_matrix_bytes(src[i].fmt, src[i].sk, src[i].rows, src[i].cols, &db, &sb);
        memcpy(d + off, src[i].data, db);
        off += db;
        if (m->fmt == MX_WFMT_MXFP4) {
            memcpy((uint8_t *)m->scales + soff, src[i].scale_data, sb);
            soff += sb;
        } else if (m->fmt == MX_WFMT_FP8) {
            /* canonical scale j from source scale k, each checked as it is read */
            const int chan = m->scale_kind == MX_WSCALE_CHANNEL;
            const size_t n_out = chan ? src[i].rows : sb / sizeof(float), base = chan ? row0 : soff;
            for (size_t j = 0; j < n_out; j++) {
                const size_t k = chan && src[i].sk != MX_WSCALE_CHANNEL ? 0 : j;
                const float v = scale_at(&src[i], k);
                if ((st = check_scale(src[i].scale_t, src_index(&src[i], 0, k), v, 0)))
                    return st;
                ((float *)m->scales)[base + j] = v;
            }
            if (!chan)
                soff += n_out;
        }
        if (bias_out && src[i].bias_t)
            for (size_t r = 0; r < src[i].rows; r++) {
                const float b = bias_at(&src[i], r);
                if (!isfinite(b))
                    return mx_error_set(MX_ERR_FORMAT, "%s: tensor '%s' value %zu is %g, expected a finite bias",
                                        src[i].bias_t->file, src[i].bias_t->name, src_index(&src[i], 1, r), (double)b);
                bias_out[row0 + r] = b;
            }
        row0 += src[i].rows;
    }
    return MX_OK;
}

static mx_status_t fill_expert(mx_ckpt_h ck, mx_expert_set_h set, int i, const msrc_t *gu, int n_gu, const msrc_t *dn)
{
    mx_expert_weights_t *w = &set->w[i];
    mx_wscale_t sk = MX_WSCALE_NONE;
    mx_status_t st = stacked_kind(ck, gu, n_gu, &sk);
    if (st)
        return st;
    size_t rows = 0;
    for (int k = 0; k < n_gu; k++)
        rows += gu[k].rows;
    /* with a quantization_config, every expert in the format of its scheme: a mix would
     * only be refused by the backend's prepack, by a rank-local index */
    const mx_wfmt_t want = mx_scheme_wfmt(ck->cfg.moe.scheme);
    if (strcmp(ck->cfg.quant_method, "none") != 0)
        for (int k = 0; k <= n_gu; k++) {
            const msrc_t *x = k < n_gu ? &gu[k] : dn;
            if (x->fmt != want)
                return mx_error_set(MX_ERR_FORMAT,
                                    "%s: expert %d: tensor '%s' holds %s weights; the config's scheme %s "
                                    "(quant_method %s) needs %s",
                                    ck->dir, set->ids[i], x->name ? x->name : "?", mx_wfmt_name(x->fmt),
                                    mx_scheme_name(ck->cfg.moe.scheme), ck->cfg.quant_method, mx_wfmt_name(want));
        }
    w->gate_up = (mx_matrix_t){gu[0].fmt, sk, rows, gu[0].cols, NULL, NULL};
    w->down = (mx_matrix_t){dn->fmt, dn->sk, dn->rows, dn->cols, NULL, NULL};
    int gub = gu[0].bias_t != NULL, dnb = dn->bias_t != NULL;
    for (int k = 1; k < n_gu; k++)
        if ((gu[k].bias_t != NULL) != gub)
            return mx_error_set(MX_ERR_FORMAT, "%s: expert %d: gate has a bias and up has none (or the reverse)",
                                ck->dir, set->ids[i]);
    if ((st = mxi_expert_alloc(set, i, gub, dnb)))
        return st;
    if ((st = stack_into(&w->gate_up, gu, n_gu, (float *)w->gate_up_bias)) ||
        (st = stack_into(&w->down, dn, 1, (float *)w->down_bias)))
        return st;
    float in = 0.0f;
    for (int k = 0; k < n_gu; k++)
        if (gu[k].input_scale > in)
            in = gu[k].input_scale; /* vLLM takes the max of w1/w3 input scales */
    w->input_scale = in;
    w->down_input_scale = dn->input_scale;
    return MX_OK;
}

/* ---------------------------------------------------------------- fused (E leading) tensors */
static const mx_st_dtype_t u8_dtypes[2] = {MX_ST_U8, MX_ST_F8_E8M0};

/* A fused [E, ...] tensor; checks dims after E, returns expert j's slice. */
static mx_status_t fused(mx_ckpt_h ck, int layer, const char *P, const char *suffix, int required, int nd,
                         const int64_t *dims, const mx_st_tensor_t **t_p)
{
    char name[800];
    snprintf(name, sizeof name, "%s%s", P, suffix);
    const mx_st_tensor_t *t = find(ck, name);
    *t_p = NULL;
    if (!t)
        return required ? need(ck, name, layer, t_p) : MX_OK;
    mx_status_t st = expect_shape(t, nd, dims);
    if (st)
        return st;
    *t_p = t;
    return MX_OK;
}

static const uint8_t *slice(const mx_st_tensor_t *t, int j, int E)
{
    return t->data + (t->nbytes / (size_t)E) * (size_t)j;
}

/* Per-expert input scale from a fused tensor of shape [E] or [] / [1]. */
static mx_status_t input_scale_of(mx_ckpt_h ck, const char *P, const char *suffix, int j, int E, float *v_p)
{
    char name[800];
    snprintf(name, sizeof name, "%s%s", P, suffix);
    const mx_st_tensor_t *t = find(ck, name);
    *v_p = 0.0f;
    if (!t)
        return MX_OK;
    mx_status_t st = expect_dtype(t, 2, float_dtypes, "F32 or BF16");
    if (st)
        return st;
    size_t n = t->nbytes / (t->dtype == MX_ST_F32 ? 4 : 2);
    if (n != (size_t)E && n != 1)
        return mx_error_set(MX_ERR_FORMAT, "%s: tensor '%s' has %zu values, expected %d (one per expert) or 1", t->file,
                            t->name, n, E);
    const size_t at = n == 1 ? 0 : (size_t)j;
    *v_p = scalar_at(t, at);
    return check_scale(t, at, *v_p, 1);
}

static mx_status_t load_fused_mxfp4(mx_ckpt_h ck, int layer, const char *P, const char *const nm[6], const char *in_gu,
                                    const char *in_dn, mx_expert_set_h set)
{
    int64_t E = ck->cfg.n_experts, H = (int64_t)ck->cfg.hidden, I = (int64_t)ck->cfg.inter;
    if (H % 32 || I % 32)
        return mx_error_set(MX_ERR_FORMAT,
                            "%s: MXFP4 experts need hidden and intermediate sizes divisible by 32 (H = %lld, I = %lld)",
                            ck->dir, (long long)H, (long long)I);
    const mx_st_tensor_t *gb = NULL, *gs = NULL, *gbias = NULL, *db = NULL, *ds = NULL, *dbias = NULL;
    mx_status_t st;
    int64_t d_gb[4] = {E, 2 * I, H / 32, 16}, d_gs[3] = {E, 2 * I, H / 32}, d_gbias[2] = {E, 2 * I};
    int64_t d_db[4] = {E, H, I / 32, 16}, d_ds[3] = {E, H, I / 32}, d_dbias[2] = {E, H};
    /* gpt-oss has expert biases: one missing would only change the numbers */
    const int bias = strcmp(ck->cfg.model_type, "gpt_oss") == 0;
    if ((st = fused(ck, layer, P, nm[0], 1, 4, d_gb, &gb)) || (st = fused(ck, layer, P, nm[1], 1, 3, d_gs, &gs)) ||
        (st = fused(ck, layer, P, nm[2], bias, 2, d_gbias, &gbias)) ||
        (st = fused(ck, layer, P, nm[3], 1, 4, d_db, &db)) || (st = fused(ck, layer, P, nm[4], 1, 3, d_ds, &ds)) ||
        (st = fused(ck, layer, P, nm[5], bias, 2, d_dbias, &dbias)))
        return st;
    if ((st = expect_dtype(gb, 1, u8_dtypes, "U8 (packed E2M1 pairs)")) ||
        (st = expect_dtype(db, 1, u8_dtypes, "U8 (packed E2M1 pairs)")) ||
        (st = expect_dtype(gs, 2, u8_dtypes, "U8 or F8_E8M0 (E8M0 scale bytes)")) ||
        (st = expect_dtype(ds, 2, u8_dtypes, "U8 or F8_E8M0 (E8M0 scale bytes)")) ||
        (gbias && (st = expect_dtype(gbias, 2, float_dtypes, "BF16 or F32"))) ||
        (dbias && (st = expect_dtype(dbias, 2, float_dtypes, "BF16 or F32"))))
        return st;
    for (int i = 0; i < set->count; i++) {
        int j = set->ids[i];
        msrc_t gu = {MX_WFMT_MXFP4,
                     MX_WSCALE_E8M0_32,
                     (size_t)(2 * I),
                     (size_t)H,
                     slice(gb, j, (int)E),
                     gs,
                     slice(gs, j, (int)E),
                     gbias,
                     gbias ? slice(gbias, j, (int)E) : NULL,
                     0.0f,
                     gb->name};
        msrc_t dn = {MX_WFMT_MXFP4,
                     MX_WSCALE_E8M0_32,
                     (size_t)H,
                     (size_t)I,
                     slice(db, j, (int)E),
                     ds,
                     slice(ds, j, (int)E),
                     dbias,
                     dbias ? slice(dbias, j, (int)E) : NULL,
                     0.0f,
                     db->name};
        if ((in_gu && (st = input_scale_of(ck, P, in_gu, j, (int)E, &gu.input_scale))) ||
            (in_dn && (st = input_scale_of(ck, P, in_dn, j, (int)E, &dn.input_scale))) ||
            (st = fill_expert(ck, set, i, &gu, 1, &dn)))
            return st;
    }
    return MX_OK;
}

/* Whether scale tensor s (lead_e: its leading dimension of lead_e experts, 0 =
 * a per-expert tensor) has the shape of scale kind sk for a [rows x cols]
 * weight: per tensor [] or ones, per channel [rows] or [rows, 1], 128x128
 * blocks [ceil(rows/128), ceil(cols/128)], MXFP4 [rows, cols/32]; *want gets
 * that shape in words. */
static int scale_shape_ok(const mx_st_tensor_t *s, int64_t lead_e, mx_wscale_t sk, size_t rows, size_t cols, char *want,
                          size_t cap)
{
    const int lead = lead_e ? 1 : 0, nd = s->ndim - lead;
    const int64_t *sh = s->shape + lead, R = (int64_t)rows, rb = (int64_t)((rows + 127) / 128),
                  cb = (int64_t)((cols + 127) / 128);
    char e[40] = "";
    if (lead)
        snprintf(e, sizeof e, "%lld, ", (long long)lead_e);
    int ok = nd >= 0 && (!lead || s->shape[0] == lead_e);
    switch (sk) {
    case MX_WSCALE_TENSOR:
        snprintf(want, cap, "[%s1] (per tensor)", e);
        for (int i = 0; ok && i < nd; i++)
            ok = sh[i] == 1;
        break;
    case MX_WSCALE_CHANNEL:
        snprintf(want, cap, "[%s%lld] or [%s%lld, 1] (per channel)", e, (long long)R, e, (long long)R);
        ok = ok && ((nd == 1 && sh[0] == R) || (nd == 2 && sh[0] == R && sh[1] == 1));
        break;
    case MX_WSCALE_BLOCK:
        snprintf(want, cap, "[%s%lld, %lld] (128x128 blocks)", e, (long long)rb, (long long)cb);
        ok = ok && nd == 2 && sh[0] == rb && sh[1] == cb;
        break;
    default: /* MXFP4 */
        snprintf(want, cap, "[%s%lld, %lld] (one E8M0 per 32 columns)", e, (long long)R, (long long)(cols / 32));
        ok = ok && nd == 2 && sh[0] == R && sh[1] == (int64_t)(cols / 32);
        break;
    }
    return ok;
}

static mx_status_t scale_shape_error(const mx_st_tensor_t *s, const char *want)
{
    char a[160];
    shape_str(s->shape, s->ndim, a, sizeof a);
    return mx_error_set(MX_ERR_FORMAT, "%s: scale tensor '%s' has shape %s, expected %s", s->file, s->name, a, want);
}

/* The format of one [rows x cols] weight (tensor w) and its scale tensor s
 * (n_scales values per expert; lead_e: s holds lead_e experts along its first
 * dimension, 0 = s is the expert's own). */
static mx_status_t classify(mx_ckpt_h ck, const mx_st_tensor_t *w, const mx_st_tensor_t *s, size_t rows, size_t cols,
                            size_t n_scales, int64_t lead_e, msrc_t *m)
{
    m->rows = rows;
    m->cols = cols;
    char want[160] = "";
    if (w->dtype == MX_ST_BF16) {
        m->fmt = MX_WFMT_BF16;
        m->sk = MX_WSCALE_NONE;
        m->scale_t = NULL;
        return MX_OK;
    }
    if (w->dtype == MX_ST_F8_E4M3) {
        m->fmt = MX_WFMT_FP8;
        if (!s)
            return mx_error_set(MX_ERR_FORMAT, "%s: FP8 tensor '%s' has no weight_scale / weight_scale_inv", w->file,
                                w->name);
        mx_status_t st = expect_dtype(s, 2, float_dtypes, "F32 or BF16 scales");
        if (st)
            return st;
        size_t nb = ((rows + 127) / 128) * ((cols + 127) / 128);
        int block_pref = strcmp(ck->cfg.quant_method, "fp8_block") == 0;
        /* the kinds whose count matches, in order of preference; the first whose shape matches */
        mx_wscale_t cand[4];
        int nc = 0;
        if (n_scales == 1)
            cand[nc++] = MX_WSCALE_TENSOR;
        if (block_pref && n_scales == nb)
            cand[nc++] = MX_WSCALE_BLOCK;
        if (n_scales == rows)
            cand[nc++] = MX_WSCALE_CHANNEL;
        if (!block_pref && n_scales == nb)
            cand[nc++] = MX_WSCALE_BLOCK;
        if (nc == 0)
            return mx_error_set(MX_ERR_FORMAT,
                                "%s: scale tensor '%s' has %zu values per expert; expected 1 (per tensor), %zu (per "
                                "channel) or %zu (128x128 blocks)",
                                s->file, s->name, n_scales, rows, nb);
        char first[160] = "";
        for (int c = 0; c < nc; c++) {
            if (scale_shape_ok(s, lead_e, cand[c], rows, cols, want, sizeof want)) {
                m->sk = cand[c];
                return MX_OK;
            }
            if (c == 0)
                snprintf(first, sizeof first, "%s", want);
        }
        return scale_shape_error(s, first);
    }
    if (w->dtype == MX_ST_U8) {
        m->fmt = MX_WFMT_MXFP4;
        m->sk = MX_WSCALE_E8M0_32;
        if (cols % 32)
            return mx_error_set(MX_ERR_FORMAT, "%s: MXFP4 tensor '%s' needs K %% 32 == 0 (K = %zu)", w->file, w->name,
                                cols);
        if (!s || (s->dtype != MX_ST_U8 && s->dtype != MX_ST_F8_E8M0) || n_scales != rows * (cols / 32))
            return mx_error_set(MX_ERR_FORMAT, "%s: MXFP4 tensor '%s' needs a U8/F8_E8M0 scale tensor of %zu bytes",
                                w->file, w->name, rows * (cols / 32));
        if (!scale_shape_ok(s, lead_e, MX_WSCALE_E8M0_32, rows, cols, want, sizeof want))
            return scale_shape_error(s, want);
        return MX_OK;
    }
    return mx_error_set(MX_ERR_FORMAT, "%s: expert weight '%s' is %s, expected BF16, F8_E4M3 or U8 (MXFP4)", w->file,
                        w->name, mx_st_dtype_name(w->dtype));
}

static size_t elem_count(const mx_st_tensor_t *t)
{
    int bits = mx_st_dtype_bits(t->dtype);
    return bits ? t->nbytes * 8 / (size_t)bits : 0;
}

/* A weight tensor holding `lead` experts (0 = a 2-D per-expert tensor) of [rows x cols]. */
static mx_status_t weight_shape(const mx_st_tensor_t *w, int64_t lead, size_t rows, size_t cols)
{
    int64_t c = (int64_t)(w->dtype == MX_ST_U8 ? cols / 2 : cols);
    if (lead) {
        int64_t d[3] = {lead, (int64_t)rows, c};
        return expect_shape(w, 3, d);
    }
    int64_t d[2] = {(int64_t)rows, c};
    return expect_shape(w, 2, d);
}

static mx_status_t load_w13(mx_ckpt_h ck, int layer, const char *P, mx_expert_set_h set)
{
    int64_t E = ck->cfg.n_experts;
    size_t H = ck->cfg.hidden, I = ck->cfg.inter;
    const char *nm[2][4] = {
        {"experts.w13_weight", "experts.w13_weight_scale", "experts.w13_bias", "experts.w13_input_scale"},
        {"experts.w2_weight", "experts.w2_weight_scale", "experts.w2_bias", "experts.w2_input_scale"}};
    const mx_st_tensor_t *w[2] = {NULL, NULL}, *s[2] = {NULL, NULL}, *b[2] = {NULL, NULL};
    size_t rows[2] = {2 * I, H}, cols[2] = {H, I};
    char name[800];
    mx_status_t st;
    for (int k = 0; k < 2; k++) {
        snprintf(name, sizeof name, "%s%s", P, nm[k][0]);
        if ((st = need(ck, name, layer, &w[k])) || (st = weight_shape(w[k], E, rows[k], cols[k])))
            return st;
        snprintf(name, sizeof name, "%s%s", P, nm[k][1]);
        s[k] = find(ck, name);
        int64_t db[2] = {E, (int64_t)rows[k]};
        if ((st = fused(ck, layer, P, nm[k][2], 0, 2, db, &b[k])) ||
            (b[k] && (st = expect_dtype(b[k], 2, float_dtypes, "BF16 or F32"))))
            return st;
        if (s[k] && elem_count(s[k]) % (size_t)E)
            return mx_error_set(MX_ERR_FORMAT, "%s: tensor '%s' has %zu values, not a multiple of %lld experts",
                                s[k]->file, s[k]->name, elem_count(s[k]), (long long)E);
    }
    for (int i = 0; i < set->count; i++) {
        int j = set->ids[i];
        msrc_t m[2];
        for (int k = 0; k < 2; k++) {
            memset(&m[k], 0, sizeof m[k]);
            size_t ns = s[k] ? elem_count(s[k]) / (size_t)E : 0;
            if ((st = classify(ck, w[k], s[k], rows[k], cols[k], ns, E, &m[k])))
                return st;
            m[k].data = slice(w[k], j, (int)E);
            m[k].name = w[k]->name;
            m[k].scale_t = s[k];
            m[k].scale_data = s[k] ? slice(s[k], j, (int)E) : NULL;
            m[k].bias_t = b[k];
            m[k].bias_data = b[k] ? slice(b[k], j, (int)E) : NULL;
            if ((st = input_scale_of(ck, P, nm[k][3], j, (int)E, &m[k].input_scale)))
                return st;
        }
        if ((st = fill_expert(ck, set, i, &m[0], 1, &m[1])))
            return st;
    }
    return MX_OK;
}

static mx_status_t load_3d_halves(mx_ckpt_h ck, int layer, const char *P, mx_expert_set_h set)
{
    int64_t E = ck->cfg.n_experts;
    size_t H = ck->cfg.hidden, I = ck->cfg.inter;
    const char *nm[2][2] = {{"experts.gate_up_proj", "experts.gate_up_proj_bias"},
                            {"experts.down_proj", "experts.down_proj_bias"}};
    size_t rows[2] = {2 * I, H}, cols[2] = {H, I};
    const mx_st_tensor_t *w[2] = {NULL, NULL}, *b[2] = {NULL, NULL};
    char name[800];
    mx_status_t st;
    for (int k = 0; k < 2; k++) {
        snprintf(name, sizeof name, "%s%s", P, nm[k][0]);
        if ((st = need(ck, name, layer, &w[k])))
            return st;
        if (w[k]->dtype != MX_ST_BF16)
            return mx_error_set(MX_ERR_UNSUPPORTED, "%s: fused 3-D expert tensor '%s' is %s (mxep reads BF16 ones)",
                                w[k]->file, w[k]->name, mx_st_dtype_name(w[k]->dtype));
        if (w[k]->ndim == 3 && w[k]->shape[0] == E && w[k]->shape[1] == (int64_t)cols[k] &&
            w[k]->shape[2] == (int64_t)rows[k] && rows[k] != cols[k])
            return mx_error_set(MX_ERR_UNSUPPORTED,
                                "%s: tensor '%s' is stored [E, in, out] (transposed); mxep expects [E, out, in] = "
                                "[%lld, %zu, %zu]",
                                w[k]->file, w[k]->name, (long long)E, rows[k], cols[k]);
        if ((st = weight_shape(w[k], E, rows[k], cols[k])))
            return st;
        int64_t db[2] = {E, (int64_t)rows[k]};
        if ((st = fused(ck, layer, P, nm[k][1], 0, 2, db, &b[k])) ||
            (b[k] && (st = expect_dtype(b[k], 2, float_dtypes, "BF16 or F32"))))
            return st;
    }
    for (int i = 0; i < set->count; i++) {
        int j = set->ids[i];
        msrc_t m[2];
        for (int k = 0; k < 2; k++) {
            memset(&m[k], 0, sizeof m[k]);
            m[k] = (msrc_t){MX_WFMT_BF16,
                            MX_WSCALE_NONE,
                            rows[k],
                            cols[k],
                            slice(w[k], j, (int)E),
                            NULL,
                            NULL,
                            b[k],
                            b[k] ? slice(b[k], j, (int)E) : NULL,
                            0.0f,
                            w[k]->name};
        }
        if ((st = fill_expert(ck, set, i, &m[0], 1, &m[1])))
            return st;
    }
    return MX_OK;
}

/* Per-expert 2-D: <P>experts.<j>.<proj>.weight (+ .weight_scale / .weight_scale_inv, .bias, .input_scale). */
static mx_status_t source_2d(mx_ckpt_h ck, int layer, const char *P, int j, const char *proj, size_t rows, size_t cols,
                             msrc_t *m)
{
    char base[800], name[900];
    snprintf(base, sizeof base, "%sexperts.%d.%s", P, j, proj);
    const mx_st_tensor_t *w = NULL, *s, *b, *in;
    mx_status_t st;
    snprintf(name, sizeof name, "%s.weight", base);
    if ((st = need(ck, name, layer, &w)) || (st = weight_shape(w, 0, rows, cols)))
        return st;
    snprintf(name, sizeof name, "%s.weight_scale", base);
    s = find(ck, name);
    if (!s) {
        snprintf(name, sizeof name, "%s.weight_scale_inv", base); /* DeepSeek: multiplied despite the name */
        s = find(ck, name);
    }
    memset(m, 0, sizeof *m);
    if ((st = classify(ck, w, s, rows, cols, s ? elem_count(s) : 0, 0, m)))
        return st;
    m->data = w->data;
    m->name = w->name;
    m->scale_t = s;
    m->scale_data = s ? s->data : NULL;
    snprintf(name, sizeof name, "%s.bias", base);
    b = find(ck, name);
    if (b) {
        int64_t db[1] = {(int64_t)rows};
        if ((st = expect_shape(b, 1, db)) || (st = expect_dtype(b, 2, float_dtypes, "BF16 or F32")))
            return st;
        m->bias_t = b;
        m->bias_data = b->data;
    }
    snprintf(name, sizeof name, "%s.input_scale", base);
    in = find(ck, name);
    if (in) {
        if ((st = expect_dtype(in, 2, float_dtypes, "F32 or BF16")))
            return st;
        if (elem_count(in) != 1)
            return mx_error_set(MX_ERR_FORMAT, "%s: tensor '%s' has %zu values, expected 1 (static per-tensor scale)",
                                in->file, in->name, elem_count(in));
        m->input_scale = scalar_at(in, 0);
        if ((st = check_scale(in, 0, m->input_scale, 1)))
            return st;
    }
    return MX_OK;
}

static mx_status_t load_2d(mx_ckpt_h ck, int layer, const char *P, const char *g, const char *u, const char *d,
                           mx_expert_set_h set)
{
    size_t H = ck->cfg.hidden, I = ck->cfg.inter;
    mx_status_t st;
    for (int i = 0; i < set->count; i++) {
        int j = set->ids[i];
        msrc_t gu[2], dn;
        if ((st = source_2d(ck, layer, P, j, g, I, H, &gu[0])) || (st = source_2d(ck, layer, P, j, u, I, H, &gu[1])) ||
            (st = source_2d(ck, layer, P, j, d, H, I, &dn)))
            return st;
        if (gu[0].fmt != gu[1].fmt)
            return mx_error_set(MX_ERR_FORMAT, "%s: layer %d expert %d: %s and %s have different formats", ck->dir,
                                layer, j, g, u);
        if ((st = fill_expert(ck, set, i, gu, 2, &dn)))
            return st;
    }
    return MX_OK;
}

mx_status_t mx_ckpt_load_experts(mx_ckpt_h ck, int layer, const int *expert_ids, int n_ids, mx_expert_set_h *set_p)
{
    if (!ck || !set_p || (n_ids > 0 && !expert_ids) || n_ids < 0)
        return mx_error_set(MX_ERR_INVALID, "mx_ckpt_load_experts: bad arguments");
    mx_status_t st = check_layer(ck, layer);
    if (st)
        return st;
    uint8_t *seen = calloc((size_t)ck->cfg.n_experts, 1); /* one pass: n_ids may be 2^20 */
    if (!seen)
        return mx_error_set(MX_ERR_NOMEM, "mx_ckpt_load_experts: %d experts", ck->cfg.n_experts);
    for (int i = 0; i < n_ids && st == MX_OK; i++) {
        const int id = expert_ids[i];
        if (id < 0 || id >= ck->cfg.n_experts)
            st = mx_error_set(MX_ERR_INVALID, "expert id %d out of range (the model has %d experts)", id,
                              ck->cfg.n_experts);
        else if (seen[id]++)
            st = mx_error_set(MX_ERR_INVALID, "expert id %d listed twice", id);
    }
    free(seen);
    if (st)
        return st;
    mx_expert_set_h set;
    if ((st = mxi_expert_set_create(expert_ids, n_ids, &set)))
        return st;
    char P[600];
    layer_prefix(ck, layer, P, sizeof P);
    static const char *const gpt[6] = {"experts.gate_up_proj_blocks", "experts.gate_up_proj_scales",
                                       "experts.gate_up_proj_bias",   "experts.down_proj_blocks",
                                       "experts.down_proj_scales",    "experts.down_proj_bias"};
    static const char *const oai[6] = {"mlp1_weight.blocks", "mlp1_weight.scales", "mlp1_bias",
                                       "mlp2_weight.blocks", "mlp2_weight.scales", "mlp2_bias"};
    switch (ck->layout) {
    case MXI_LAYOUT_GPT_OSS_FUSED:
        st = load_fused_mxfp4(ck, layer, P, gpt, "experts.gate_up_proj_input_scale", "experts.down_proj_input_scale",
                              set);
        break;
    case MXI_LAYOUT_OPENAI_ORIGINAL:
        st = load_fused_mxfp4(ck, layer, P, oai, NULL, NULL, set);
        break;
    case MXI_LAYOUT_VLLM_W13:
        st = load_w13(ck, layer, P, set);
        break;
    case MXI_LAYOUT_FUSED_3D_HALVES:
        st = load_3d_halves(ck, layer, P, set);
        break;
    case MXI_LAYOUT_PER_EXPERT_2D:
        st = load_2d(ck, layer, P, "gate_proj", "up_proj", "down_proj", set);
        break;
    case MXI_LAYOUT_MIXTRAL_W123:
        st = load_2d(ck, layer, P, "w1", "w3", "w2", set);
        break;
    default:
        st = mx_error_set(MX_ERR_INTERNAL, "layout %d", (int)ck->layout);
    }
    if (st) {
        mx_expert_set_destroy(set);
        return st;
    }
    *set_p = set;
    return MX_OK;
}

int mxi_ckpt_missing_experts(mx_ckpt_h ck, int layer, int *first_p)
{
    const char *proj[3];
    if (ck->layout == MXI_LAYOUT_PER_EXPERT_2D) {
        proj[0] = "gate_proj";
        proj[1] = "up_proj";
        proj[2] = "down_proj";
    } else if (ck->layout == MXI_LAYOUT_MIXTRAL_W123) {
        proj[0] = "w1";
        proj[1] = "w3";
        proj[2] = "w2";
    } else {
        return 0; /* fused layouts hold every expert in one tensor: loading checks its shape */
    }
    char P[600], name[800];
    layer_prefix(ck, layer, P, sizeof P);
    int missing = 0;
    for (int j = 0; j < ck->cfg.n_experts; j++)
        for (int k = 0; k < 3; k++) {
            snprintf(name, sizeof name, "%sexperts.%d.%s.weight", P, j, proj[k]);
            if (!find(ck, name)) {
                if (!missing && first_p)
                    *first_p = j;
                missing++;
                break;
            }
        }
    return missing;
}
