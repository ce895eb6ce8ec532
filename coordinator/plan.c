/* coordinator/plan.c: dispatch plan (one copy of a token per destination
 * rank), the wire packing of coordinator.h, and the receiving side's unpacking
 * into the backend's run() arguments. */
#include <malloc.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "coord_internal.h"
#include "mxep/coordinator.h"
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef MXEP_COORD_HAVE_QUANT
#include "mxep/quant.h"
#endif

#define FP8_GROUP 128

static const char *const dtype_names[] = {"bf16", "fp8"};
static const char *const combine_names[] = {"exact", "reduce"};

const char *mx_dispatch_dtype_name(mx_dispatch_dtype_t d)
{
    return (unsigned)d < 2 ? dtype_names[d] : "?";
}
const char *mx_combine_mode_name(mx_combine_mode_t m)
{
    return (unsigned)m < 2 ? combine_names[m] : "?";
}

static int ieq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        char x = *a >= 'A' && *a <= 'Z' ? (char)(*a + 32) : *a;
        if (x != *b)
            return 0;
    }
    return *a == *b;
}

mx_status_t mx_dispatch_dtype_parse(const char *text, mx_dispatch_dtype_t *dtype_p)
{
    for (int i = 0; text && i < 2; i++)
        if (ieq(text, dtype_names[i])) {
            *dtype_p = (mx_dispatch_dtype_t)i;
            return MX_OK;
        }
    return mx_error_set(MX_ERR_INVALID, "dispatch dtype '%s': expected bf16 or fp8", text ? text : "(null)");
}

mx_status_t mx_combine_mode_parse(const char *text, mx_combine_mode_t *mode_p)
{
    for (int i = 0; text && i < 2; i++)
        if (ieq(text, combine_names[i])) {
            *mode_p = (mx_combine_mode_t)i;
            return MX_OK;
        }
    return mx_error_set(MX_ERR_INVALID, "combine mode '%s': expected exact or reduce", text ? text : "(null)");
}

