/* coordinator/placement.c: expert -> ranks (replicas), contiguous, replicated
 * round robin, or from a JSON file; validated with errors naming the expert. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord_internal.h"
#include "mxep/coordinator.h"

void mx_placement_fini(mx_placement_t *p)
{
    if (!p)
        return;
    free(p->replica_off);
    free(p->replica_rank);
    free(p->rank_off);
    free(p->rank_expert);
    memset(p, 0, sizeof *p);
}

/* Builds the CSR arrays from a dense E x R membership matrix (1 = holds). */
static mx_status_t from_matrix(const unsigned char *m, int E, int R, mx_placement_t *out)
{
    mx_placement_t p;
    memset(&p, 0, sizeof p);
    p.n_experts = E;
    p.n_ranks = R;
    size_t n = 0;
    for (size_t i = 0; i < (size_t)E * (size_t)R; i++)
        n += m[i] != 0;
    p.replica_off = malloc(((size_t)E + 1) * sizeof(int));
    p.rank_off = malloc(((size_t)R + 1) * sizeof(int));
    p.replica_rank = malloc((n ? n : 1) * sizeof(int));
    p.rank_expert = malloc((n ? n : 1) * sizeof(int));
    if (!p.replica_off || !p.rank_off || !p.replica_rank || !p.rank_expert) {
        mx_placement_fini(&p);
        return mx_error_set(MX_ERR_NOMEM, "placement: cannot allocate %d experts x %d ranks", E, R);
    }
    int k = 0;
    for (int e = 0; e < E; e++) {
        p.replica_off[e] = k;
        for (int r = 0; r < R; r++)
            if (m[(size_t)e * (size_t)R + (size_t)r])
                p.replica_rank[k++] = r;
    }
    p.replica_off[E] = k;
    k = 0;
    for (int r = 0; r < R; r++) {
        p.rank_off[r] = k;
        for (int e = 0; e < E; e++)
            if (m[(size_t)e * (size_t)R + (size_t)r])
                p.rank_expert[k++] = e;
    }
    p.rank_off[R] = k;
    *out = p;
    return MX_OK;
}

static mx_status_t check_counts(const char *what, int E, int R)
{
    if (E < 1)
        return mx_error_set(MX_ERR_INVALID, "%s: %d experts (expected >= 1)", what, E);
    if (R < 1)
        return mx_error_set(MX_ERR_INVALID, "%s: %d ranks (expected >= 1)", what, R);
    if ((size_t)E * (size_t)R > ((size_t)1 << 31))
        return mx_error_set(MX_ERR_INVALID, "%s: %d experts x %d ranks is too large", what, E, R);
    return MX_OK;
}

mx_status_t mx_coord_placement_contiguous(int n_experts, int n_ranks, mx_placement_t *placement_p)
{
    if (!placement_p)
        return mx_error_set(MX_ERR_INVALID, "contiguous placement: NULL output");
    mx_status_t st = check_counts("contiguous placement", n_experts, n_ranks);
    if (st != MX_OK)
        return st;
    if (n_ranks > n_experts)
        return mx_error_set(MX_ERR_INVALID,
                            "contiguous placement: %d ranks but only %d experts (every rank must hold an expert); "
                            "use a placement file with replicas (--placement FILE) or the replicated placement",
                            n_ranks, n_experts);
    unsigned char *m = calloc((size_t)n_experts * (size_t)n_ranks, 1);
    if (!m)
        return mx_error_set(MX_ERR_NOMEM, "contiguous placement: out of memory");
    int q = n_experts / n_ranks, rem = n_experts % n_ranks;
    for (int r = 0; r < n_ranks; r++) {
        int first = r * q + (r < rem ? r : rem);
        int cnt = q + (r < rem ? 1 : 0);
        for (int e = first; e < first + cnt; e++)
            m[(size_t)e * (size_t)n_ranks + (size_t)r] = 1;
    }
    st = from_matrix(m, n_experts, n_ranks, placement_p);
    free(m);
    return st;
}