static size_t round16(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

size_t mx_coord_wire_row_bytes(mx_dispatch_dtype_t dtype, size_t hidden)
{
    if (dtype == MX_DISPATCH_FP8)
        return round16((hidden + FP8_GROUP - 1) / FP8_GROUP * sizeof(float) + hidden);
    return round16(hidden * sizeof(uint16_t));
}

static size_t meta_bytes(size_t n_tokens, size_t n_entries)
{
    return round16(sizeof(mx_wire_header_t) + n_tokens * sizeof(uint32_t) + n_entries * sizeof(mx_wire_entry_t));
}

/* ---------------------------------------------------------------- plan */

void mx_dispatch_plan_fini(mx_dispatch_plan_t *p)
{
    if (!p)
        return;
    free(p->rank_copy_off);
    free(p->rank_entry_off);
    free(p->copy_token);
    free(p->copy_entry_off);
    free(p->entry_assign);
    free(p->entry_local_expert);
    free(p->entry_expert);
    free(p->entry_weight);
    free(p->entry_rank);
    free(p->token_entry_off);
    free(p->token_entry);
    memset(p, 0, sizeof *p);
}

typedef struct {
    int32_t dest, tok, lexp, assign;
} plan_item_t;

static int item_cmp(const void *a, const void *b)
{
    const plan_item_t *x = a, *y = b;
    if (x->dest != y->dest)
        return x->dest < y->dest ? -1 : 1;
    if (x->tok != y->tok)
        return x->tok < y->tok ? -1 : 1;
    if (x->lexp != y->lexp)
        return x->lexp < y->lexp ? -1 : 1;
    return x->assign < y->assign ? -1 : (x->assign > y->assign);
}

typedef struct {
    int32_t tok, expert, entry;
} tok_item_t;

static int tok_cmp(const void *a, const void *b)
{
    const tok_item_t *x = a, *y = b;
    if (x->tok != y->tok)
        return x->tok < y->tok ? -1 : 1;
    if (x->expert != y->expert)
        return x->expert < y->expert ? -1 : 1;
    return x->entry < y->entry ? -1 : (x->entry > y->entry);
}

mx_status_t mx_coord_plan_build(const mx_routing_t *routing, const mx_placement_t *placement, int my_rank,
                                uint64_t global_token_offset, mx_dispatch_plan_t *plan_p)
{
    if (!routing || !placement || !plan_p)
        return mx_error_set(MX_ERR_INVALID, "dispatch plan: NULL argument");
    const int R = placement->n_ranks;
    if (my_rank < 0 || my_rank >= R)
        return mx_error_set(MX_ERR_INVALID, "dispatch plan: rank %d out of range (the placement has %d ranks)", my_rank,
                            R);
    if (routing->n_experts != placement->n_experts)
        return mx_error_set(MX_ERR_INVALID, "dispatch plan: routing over %d experts but the placement has %d",
                            routing->n_experts, placement->n_experts);
    const size_t N = routing->n_assign, T = routing->n_tokens;
    if (N > 0 && (!routing->tok || !routing->expert || !routing->weight))
        return mx_error_set(MX_ERR_INVALID, "dispatch plan: routing has %zu assignments but no arrays", N);
    if (N > (size_t)INT32_MAX || T > (size_t)INT32_MAX)
        return mx_error_set(MX_ERR_INVALID, "dispatch plan: %zu assignments / %zu tokens (expected < 2^31)", N, T);

    plan_item_t *items = malloc((N ? N : 1) * sizeof *items);
    tok_item_t *titems = malloc((N ? N : 1) * sizeof *titems);
    mx_dispatch_plan_t p;
    memset(&p, 0, sizeof p);
    mx_status_t st = MX_OK;
    if (!items || !titems) {
        st = mx_error_set(MX_ERR_NOMEM, "dispatch plan: cannot allocate %zu assignments", N);
        goto fail;
    }
    for (size_t a = 0; a < N; a++) {
        int32_t t = routing->tok[a], e = routing->expert[a];
        if (t < 0 || (size_t)t >= T) {
            st = mx_error_set(MX_ERR_INVALID, "dispatch plan: assignment %zu names token %d (expected 0..%zu)", a, t,
                              T ? T - 1 : 0);
            goto fail;
        }
        if (e < 0 || e >= placement->n_experts) {
            st = mx_error_set(MX_ERR_INVALID, "dispatch plan: assignment %zu names expert %d (expected 0..%d)", a, e,
                              placement->n_experts - 1);
            goto fail;
        }
        int dest = mx_coord_placement_pick(placement, e, my_rank, global_token_offset + (uint64_t)t);
        int lexp = mx_coord_placement_local_index(placement, e, dest);
        if (dest < 0 || lexp < 0) {
            st = mx_error_set(MX_ERR_INTERNAL, "dispatch plan: expert %d has no usable replica", e);
            goto fail;
        }
        items[a] = (plan_item_t){dest, t, lexp, (int32_t)a};
    }
    qsort(items, N, sizeof *items, item_cmp);

    p.n_ranks = R;
    p.my_rank = my_rank;
    p.n_tokens = T;
    p.n_entries = N;
    size_t n_copies = 0;
    for (size_t i = 0; i < N; i++)
        if (i == 0 || items[i].dest != items[i - 1].dest || items[i].tok != items[i - 1].tok)
            n_copies++;
    p.n_copies = n_copies;
    size_t nN = N ? N : 1;
    p.rank_copy_off = calloc((size_t)R + 1, sizeof(size_t));
    p.rank_entry_off = calloc((size_t)R + 1, sizeof(size_t));
    p.copy_token = malloc((n_copies ? n_copies : 1) * sizeof(int32_t));
    p.copy_entry_off = malloc((n_copies + 1) * sizeof(size_t));
    p.entry_assign = malloc(nN * sizeof(int32_t));
    p.entry_local_expert = malloc(nN * sizeof(int32_t));
    p.entry_expert = malloc(nN * sizeof(int32_t));
    p.entry_weight = malloc(nN * sizeof(float));
    p.entry_rank = malloc(nN * sizeof(int32_t));
    p.token_entry_off = calloc(T + 1, sizeof(size_t));
    p.token_entry = malloc(nN * sizeof(int32_t));
    if (!p.rank_copy_off || !p.rank_entry_off || !p.copy_token || !p.copy_entry_off || !p.entry_assign ||
        !p.entry_local_expert || !p.entry_expert || !p.entry_weight || !p.entry_rank || !p.token_entry_off ||
        !p.token_entry) {
        st = mx_error_set(MX_ERR_NOMEM, "dispatch plan: cannot allocate %zu entries", N);
        goto fail;
    }
    size_t c = 0;
    for (size_t i = 0; i < N; i++) {
        const plan_item_t *it = &items[i];
        if (i == 0 || it->dest != items[i - 1].dest || it->tok != items[i - 1].tok) {
            p.copy_token[c] = it->tok;
            p.copy_entry_off[c] = i;
            p.rank_copy_off[it->dest + 1]++;
            c++;
        }
        p.rank_entry_off[it->dest + 1]++;
        p.entry_assign[i] = it->assign;
        p.entry_local_expert[i] = it->lexp;
        p.entry_expert[i] = routing->expert[it->assign];
        p.entry_weight[i] = routing->weight[it->assign];
        p.entry_rank[i] = it->dest;
        titems[i] = (tok_item_t){it->tok, p.entry_expert[i], (int32_t)i};
    }
    p.copy_entry_off[n_copies] = N;
    for (int r = 0; r < R; r++) {
        p.rank_copy_off[r + 1] += p.rank_copy_off[r];
        p.rank_entry_off[r + 1] += p.rank_entry_off[r];
    }
    qsort(titems, N, sizeof *titems, tok_cmp);
    for (size_t i = 0; i < N; i++) {
        if (i > 0 && titems[i].tok == titems[i - 1].tok && titems[i].expert == titems[i - 1].expert) {
            st = mx_error_set(MX_ERR_INVALID, "dispatch plan: token %d is assigned expert %d twice", titems[i].tok,
                              titems[i].expert);
            goto fail;
        }
        p.token_entry[i] = titems[i].entry;
        p.token_entry_off[titems[i].tok + 1]++;
    }
    for (size_t t = 0; t < T; t++)
        p.token_entry_off[t + 1] += p.token_entry_off[t];
    free(items);
    free(titems);
    *plan_p = p;
    return MX_OK;
fail:
    free(items);
    free(titems);
    mx_dispatch_plan_fini(&p);
    return st;
}

void mx_coord_dispatch_sizes(const mx_dispatch_plan_t *plan, mx_dispatch_dtype_t dtype, size_t hidden, size_t *bytes_p)
{
    const size_t row = mx_coord_wire_row_bytes(dtype, hidden);
    for (int r = 0; r < plan->n_ranks; r++) {
        size_t nt = plan->rank_copy_off[r + 1] - plan->rank_copy_off[r];
        size_t ne = plan->rank_entry_off[r + 1] - plan->rank_entry_off[r];
        bytes_p[r] = nt ? meta_bytes(nt, ne) + nt * row : 0;
    }
}

/* Header, per-copy entry counts and entries of the message to rank r (which
 * has at least one copy), zero padding up to the rows. */
static void write_meta(const mx_dispatch_plan_t *plan, int r, mx_dispatch_dtype_t dtype, size_t hidden, size_t row,
                       uint8_t *m)
{
    size_t c0 = plan->rank_copy_off[r], nt = plan->rank_copy_off[r + 1] - c0;
    size_t e0 = plan->rank_entry_off[r], ne = plan->rank_entry_off[r + 1] - e0;
    mx_wire_header_t h = {MX_WIRE_MAGIC, (uint32_t)dtype, (uint32_t)hidden,        (uint32_t)nt,
                          (uint32_t)ne,  (uint32_t)row,   (uint32_t)plan->my_rank, 0};
    memcpy(m, &h, sizeof h);
    uint8_t *cnt = m + sizeof h;
    for (size_t c = 0; c < nt; c++) {
        uint32_t n = (uint32_t)(plan->copy_entry_off[c0 + c + 1] - plan->copy_entry_off[c0 + c]);
        memcpy(cnt + c * sizeof n, &n, sizeof n);
    }
    uint8_t *ent = cnt + nt * sizeof(uint32_t);
    for (size_t i = 0; i < ne; i++) {
        mx_wire_entry_t we = {plan->entry_local_expert[e0 + i], plan->entry_weight[e0 + i]};
        memcpy(ent + i * sizeof we, &we, sizeof we);
    }
    size_t used = sizeof h + nt * sizeof(uint32_t) + ne * sizeof(mx_wire_entry_t);
    memset(m + used, 0, meta_bytes(nt, ne) - used);
}

/* The fast packing: every token quantized once (FP8), straight into the row of
 * its first copy, then copied to its other copies; OpenMP over tokens and
 * copies. The bytes are those of the scalar code below. Returns 0 (nothing
 * written) when its scratch cannot be allocated: the caller runs the scalar
 * code, which needs less. */
static int pack_fast(const mx_dispatch_plan_t *plan, const uint16_t *x, size_t hidden, mx_dispatch_dtype_t dtype,
                     void *send, const size_t *displs, size_t row)
{
    const size_t NC = plan->n_copies, T = plan->n_tokens;
    const size_t ng = (hidden + FP8_GROUP - 1) / FP8_GROUP;
    int nth = 1;
#ifdef _OPENMP
    nth = omp_get_max_threads();
#endif
    /* scratch: copy_dst[NC], first[T], scales[nth x ng] */
    size_t bytes = NC * sizeof(uint8_t *) + T * sizeof(size_t) + (size_t)nth * ng * sizeof(float);
    void *scratch = malloc(bytes ? bytes : 1);
    if (!scratch)
        return 0;
    uint8_t **copy_dst = scratch;
    size_t *first = (size_t *)(copy_dst + NC);
    float *scales = (float *)(first + T);
    for (size_t t = 0; t < T; t++)
        first[t] = SIZE_MAX;
    for (int r = 0; r < plan->n_ranks; r++) {
        size_t c0 = plan->rank_copy_off[r], nt = plan->rank_copy_off[r + 1] - c0;
        if (nt == 0)
            continue;
        uint8_t *m = (uint8_t *)send + displs[r];
        write_meta(plan, r, dtype, hidden, row, m);
        uint8_t *rows = m + meta_bytes(nt, plan->rank_entry_off[r + 1] - plan->rank_entry_off[r]);
        for (size_t c = 0; c < nt; c++) {
            copy_dst[c0 + c] = rows + c * row;
            size_t t = (size_t)plan->copy_token[c0 + c];
            if (first[t] == SIZE_MAX)
                first[t] = c0 + c;
        }
    }
    const long long LT = (long long)T, LNC = (long long)NC;
#pragma omp parallel num_threads(nth)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        if (dtype == MX_DISPATCH_FP8) {
#ifdef MXEP_COORD_HAVE_QUANT
            float *sc = scales + (size_t)tid * ng;
#pragma omp for schedule(static)
            for (long long t = 0; t < LT; t++) {
                if (first[t] == SIZE_MAX)
                    continue;
                uint8_t *dst = copy_dst[first[t]];
                /* cannot fail: non-NULL pointers, one row of hidden <= 2^30 */
                (void)mx_quant_fp8_group_dynamic_bf16_fast(x + (size_t)t * hidden, 1, hidden, FP8_GROUP,
                                                           dst + ng * sizeof(float), sc);
                memcpy(dst, sc, ng * sizeof(float));
                memset(dst + ng * sizeof(float) + hidden, 0, row - ng * sizeof(float) - hidden);
            }
#endif
#pragma omp for schedule(static)
            for (long long c = 0; c < LNC; c++) {
                size_t t = (size_t)plan->copy_token[c];
                if (first[t] != (size_t)c)
                    memcpy(copy_dst[c], copy_dst[first[t]], row);
            }
        } else {
#pragma omp for schedule(static)
            for (long long c = 0; c < LNC; c++) {
                const size_t t = (size_t)plan->copy_token[c];
                memcpy(copy_dst[c], x + t * hidden, hidden * sizeof(uint16_t));
                memset(copy_dst[c] + hidden * sizeof(uint16_t), 0, row - hidden * sizeof(uint16_t));
            }
        }
    }
    free(scratch);
    return 1;
}

mx_status_t mx_coord_dispatch_pack(const mx_dispatch_plan_t *plan, const uint16_t *x, size_t hidden,
                                   mx_dispatch_dtype_t dtype, void *send, const size_t *displs)
{
    if (!plan || !displs || (plan->n_copies > 0 && (!x || !send)))
        return mx_error_set(MX_ERR_INVALID, "dispatch pack: NULL argument");
    if (dtype != MX_DISPATCH_BF16 && dtype != MX_DISPATCH_FP8)
        return mx_error_set(MX_ERR_INVALID, "dispatch pack: unknown dtype %d", (int)dtype);
    if (hidden == 0 || hidden > UINT32_MAX / 4)
        return mx_error_set(MX_ERR_INVALID, "dispatch pack: hidden size %zu (expected 1..2^30)", hidden);
#ifndef MXEP_COORD_HAVE_QUANT
    if (dtype == MX_DISPATCH_FP8)
        return mx_error_set(MX_ERR_UNSUPPORTED, "dispatch pack: FP8 needs quant/, which this build lacks");
#endif
    const size_t row = mx_coord_wire_row_bytes(dtype, hidden);
    if (mxi_coord_fast() && pack_fast(plan, x, hidden, dtype, send, displs, row))
        return MX_OK;
    /* FP8: quantize every token that travels once (a token goes to several
     * ranks), into wire-format rows, then copy rows into the messages. */
    uint8_t *qrows = NULL;
    if (dtype == MX_DISPATCH_FP8 && plan->n_copies > 0) {
#ifdef MXEP_COORD_HAVE_QUANT
        const size_t ng = (hidden + FP8_GROUP - 1) / FP8_GROUP;
        qrows = malloc(plan->n_tokens * row);
        unsigned char *need = calloc(plan->n_tokens, 1);
        float *f = malloc(hidden * sizeof(float) + ng * sizeof(float));
        if (!qrows || !need || !f) {
            free(qrows);
            free(need);
            free(f);
            return mx_error_set(MX_ERR_NOMEM, "dispatch pack: cannot allocate FP8 rows for %zu tokens", plan->n_tokens);
        }
        float *sc = f + hidden;
        for (size_t c = 0; c < plan->n_copies; c++)
            need[plan->copy_token[c]] = 1;
        mx_status_t st = MX_OK;
        for (size_t t = 0; t < plan->n_tokens && st == MX_OK; t++) {
            if (!need[t])
                continue;
            const uint16_t *xt = x + t * hidden;
            uint8_t *dst = qrows + t * row;
            for (size_t hh = 0; hh < hidden; hh++)
                f[hh] = mxi_bf16_to_f32(xt[hh]);
            st = mx_quant_fp8_group_dynamic(f, 1, hidden, FP8_GROUP, dst + ng * sizeof(float), sc);
            if (st != MX_OK) {
                mx_error_prefix(st, "dispatch pack: FP8 row of token %zu: ", t);
                break;
            }
            memcpy(dst, sc, ng * sizeof(float));
            memset(dst + ng * sizeof(float) + hidden, 0, row - ng * sizeof(float) - hidden);
        }
        free(need);
        free(f);
        if (st != MX_OK) {
            free(qrows);
            return st;
        }
#endif
    }
    for (int r = 0; r < plan->n_ranks; r++) {
        size_t c0 = plan->rank_copy_off[r], nt = plan->rank_copy_off[r + 1] - c0;
        size_t e0 = plan->rank_entry_off[r], ne = plan->rank_entry_off[r + 1] - e0;
        if (nt == 0)
            continue;
        uint8_t *m = (uint8_t *)send + displs[r];
        write_meta(plan, r, dtype, hidden, row, m);
        uint8_t *rows = m + meta_bytes(nt, ne);
        for (size_t c = 0; c < nt; c++) {
            const size_t t = (size_t)plan->copy_token[c0 + c];
            uint8_t *dst = rows + c * row;
            if (dtype == MX_DISPATCH_BF16) {
                memcpy(dst, x + t * hidden, hidden * sizeof(uint16_t));
                memset(dst + hidden * sizeof(uint16_t), 0, row - hidden * sizeof(uint16_t));
            } else {
                memcpy(dst, qrows + t * row, row);
            }
        }
    }
    free(qrows);
    return MX_OK;
}