mx_status_t mx_coord_placement_replicated(int n_experts, int n_ranks, mx_placement_t *placement_p)
{
    if (!placement_p)
        return mx_error_set(MX_ERR_INVALID, "replicated placement: NULL output");
    mx_status_t st = check_counts("replicated placement", n_experts, n_ranks);
    if (st != MX_OK)
        return st;
    if (n_ranks <= n_experts)
        return mx_coord_placement_contiguous(n_experts, n_ranks, placement_p);
    unsigned char *m = calloc((size_t)n_experts * (size_t)n_ranks, 1);
    if (!m)
        return mx_error_set(MX_ERR_NOMEM, "replicated placement: out of memory");
    for (int r = 0; r < n_ranks; r++)
        m[(size_t)(r % n_experts) * (size_t)n_ranks + (size_t)r] = 1;
    st = from_matrix(m, n_experts, n_ranks, placement_p);
    free(m);
    return st;
}

/* ---------------------------------------------------------------- JSON */

static int json_int(const cJSON *v, long *out)
{
    if (!cJSON_IsNumber(v))
        return 0;
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d) || d < (double)INT_MIN || d > (double)INT_MAX)
        return 0;
    *out = (long)d;
    return 1;
}

/* Places one expert's value (a rank or a list of ranks) into the matrix. */
static mx_status_t place_expert(const char *src, int e, const cJSON *v, unsigned char *m, int R)
{
    long r;
    if (cJSON_IsNumber(v)) {
        if (!json_int(v, &r) || r < 0 || r >= R)
            return mx_error_set(MX_ERR_FORMAT, "%s: expert %d: rank %g out of range (expected an integer 0..%d)", src,
                                e, v->valuedouble, R - 1);
        m[(size_t)e * (size_t)R + (size_t)r] = 1;
        return MX_OK;
    }
    if (!cJSON_IsArray(v))
        return mx_error_set(MX_ERR_FORMAT, "%s: expert %d: expected a rank or a list of ranks", src, e);
    int n = cJSON_GetArraySize(v);
    if (n == 0)
        return mx_error_set(MX_ERR_FORMAT, "%s: expert %d: empty list of ranks (expected at least one)", src, e);
    const cJSON *item;
    cJSON_ArrayForEach(item, v)
    {
        if (!cJSON_IsNumber(item))
            return mx_error_set(MX_ERR_FORMAT, "%s: expert %d: rank list holds a non-number (expected integers 0..%d)",
                                src, e, R - 1);
        if (!json_int(item, &r) || r < 0 || r >= R)
            return mx_error_set(MX_ERR_FORMAT, "%s: expert %d: rank %g out of range (expected an integer 0..%d)", src,
                                e, item->valuedouble, R - 1);
        if (m[(size_t)e * (size_t)R + (size_t)r])
            return mx_error_set(MX_ERR_FORMAT, "%s: expert %d: rank %ld listed twice", src, e, r);
        m[(size_t)e * (size_t)R + (size_t)r] = 1;
    }
    return MX_OK;
}

static int parse_expert_key(const char *key, int E, int *e_p)
{
    if (!key || !*key)
        return 0;
    char *end = NULL;
    errno = 0;
    long v = strtol(key, &end, 10);
    if (errno || *end || end == key || v < 0 || v >= E)
        return 0;
    if (key[0] == '0' && key[1]) /* "01": ambiguous, refuse */
        return 0;
    if (key[0] == '+' || key[0] == '-' || key[0] == ' ')
        return 0;
    *e_p = (int)v;
    return 1;
}

mx_status_t mx_coord_placement_parse(const char *json_text, const char *source, int n_experts, int n_ranks,
                                     mx_placement_t *placement_p)
{
    const char *src = source ? source : "placement";
    if (!json_text || !placement_p)
        return mx_error_set(MX_ERR_INVALID, "%s: NULL argument", src);
    mx_status_t st = check_counts(src, n_experts, n_ranks);
    if (st != MX_OK)
        return st;
    cJSON *root = cJSON_Parse(json_text);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t off = at && at >= json_text ? (size_t)(at - json_text) : 0;
        return mx_error_set(MX_ERR_FORMAT, "%s: not valid JSON (error near byte %zu)", src, off);
    }
    const int E = n_experts, R = n_ranks;
    unsigned char *m = calloc((size_t)E * (size_t)R, 1);
    unsigned char *seen = calloc((size_t)E, 1);
    if (!m || !seen) {
        st = mx_error_set(MX_ERR_NOMEM, "%s: out of memory", src);
        goto done;
    }
    if (!cJSON_IsObject(root)) {
        st = mx_error_set(MX_ERR_FORMAT, "%s: expected a JSON object with member \"experts\"", src);
        goto done;
    }
    const cJSON *experts = NULL, *member;
    cJSON_ArrayForEach(member, root)
    {
        long v;
        if (strcmp(member->string, "experts") == 0) {
            if (experts) {
                st = mx_error_set(MX_ERR_FORMAT, "%s: member \"experts\" given twice", src);
                goto done;
            }
            experts = member;
        } else if (strcmp(member->string, "n_experts") == 0 || strcmp(member->string, "n_ranks") == 0) {
            int want = member->string[2] == 'e' ? E : R;
            if (!json_int(member, &v) || v != want) {
                st = mx_error_set(MX_ERR_FORMAT, "%s: \"%s\" is %s%g but the job has %d", src, member->string,
                                  cJSON_IsNumber(member) ? "" : "not a number: ",
                                  cJSON_IsNumber(member) ? member->valuedouble : 0.0, want);
                goto done;
            }
        } else {
            st = mx_error_set(MX_ERR_FORMAT,
                              "%s: unknown member \"%s\" (expected \"experts\", \"n_experts\", \"n_ranks\")", src,
                              member->string);
            goto done;
        }
    }
    if (!experts) {
        st = mx_error_set(MX_ERR_FORMAT, "%s: missing member \"experts\"", src);
        goto done;
    }
    if (cJSON_IsArray(experts)) {
        int n = cJSON_GetArraySize(experts);
        if (n != E) {
            st = mx_error_set(MX_ERR_FORMAT, "%s: \"experts\" lists %d experts but the model has %d", src, n, E);
            goto done;
        }
        int e = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, experts)
        {
            if ((st = place_expert(src, e, v, m, R)) != MX_OK)
                goto done;
            seen[e] = 1;
            e++;
        }
    } else if (cJSON_IsObject(experts)) {
        const cJSON *v;
        cJSON_ArrayForEach(v, experts)
        {
            int e;
            if (!parse_expert_key(v->string, E, &e)) {
                st = mx_error_set(MX_ERR_FORMAT, "%s: expert key \"%s\" (expected a decimal expert id 0..%d)", src,
                                  v->string, E - 1);
                goto done;
            }
            if (seen[e]) {
                st = mx_error_set(MX_ERR_FORMAT, "%s: expert %d listed twice", src, e);
                goto done;
            }
            if ((st = place_expert(src, e, v, m, R)) != MX_OK)
                goto done;
            seen[e] = 1;
        }
    } else {
        st = mx_error_set(MX_ERR_FORMAT, "%s: \"experts\" must be a list or an object", src);
        goto done;
    }
    for (int e = 0; e < E; e++)
        if (!seen[e]) {
            st = mx_error_set(MX_ERR_FORMAT, "%s: expert %d is not placed on any rank", src, e);
            goto done;
        }
    st = from_matrix(m, E, R, placement_p);
done:
    free(m);
    free(seen);
    cJSON_Delete(root);
    return st;
}