/* ---------------------------------------------------------------- worker side */

void mx_recv_batch_fini(mx_recv_batch_t *b)
{
    if (!b)
        return;
    free(b->x);
    free(b->tok);
    free(b->expert);
    free(b->weight);
    free(b->src_token_off);
    free(b->src_assign_off);
    memset(b, 0, sizeof *b);
}

/* Checks one message and returns its header (0 bytes = empty). */
static mx_status_t check_message(const uint8_t *m, size_t bytes, int src, size_t hidden, int n_local_experts,
                                 mx_wire_header_t *h)
{
    memset(h, 0, sizeof *h);
    if (bytes == 0)
        return MX_OK;
    if (bytes < sizeof *h)
        return mx_error_set(MX_ERR_FORMAT,
                            "dispatch message from rank %d: %zu bytes (shorter than the %zu-byte header)", src, bytes,
                            sizeof *h);
    memcpy(h, m, sizeof *h);
    if (h->magic != MX_WIRE_MAGIC)
        return mx_error_set(MX_ERR_FORMAT, "dispatch message from rank %d: magic 0x%08x (expected 0x%08x)", src,
                            h->magic, MX_WIRE_MAGIC);
    if (h->dtype > MX_DISPATCH_FP8)
        return mx_error_set(MX_ERR_FORMAT, "dispatch message from rank %d: dtype %u (expected 0 bf16 or 1 fp8)", src,
                            h->dtype);
#ifndef MXEP_COORD_HAVE_QUANT
    if (h->dtype == MX_DISPATCH_FP8)
        return mx_error_set(MX_ERR_UNSUPPORTED, "dispatch message from rank %d: FP8 needs quant/, absent here", src);
#endif
    if (h->hidden != hidden)
        return mx_error_set(MX_ERR_FORMAT, "dispatch message from rank %d: hidden %u (expected %zu)", src, h->hidden,
                            hidden);
    if ((int)h->src_rank != src)
        return mx_error_set(MX_ERR_FORMAT, "dispatch message from rank %d: header says sender %u", src, h->src_rank);
    size_t row = mx_coord_wire_row_bytes((mx_dispatch_dtype_t)h->dtype, hidden);
    if (h->row_bytes != row)
        return mx_error_set(MX_ERR_FORMAT, "dispatch message from rank %d: row_bytes %u (expected %zu)", src,
                            h->row_bytes, row);
    if (h->n_tokens == 0 || (uint64_t)h->n_entries > (uint64_t)h->n_tokens * (uint64_t)(n_local_experts))
        return mx_error_set(MX_ERR_FORMAT,
                            "dispatch message from rank %d: %u tokens, %u entries (expected >= 1 token and at most "
                            "%d entries per token)",
                            src, h->n_tokens, h->n_entries, n_local_experts);
    size_t want = meta_bytes(h->n_tokens, h->n_entries) + (size_t)h->n_tokens * row;
    if (want != bytes)
        return mx_error_set(MX_ERR_FORMAT, "dispatch message from rank %d: %zu bytes (its header implies %zu)", src,
                            bytes, want);
    const uint8_t *cnt = m + sizeof *h;
    uint64_t sum = 0;
    for (uint32_t c = 0; c < h->n_tokens; c++) {
        uint32_t n;
        memcpy(&n, cnt + (size_t)c * sizeof n, sizeof n);
        if (n == 0 || n > (uint32_t)n_local_experts)
            return mx_error_set(MX_ERR_FORMAT,
                                "dispatch message from rank %d: token copy %u has %u experts (expected 1..%d)", src, c,
                                n, n_local_experts);
        sum += n;
    }
    if (sum != h->n_entries)
        return mx_error_set(MX_ERR_FORMAT,
                            "dispatch message from rank %d: per-token counts sum to %llu, header says %u", src,
                            (unsigned long long)sum, h->n_entries);
    const uint8_t *ent = cnt + (size_t)h->n_tokens * sizeof(uint32_t);
    for (uint32_t i = 0; i < h->n_entries; i++) {
        mx_wire_entry_t we;
        memcpy(&we, ent + (size_t)i * sizeof we, sizeof we);
        if (we.local_expert < 0 || we.local_expert >= n_local_experts)
            return mx_error_set(MX_ERR_FORMAT,
                                "dispatch message from rank %d: entry %u names local expert %d (this rank holds %d)",
                                src, i, we.local_expert, n_local_experts);
        if (!isfinite(we.weight))
            return mx_error_set(MX_ERR_FORMAT, "dispatch message from rank %d: entry %u has a non-finite weight", src,
                                i);
    }
    return MX_OK;
}

/* One received row decoded into dst: the scalar code's bytes (BF16 copied;
 * FP8: value * scale rounded to BF16). A group with a finite scale goes
 * through quant's fused decoder, which then equals decode + mxi_bf16_from_f32
 * bit for bit (the products are never NaN except for a NaN code, whose
 * canonical NaN both roundings map alike); a non-finite scale from the wire
 * keeps the two-step scalar rounding (payload NaNs). */
static void unpack_row_fast(const uint8_t *src, mx_dispatch_dtype_t dtype, size_t hidden, uint16_t *dst)
{
    if (dtype == MX_DISPATCH_BF16) {
        memcpy(dst, src, hidden * sizeof(uint16_t));
        return;
    }
#ifdef MXEP_COORD_HAVE_QUANT
    const size_t ng = (hidden + FP8_GROUP - 1) / FP8_GROUP;
    const uint8_t *q = src + ng * sizeof(float);
    for (size_t g = 0; g < ng; g++) {
        float sc;
        memcpy(&sc, src + g * sizeof(float), sizeof sc);
        size_t c0 = g * FP8_GROUP, len = hidden - c0 < FP8_GROUP ? hidden - c0 : FP8_GROUP;
        if (isfinite(sc)) {
            (void)mx_quant_fp8_decode_bf16_fast(q + c0, len, sc, dst + c0);
        } else {
            float f[FP8_GROUP];
            (void)mx_quant_fp8_decode_fast(q + c0, len, sc, f);
            for (size_t i = 0; i < len; i++)
                dst[c0 + i] = mxi_bf16_from_f32(f[i]);
        }
    }
#endif
}