mx_status_t mx_coord_placement_load(const char *path, int n_experts, int n_ranks, mx_placement_t *placement_p)
{
    if (!path || !placement_p)
        return mx_error_set(MX_ERR_INVALID, "placement: NULL path or output");
    FILE *f = fopen(path, "rb");
    if (!f)
        return mx_error_set(MX_ERR_IO, "placement file %s: cannot open (%s)", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            size_t ncap = cap ? cap * 2 : 8192;
            if (ncap > ((size_t)64 << 20)) {
                free(buf);
                fclose(f);
                return mx_error_set(MX_ERR_FORMAT, "placement file %s: larger than 64 MiB", path);
            }
            char *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                fclose(f);
                return mx_error_set(MX_ERR_NOMEM, "placement file %s: out of memory", path);
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + len, 1, 4096, f);
        len += got;
        if (got < 4096) {
            if (ferror(f)) {
                free(buf);
                fclose(f);
                return mx_error_set(MX_ERR_IO, "placement file %s: read error", path);
            }
            break;
        }
    }
    fclose(f);
    buf[len] = '\0';
    if (strlen(buf) != len) {
        free(buf);
        return mx_error_set(MX_ERR_FORMAT, "placement file %s: contains a NUL byte (expected JSON text)", path);
    }
    mx_status_t st = mx_coord_placement_parse(buf, path, n_experts, n_ranks, placement_p);
    free(buf);
    return st;
}

/* ---------------------------------------------------------------- queries */

const int *mx_coord_placement_rank_experts(const mx_placement_t *p, int rank, int *count_p)
{
    if (!p || rank < 0 || rank >= p->n_ranks) {
        if (count_p)
            *count_p = 0;
        return NULL;
    }
    if (count_p)
        *count_p = p->rank_off[rank + 1] - p->rank_off[rank];
    return p->rank_expert + p->rank_off[rank];
}

int mx_coord_placement_local_index(const mx_placement_t *p, int expert, int rank)
{
    if (!p || rank < 0 || rank >= p->n_ranks || expert < 0 || expert >= p->n_experts)
        return -1;
    int lo = p->rank_off[rank], hi = p->rank_off[rank + 1];
    while (lo < hi) { /* binary search in the ascending list */
        int mid = lo + (hi - lo) / 2;
        if (p->rank_expert[mid] < expert)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < p->rank_off[rank + 1] && p->rank_expert[lo] == expert)
        return lo - p->rank_off[rank];
    return -1;
}

int mx_coord_placement_pick(const mx_placement_t *p, int expert, int token_rank, uint64_t global_token)
{
    if (!p || expert < 0 || expert >= p->n_experts)
        return -1;
    int a = p->replica_off[expert], n = p->replica_off[expert + 1] - a;
    if (n <= 0)
        return -1;
    for (int i = 0; i < n; i++)
        if (p->replica_rank[a + i] == token_rank)
            return token_rank;
    return p->replica_rank[a + (int)(mxi_splitmix64(global_token) % (uint64_t)n)];
}

mx_status_t mx_coord_placement_json(const mx_placement_t *p, char **json_p)
{
    if (!p || !json_p)
        return mx_error_set(MX_ERR_INVALID, "placement json: NULL argument");
    cJSON *root = cJSON_CreateObject();
    cJSON *ex = cJSON_CreateArray();
    int ok = root && ex;
    if (ok) {
        cJSON_AddItemToObject(root, "experts", ex);
        ok = cJSON_AddNumberToObject(root, "n_experts", p->n_experts) &&
             cJSON_AddNumberToObject(root, "n_ranks", p->n_ranks);
    } else {
        cJSON_Delete(ex);
    }
    for (int e = 0; ok && e < p->n_experts; e++) {
        cJSON *list =
            cJSON_CreateIntArray(p->replica_rank + p->replica_off[e], p->replica_off[e + 1] - p->replica_off[e]);
        ok = list != NULL;
        if (ok)
            cJSON_AddItemToArray(ex, list);
    }
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!text)
        return mx_error_set(MX_ERR_NOMEM, "placement json: out of memory");
    *json_p = text;
    return MX_OK;
}