/* Grows *p to hold n bytes (n >= 1) without keeping its contents; *fresh
 * gets the new block (to install on success) or stays NULL when *p is big
 * enough. Returns 0 when out of memory. */
static int grow(void *p, size_t n, void **fresh)
{
    *fresh = NULL;
    if (p && malloc_usable_size(p) >= n)
        return 1;
    *fresh = malloc(n + n / 4); /* some headroom: layers differ a little */
    return *fresh != NULL;
}

/* The fast unpacking into a batch that may already hold arrays (reused when
 * big enough). On failure *b is untouched. */
static mx_status_t unpack_into(const void *recv, const size_t *bytes, const size_t *displs, int n_ranks, size_t hidden,
                               int n_local_experts, mx_recv_batch_t *b)
{
    size_t nt = 0, na = 0;
    mx_wire_header_t h;
    for (int s = 0; s < n_ranks; s++) {
        if (bytes[s] && !recv)
            return mx_error_set(MX_ERR_INVALID, "dispatch unpack: NULL receive buffer");
        mx_status_t st = check_message(bytes[s] ? (const uint8_t *)recv + displs[s] : NULL, bytes[s], s, hidden,
                                       n_local_experts, &h);
        if (st != MX_OK)
            return st;
        nt += h.n_tokens;
        na += h.n_entries;
    }
    /* x, tok, expert, weight, src_token_off, src_assign_off */
    void *cur[6] = {b->x, b->tok, b->expert, b->weight, b->src_token_off, b->src_assign_off};
    const size_t need[6] = {(nt ? nt : 1) * hidden * sizeof(uint16_t), (na ? na : 1) * sizeof(int32_t),
                            (na ? na : 1) * sizeof(int32_t),           (na ? na : 1) * sizeof(float),
                            ((size_t)n_ranks + 1) * sizeof(size_t),    ((size_t)n_ranks + 1) * sizeof(size_t)};
    void *fresh[6];
    int ok = 1;
    for (int i = 0; i < 6; i++)
        ok &= grow(cur[i], need[i], &fresh[i]);
    const uint8_t **row_src = malloc((nt ? nt : 1) * sizeof *row_src);
    if (!ok || !row_src) {
        for (int i = 0; i < 6; i++)
            free(fresh[i]);
        free(row_src);
        return mx_error_set(MX_ERR_NOMEM, "dispatch unpack: cannot allocate %zu tokens x %zu", nt, hidden);
    }
    for (int i = 0; i < 6; i++)
        if (fresh[i]) {
            free(cur[i]);
            cur[i] = fresh[i];
        }
    b->x = cur[0];
    b->tok = cur[1];
    b->expert = cur[2];
    b->weight = cur[3];
    b->src_token_off = cur[4];
    b->src_assign_off = cur[5];
    b->n_ranks = n_ranks;
    b->hidden = hidden;
    b->n_tokens = nt;
    b->n_assign = na;
    size_t t = 0, a = 0;
    for (int s = 0; s < n_ranks; s++) {
        b->src_token_off[s] = t;
        b->src_assign_off[s] = a;
        if (bytes[s] == 0)
            continue;
        const uint8_t *m = (const uint8_t *)recv + displs[s];
        memcpy(&h, m, sizeof h);
        const uint8_t *cnt = m + sizeof h;
        const uint8_t *ent = cnt + (size_t)h.n_tokens * sizeof(uint32_t);
        const uint8_t *rows = m + meta_bytes(h.n_tokens, h.n_entries);
        size_t i = 0;
        for (uint32_t c = 0; c < h.n_tokens; c++, t++) {
            uint32_t n;
            memcpy(&n, cnt + (size_t)c * sizeof n, sizeof n);
            for (uint32_t j = 0; j < n; j++, i++, a++) {
                mx_wire_entry_t we;
                memcpy(&we, ent + i * sizeof we, sizeof we);
                b->tok[a] = (int32_t)t;
                b->expert[a] = we.local_expert;
                b->weight[a] = we.weight;
            }
            row_src[t] = rows + (size_t)c * h.row_bytes;
        }
    }
    b->src_token_off[n_ranks] = t;
    b->src_assign_off[n_ranks] = a;
    const long long LT = (long long)nt;
#pragma omp parallel for schedule(static)
    for (long long tt = 0; tt < LT; tt++) {
        int s = 0; /* the source of row tt: src_token_off is ascending */
        while (b->src_token_off[s + 1] <= (size_t)tt)
            s++;
        uint32_t dtype;
        memcpy(&dtype, (const uint8_t *)recv + displs[s] + offsetof(mx_wire_header_t, dtype), sizeof dtype);
        unpack_row_fast(row_src[tt], (mx_dispatch_dtype_t)dtype, hidden, b->x + (size_t)tt * hidden);
    }
    free(row_src);
    return MX_OK;
}

mx_status_t mx_coord_recv_unpack_into(const void *recv, const size_t *bytes, const size_t *displs, int n_ranks,
                                      size_t hidden, int n_local_experts, mx_recv_batch_t *batch_io)
{
    if (!bytes || !displs || !batch_io || n_ranks < 1)
        return mx_error_set(MX_ERR_INVALID, "dispatch unpack: NULL argument or %d ranks", n_ranks);
    if (hidden == 0)
        return mx_error_set(MX_ERR_INVALID, "dispatch unpack: hidden size 0");
    if (!mxi_coord_fast()) { /* the scalar code, then swap the result in */
        mx_recv_batch_t b;
        mx_status_t st = mx_coord_recv_unpack(recv, bytes, displs, n_ranks, hidden, n_local_experts, &b);
        if (st == MX_OK) {
            mx_recv_batch_fini(batch_io);
            *batch_io = b;
        }
        return st;
    }
    return unpack_into(recv, bytes, displs, n_ranks, hidden, n_local_experts, batch_io);
}

mx_status_t mx_coord_recv_unpack(const void *recv, const size_t *bytes, const size_t *displs, int n_ranks,
                                 size_t hidden, int n_local_experts, mx_recv_batch_t *batch_p)
{
    if (!bytes || !displs || !batch_p || n_ranks < 1)
        return mx_error_set(MX_ERR_INVALID, "dispatch unpack: NULL argument or %d ranks", n_ranks);
    if (hidden == 0)
        return mx_error_set(MX_ERR_INVALID, "dispatch unpack: hidden size 0");
    if (mxi_coord_fast()) {
        mx_recv_batch_t fb;
        memset(&fb, 0, sizeof fb);
        mx_status_t st = unpack_into(recv, bytes, displs, n_ranks, hidden, n_local_experts, &fb);
        if (st == MX_OK)
            *batch_p = fb;
        return st;
    }
    size_t nt = 0, na = 0;
    mx_wire_header_t h;
    for (int s = 0; s < n_ranks; s++) {
        if (bytes[s] && !recv)
            return mx_error_set(MX_ERR_INVALID, "dispatch unpack: NULL receive buffer");
        mx_status_t st = check_message(bytes[s] ? (const uint8_t *)recv + displs[s] : NULL, bytes[s], s, hidden,
                                       n_local_experts, &h);
        if (st != MX_OK)
            return st;
        nt += h.n_tokens;
        na += h.n_entries;
    }
    mx_recv_batch_t b;
    memset(&b, 0, sizeof b);
    b.n_ranks = n_ranks;
    b.hidden = hidden;
    b.n_tokens = nt;
    b.n_assign = na;
    b.x = malloc((nt ? nt : 1) * hidden * sizeof(uint16_t));
    b.tok = malloc((na ? na : 1) * sizeof(int32_t));
    b.expert = malloc((na ? na : 1) * sizeof(int32_t));
    b.weight = malloc((na ? na : 1) * sizeof(float));
    b.src_token_off = calloc((size_t)n_ranks + 1, sizeof(size_t));
    b.src_assign_off = calloc((size_t)n_ranks + 1, sizeof(size_t));
    float *f = malloc(hidden * sizeof(float));
    if (!b.x || !b.tok || !b.expert || !b.weight || !b.src_token_off || !b.src_assign_off || !f) {
        free(f);
        mx_recv_batch_fini(&b);
        return mx_error_set(MX_ERR_NOMEM, "dispatch unpack: cannot allocate %zu tokens x %zu", nt, hidden);
    }
    size_t t = 0, a = 0;
    for (int s = 0; s < n_ranks; s++) {
        b.src_token_off[s] = t;
        b.src_assign_off[s] = a;
        if (bytes[s] == 0)
            continue;
        const uint8_t *m = (const uint8_t *)recv + displs[s];
        memcpy(&h, m, sizeof h);
        const uint8_t *cnt = m + sizeof h;
        const uint8_t *ent = cnt + (size_t)h.n_tokens * sizeof(uint32_t);
        const uint8_t *rows = m + meta_bytes(h.n_tokens, h.n_entries);
        size_t i = 0;
        for (uint32_t c = 0; c < h.n_tokens; c++, t++) {
            uint32_t n;
            memcpy(&n, cnt + (size_t)c * sizeof n, sizeof n);
            for (uint32_t j = 0; j < n; j++, i++, a++) {
                mx_wire_entry_t we;
                memcpy(&we, ent + i * sizeof we, sizeof we);
                b.tok[a] = (int32_t)t;
                b.expert[a] = we.local_expert;
                b.weight[a] = we.weight;
            }
            const uint8_t *src = rows + (size_t)c * h.row_bytes;
            uint16_t *dst = b.x + t * hidden;
            if (h.dtype == MX_DISPATCH_BF16) {
                memcpy(dst, src, hidden * sizeof(uint16_t));
            } else {
#ifdef MXEP_COORD_HAVE_QUANT
                size_t ng = (hidden + FP8_GROUP - 1) / FP8_GROUP;
                const uint8_t *q = src + ng * sizeof(float);
                for (size_t g = 0; g < ng; g++) {
                    float sc;
                    memcpy(&sc, src + g * sizeof(float), sizeof sc);
                    size_t c0 = g * FP8_GROUP, len = hidden - c0 < FP8_GROUP ? hidden - c0 : FP8_GROUP;
                    mx_quant_fp8_decode_fast(q + c0, len, sc, f + c0);
                }
                for (size_t hh = 0; hh < hidden; hh++)
                    dst[hh] = mxi_bf16_from_f32(f[hh]);
#endif
            }
        }
    }
    b.src_token_off[n_ranks] = t;
    b.src_assign_off[n_ranks] = a;
    free(f);
    *batch_p = b;
    return MX_OK;
}

void mx_coord_recv_run_args(const mx_recv_batch_t *b, mx_combine_mode_t mode, uint16_t *out_bf16, float *out_f32,
                            int n_threads, mx_run_args_t *args_p)
{
    mx_run_args_t a;
    memset(&a, 0, sizeof a);
    a.n_tokens = b->n_tokens;
    a.x = b->x;
    a.n_assign = b->n_assign;
    a.tok = b->tok;
    a.expert = b->expert;
    a.weight = b->weight;
    a.mode = mode == MX_COMBINE_REDUCE ? MX_OUT_WEIGHTED_SUM : MX_OUT_PER_ASSIGNMENT;
    a.out_bf16 = mode == MX_COMBINE_REDUCE ? NULL : out_bf16;
    a.out_f32 = mode == MX_COMBINE_REDUCE ? out_f32 : NULL;
    a.n_threads = n_threads;
    *args_p = a;
}

void mx_coord_reply_sizes(const mx_recv_batch_t *b, mx_combine_mode_t mode, size_t *bytes_p, size_t *displs_p)
{
    for (int s = 0; s < b->n_ranks; s++) {
        if (mode == MX_COMBINE_REDUCE) {
            size_t row = b->hidden * sizeof(float);
            bytes_p[s] = (b->src_token_off[s + 1] - b->src_token_off[s]) * row;
            displs_p[s] = b->src_token_off[s] * row;
        } else {
            size_t row = b->hidden * sizeof(uint16_t);
            bytes_p[s] = (b->src_assign_off[s + 1] - b->src_assign_off[s]) * row;
            displs_p[s] = b->src_assign_off[s] * row;
        }
    }
}
