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

/* Makes every *ptrs[i] hold at least need[i] bytes (need >= 1): blocks that
 * are big enough are kept, the others replaced by fresh ones (contents not
 * kept), with some headroom since layers differ a little. All or nothing:
 * returns 0 (nothing changed) when out of memory. */
static int grow_all(void **const ptrs[], const size_t need[], int n, const mx_host_hooks_t *h0)
{
    void *fresh[16];
    int ok = 1;
    for (int i = 0; i < n; i++) {
        fresh[i] = NULL;
        if (*ptrs[i] && malloc_usable_size(*ptrs[i]) >= need[i])
            continue;
        fresh[i] = malloc(need[i] + need[i] / 4);
        ok &= fresh[i] != NULL;
    }
    for (int i = 0; i < n; i++) {
        if (!ok)
            free(fresh[i]);
        else if (fresh[i]) {
            if (i == 0 && h0 && *ptrs[0])
                h0->on_free(h0->ctx, *ptrs[0]);
            free(*ptrs[i]);
            *ptrs[i] = fresh[i];
            if (i == 0 && h0)
                h0->on_alloc(h0->ctx, fresh[0], malloc_usable_size(fresh[0]));
        }
    }
    return ok;
}

void mx_dispatch_plan_fini(mx_dispatch_plan_t *p)
{
    if (!p)
        return;
    free(p->rank_copy_off);
    free(p->rank_entry_off);
    free(p->copy_token);
    free(p->copy_entry_off);
    free(p->copy_first);
    free(p->entry_assign);
    free(p->entry_local_expert);
    free(p->entry_expert);
    free(p->entry_weight);
    free(p->entry_rank);
    free(p->token_entry_off);
    free(p->token_entry);
    free(p->work);
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

/* The plan into p, whose arrays (and scratch) are reused while big enough.
 * Every check comes before the first write into the plan's arrays: on
 * failure their contents are unchanged (p->work may have grown). */
static mx_status_t plan_build(const mx_routing_t *routing, const mx_placement_t *placement, int my_rank,
                              uint64_t global_token_offset, mx_dispatch_plan_t *p)
{
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

    /* scratch: items[N], titems[N], first copy per token [T] */
    const size_t nN = N ? N : 1, nT = T ? T : 1;
    size_t wb = nN * sizeof(plan_item_t) + nN * sizeof(tok_item_t) + nT * sizeof(int32_t);
    void **const wp[] = {&p->work};
    if (!grow_all(wp, &wb, 1, NULL))
        return mx_error_set(MX_ERR_NOMEM, "dispatch plan: cannot allocate %zu assignments", N);
    plan_item_t *items = p->work;
    tok_item_t *titems = (tok_item_t *)(items + nN);
    int32_t *first_of = (int32_t *)(titems + nN);
    for (size_t a = 0; a < N; a++) {
        int32_t t = routing->tok[a], e = routing->expert[a];
        if (t < 0 || (size_t)t >= T)
            return mx_error_set(MX_ERR_INVALID, "dispatch plan: assignment %zu names token %d (expected 0..%zu)", a, t,
                                T ? T - 1 : 0);
        if (e < 0 || e >= placement->n_experts)
            return mx_error_set(MX_ERR_INVALID, "dispatch plan: assignment %zu names expert %d (expected 0..%d)", a, e,
                                placement->n_experts - 1);
        int dest = mx_coord_placement_pick(placement, e, my_rank, global_token_offset + (uint64_t)t);
        int lexp = mx_coord_placement_local_index(placement, e, dest);
        if (dest < 0 || lexp < 0)
            return mx_error_set(MX_ERR_INTERNAL, "dispatch plan: expert %d has no usable replica", e);
        items[a] = (plan_item_t){dest, t, lexp, (int32_t)a};
    }
    qsort(items, N, sizeof *items, item_cmp);
    /* a (token, expert) pair has one destination and local index: twice = adjacent */
    size_t n_copies = 0;
    for (size_t i = 0; i < N; i++) {
        const plan_item_t *it = &items[i], *pr = i ? &items[i - 1] : NULL;
        if (pr && it->dest == pr->dest && it->tok == pr->tok && it->lexp == pr->lexp)
            return mx_error_set(MX_ERR_INVALID, "dispatch plan: token %d is assigned expert %d twice", it->tok,
                                routing->expert[it->assign]);
        if (!pr || it->dest != pr->dest || it->tok != pr->tok)
            n_copies++;
    }
    const size_t nC = n_copies ? n_copies : 1;
    void **const arr[] = {(void **)&p->rank_copy_off,      (void **)&p->rank_entry_off,  (void **)&p->copy_token,
                          (void **)&p->copy_entry_off,     (void **)&p->copy_first,      (void **)&p->entry_assign,
                          (void **)&p->entry_local_expert, (void **)&p->entry_expert,    (void **)&p->entry_weight,
                          (void **)&p->entry_rank,         (void **)&p->token_entry_off, (void **)&p->token_entry};
    const size_t need[] = {((size_t)R + 1) * sizeof(size_t),
                           ((size_t)R + 1) * sizeof(size_t),
                           nC * sizeof(int32_t),
                           (n_copies + 1) * sizeof(size_t),
                           nC * sizeof(int32_t),
                           nN * sizeof(int32_t),
                           nN * sizeof(int32_t),
                           nN * sizeof(int32_t),
                           nN * sizeof(float),
                           nN * sizeof(int32_t),
                           (T + 1) * sizeof(size_t),
                           nN * sizeof(int32_t)};
    if (!grow_all(arr, need, (int)(sizeof need / sizeof need[0]), NULL))
        return mx_error_set(MX_ERR_NOMEM, "dispatch plan: cannot allocate %zu entries", N);

    p->n_ranks = R;
    p->my_rank = my_rank;
    p->n_tokens = T;
    p->n_entries = N;
    p->n_copies = n_copies;
    memset(p->rank_copy_off, 0, ((size_t)R + 1) * sizeof(size_t));
    memset(p->rank_entry_off, 0, ((size_t)R + 1) * sizeof(size_t));
    memset(p->token_entry_off, 0, (T + 1) * sizeof(size_t));
    for (size_t t = 0; t < T; t++)
        first_of[t] = -1;
    size_t c = 0;
    for (size_t i = 0; i < N; i++) {
        const plan_item_t *it = &items[i];
        if (i == 0 || it->dest != items[i - 1].dest || it->tok != items[i - 1].tok) {
            p->copy_token[c] = it->tok;
            p->copy_entry_off[c] = i;
            if (first_of[it->tok] < 0)
                first_of[it->tok] = (int32_t)c;
            p->copy_first[c] = first_of[it->tok];
            p->rank_copy_off[it->dest + 1]++;
            c++;
        }
        p->rank_entry_off[it->dest + 1]++;
        p->entry_assign[i] = it->assign;
        p->entry_local_expert[i] = it->lexp;
        p->entry_expert[i] = routing->expert[it->assign];
        p->entry_weight[i] = routing->weight[it->assign];
        p->entry_rank[i] = it->dest;
        titems[i] = (tok_item_t){it->tok, p->entry_expert[i], (int32_t)i};
    }
    p->copy_entry_off[n_copies] = N;
    for (int r = 0; r < R; r++) {
        p->rank_copy_off[r + 1] += p->rank_copy_off[r];
        p->rank_entry_off[r + 1] += p->rank_entry_off[r];
    }
    qsort(titems, N, sizeof *titems, tok_cmp);
    for (size_t i = 0; i < N; i++) {
        p->token_entry[i] = titems[i].entry;
        p->token_entry_off[titems[i].tok + 1]++;
    }
    for (size_t t = 0; t < T; t++)
        p->token_entry_off[t + 1] += p->token_entry_off[t];
    return MX_OK;
}

mx_status_t mx_coord_plan_build(const mx_routing_t *routing, const mx_placement_t *placement, int my_rank,
                                uint64_t global_token_offset, mx_dispatch_plan_t *plan_p)
{
    if (!routing || !placement || !plan_p)
        return mx_error_set(MX_ERR_INVALID, "dispatch plan: NULL argument");
    mx_dispatch_plan_t p;
    memset(&p, 0, sizeof p);
    mx_status_t st = plan_build(routing, placement, my_rank, global_token_offset, &p);
    if (st != MX_OK) {
        mx_dispatch_plan_fini(&p);
        return st;
    }
    *plan_p = p;
    return MX_OK;
}

mx_status_t mx_coord_plan_build_into(const mx_routing_t *routing, const mx_placement_t *placement, int my_rank,
                                     uint64_t global_token_offset, mx_dispatch_plan_t *plan_io)
{
    if (!routing || !placement || !plan_io)
        return mx_error_set(MX_ERR_INVALID, "dispatch plan: NULL argument");
    return plan_build(routing, placement, my_rank, global_token_offset, plan_io);
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

/* Where copy c's row goes: in the message to its destination rank, after that
 * message's header, counts and entries. */
static uint8_t *copy_row(const mx_dispatch_plan_t *plan, size_t c, uint8_t *const *dst, size_t row)
{
    int r = plan->entry_rank[plan->copy_entry_off[c]];
    size_t c0 = plan->rank_copy_off[r], nt = plan->rank_copy_off[r + 1] - c0;
    size_t ne = plan->rank_entry_off[r + 1] - plan->rank_entry_off[r];
    return dst[r] + meta_bytes(nt, ne) + (c - c0) * row;
}

#define PACK_STACK_GROUPS 512 /* FP8 scales of one row on the stack up to hidden 65536 */

/* Every message's header, then the rows: BF16 copied; FP8 quantized once per
 * token, into the row of its first copy (the fast quantizer, or the scalar one
 * through FP32: the same bytes), then copied to its other copies. OpenMP over
 * tokens and copies. Returns MX_ERR_NOMEM (nothing half-quantized is sent:
 * the caller fails the step) when a row's scratch cannot be allocated. */
static mx_status_t pack_rows(const mx_dispatch_plan_t *plan, const uint16_t *x, size_t hidden,
                             mx_dispatch_dtype_t dtype, uint8_t *const *dst, size_t row, int fast)
{
    for (int r = 0; r < plan->n_ranks; r++)
        if (plan->rank_copy_off[r + 1] > plan->rank_copy_off[r])
            write_meta(plan, r, dtype, hidden, row, dst[r]);
    const long long LNC = (long long)plan->n_copies;
    const size_t ng = (hidden + FP8_GROUP - 1) / FP8_GROUP;
    int oom = 0;
    if (dtype == MX_DISPATCH_BF16) {
#pragma omp parallel for schedule(static)
        for (long long c = 0; c < LNC; c++) {
            uint8_t *d = copy_row(plan, (size_t)c, dst, row);
            memcpy(d, x + (size_t)plan->copy_token[c] * hidden, hidden * sizeof(uint16_t));
            memset(d + hidden * sizeof(uint16_t), 0, row - hidden * sizeof(uint16_t));
        }
        return MX_OK;
    }
#ifdef MXEP_COORD_HAVE_QUANT
#pragma omp parallel reduction(| : oom)
    {
        float sc_stack[PACK_STACK_GROUPS];
        float *sc = ng <= PACK_STACK_GROUPS ? sc_stack : malloc(ng * sizeof(float));
        float *f = fast ? NULL : malloc(hidden * sizeof(float)); /* the scalar path's FP32 row */
        oom = !sc || (!fast && !f);
#pragma omp for schedule(static)
        for (long long c = 0; c < LNC; c++) {
            if (oom || plan->copy_first[c] != (int32_t)c)
                continue;
            const uint16_t *xt = x + (size_t)plan->copy_token[c] * hidden;
            uint8_t *d = copy_row(plan, (size_t)c, dst, row);
            /* cannot fail: non-NULL pointers, one row of hidden <= 2^30 */
            if (fast) {
                (void)mx_quant_fp8_group_dynamic_bf16_fast(xt, 1, hidden, FP8_GROUP, d + ng * sizeof(float), sc);
            } else {
                for (size_t h = 0; h < hidden; h++)
                    f[h] = mxi_bf16_to_f32(xt[h]);
                (void)mx_quant_fp8_group_dynamic(f, 1, hidden, FP8_GROUP, d + ng * sizeof(float), sc);
            }
            memcpy(d, sc, ng * sizeof(float));
            memset(d + ng * sizeof(float) + hidden, 0, row - ng * sizeof(float) - hidden);
        }
        /* (the implicit barrier: every first copy is written before the others copy it) */
#pragma omp for schedule(static)
        for (long long c = 0; c < LNC; c++) {
            int32_t c1 = plan->copy_first[c];
            if (c1 != (int32_t)c)
                memcpy(copy_row(plan, (size_t)c, dst, row), copy_row(plan, (size_t)c1, dst, row),
                       row);
        }
        if (sc != sc_stack)
            free(sc);
        free(f);
    }
#else
    (void)fast;
    (void)ng;
#endif
    return oom ? mx_error_set(MX_ERR_NOMEM, "dispatch pack: cannot allocate an FP8 row of %zu values", hidden) : MX_OK;
}

static mx_status_t pack_check(const mx_dispatch_plan_t *plan, const uint16_t *x, size_t hidden,
                              mx_dispatch_dtype_t dtype)
{
    if (dtype != MX_DISPATCH_BF16 && dtype != MX_DISPATCH_FP8)
        return mx_error_set(MX_ERR_INVALID, "dispatch pack: unknown dtype %d", (int)dtype);
    if (hidden == 0 || hidden > UINT32_MAX / 4)
        return mx_error_set(MX_ERR_INVALID, "dispatch pack: hidden size %zu (expected 1..2^30)", hidden);
    if (plan->n_copies > 0 && !x)
        return mx_error_set(MX_ERR_INVALID, "dispatch pack: NULL tokens");
#ifndef MXEP_COORD_HAVE_QUANT
    if (dtype == MX_DISPATCH_FP8)
        return mx_error_set(MX_ERR_UNSUPPORTED, "dispatch pack: FP8 needs quant/, which this build lacks");
#endif
    return MX_OK;
}

mx_status_t mx_coord_dispatch_pack_to(const mx_dispatch_plan_t *plan, const uint16_t *x, size_t hidden,
                                      mx_dispatch_dtype_t dtype, uint8_t *const *dst)
{
    if (!plan || !dst)
        return mx_error_set(MX_ERR_INVALID, "dispatch pack: NULL argument");
    mx_status_t st = pack_check(plan, x, hidden, dtype);
    if (st != MX_OK)
        return st;
    for (int r = 0; r < plan->n_ranks; r++)
        if (plan->rank_copy_off[r + 1] > plan->rank_copy_off[r] && !dst[r])
            return mx_error_set(MX_ERR_INVALID, "dispatch pack: no place for the message to rank %d", r);
    return pack_rows(plan, x, hidden, dtype, dst, mx_coord_wire_row_bytes(dtype, hidden), mxi_coord_fast());
}

mx_status_t mx_coord_dispatch_pack(const mx_dispatch_plan_t *plan, const uint16_t *x, size_t hidden,
                                   mx_dispatch_dtype_t dtype, void *send, const size_t *displs)
{
    if (!plan || !displs || (plan->n_copies > 0 && (!x || !send)))
        return mx_error_set(MX_ERR_INVALID, "dispatch pack: NULL argument");
    mx_status_t st = pack_check(plan, x, hidden, dtype);
    if (st != MX_OK)
        return st;
    uint8_t **dst = malloc((size_t)(plan->n_ranks > 0 ? plan->n_ranks : 1) * sizeof *dst);
    if (!dst)
        return mx_error_set(MX_ERR_NOMEM, "dispatch pack: out of memory");
    for (int r = 0; r < plan->n_ranks; r++)
        dst[r] = (uint8_t *)send + displs[r];
    st = pack_rows(plan, x, hidden, dtype, dst, mx_coord_wire_row_bytes(dtype, hidden), mxi_coord_fast());
    free(dst);
    return st;
}

/* ---------------------------------------------------------------- worker side */

void mx_recv_batch_fini(mx_recv_batch_t *b)
{
    if (!b)
        return;
    if (b->x && b->x_hooks)
        b->x_hooks->on_free(b->x_hooks->ctx, b->x);
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

/* One received row decoded into dst (BF16 copied; FP8: value * scale rounded
 * to BF16, as FP32 then BF16). The fast path sends a group with a finite
 * scale through quant's fused decoder, which then equals decode +
 * mxi_bf16_from_f32 bit for bit (the products are never NaN except for a NaN
 * code, whose canonical NaN both roundings map alike); a non-finite scale
 * from the wire keeps the two-step rounding (payload NaNs). */
static void unpack_row(const uint8_t *src, mx_dispatch_dtype_t dtype, size_t hidden, uint16_t *dst, int fast)
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
        if (fast && isfinite(sc)) {
            (void)mx_quant_fp8_decode_bf16_fast(q + c0, len, sc, dst + c0);
        } else {
            float f[FP8_GROUP];
            (void)mx_quant_fp8_decode_fast(q + c0, len, sc, f);
            for (size_t i = 0; i < len; i++)
                dst[c0 + i] = mxi_bf16_from_f32(f[i]);
        }
    }
#else
    (void)fast;
#endif
}

/* The source of received row tt: the last s with src_token_off[s] <= tt
 * (src_token_off ascending, [n_ranks] = every row). */
static int row_source(const size_t *off, int n_ranks, size_t tt)
{
    int lo = 0, hi = n_ranks - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (off[mid] <= tt)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* Checks every message, then decodes them into b, whose arrays are reused
 * while big enough. Every check and allocation comes before the first write:
 * on failure *b is unchanged. */
static mx_status_t unpack(const void *recv, const size_t *bytes, const size_t *displs, int n_ranks, size_t hidden,
                          int n_local_experts, mx_recv_batch_t *b, int fast)
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
    void **const arr[] = {(void **)&b->x,      (void **)&b->tok,           (void **)&b->expert,
                          (void **)&b->weight, (void **)&b->src_token_off, (void **)&b->src_assign_off};
    const size_t need[] = {(nt ? nt : 1) * hidden * sizeof(uint16_t), (na ? na : 1) * sizeof(int32_t),
                           (na ? na : 1) * sizeof(int32_t),           (na ? na : 1) * sizeof(float),
                           ((size_t)n_ranks + 1) * sizeof(size_t),    ((size_t)n_ranks + 1) * sizeof(size_t)};
    if (!grow_all(arr, need, 6, b->x_hooks))
        return mx_error_set(MX_ERR_NOMEM, "dispatch unpack: cannot allocate %zu tokens x %zu", nt, hidden);
    b->n_ranks = n_ranks;
    b->hidden = hidden;
    b->n_tokens = nt;
    b->n_assign = na;
    /* the assignments, in message order */
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
        }
    }
    b->src_token_off[n_ranks] = t;
    b->src_assign_off[n_ranks] = a;
    /* the rows, decoded in parallel */
    const long long LT = (long long)nt;
#pragma omp parallel for schedule(static)
    for (long long tt = 0; tt < LT; tt++) {
        int s = row_source(b->src_token_off, n_ranks, (size_t)tt);
        const uint8_t *m = (const uint8_t *)recv + displs[s];
        mx_wire_header_t hs;
        memcpy(&hs, m, sizeof hs);
        const uint8_t *src =
            m + meta_bytes(hs.n_tokens, hs.n_entries) + ((size_t)tt - b->src_token_off[s]) * hs.row_bytes;
        unpack_row(src, (mx_dispatch_dtype_t)hs.dtype, hidden, b->x + (size_t)tt * hidden, fast);
    }
    return MX_OK;
}

mx_status_t mx_coord_recv_unpack_into(const void *recv, const size_t *bytes, const size_t *displs, int n_ranks,
                                      size_t hidden, int n_local_experts, mx_recv_batch_t *batch_io)
{
    if (!bytes || !displs || !batch_io || n_ranks < 1)
        return mx_error_set(MX_ERR_INVALID, "dispatch unpack: NULL argument or %d ranks", n_ranks);
    if (hidden == 0)
        return mx_error_set(MX_ERR_INVALID, "dispatch unpack: hidden size 0");
    return unpack(recv, bytes, displs, n_ranks, hidden, n_local_experts, batch_io, mxi_coord_fast());
}

mx_status_t mx_coord_recv_unpack(const void *recv, const size_t *bytes, const size_t *displs, int n_ranks,
                                 size_t hidden, int n_local_experts, mx_recv_batch_t *batch_p)
{
    if (!bytes || !displs || !batch_p || n_ranks < 1)
        return mx_error_set(MX_ERR_INVALID, "dispatch unpack: NULL argument or %d ranks", n_ranks);
    if (hidden == 0)
        return mx_error_set(MX_ERR_INVALID, "dispatch unpack: hidden size 0");
    mx_recv_batch_t b;
    memset(&b, 0, sizeof b);
    mx_status_t st = unpack(recv, bytes, displs, n_ranks, hidden, n_local_experts, &b, mxi_coord_fast());
    if (st != MX_OK)
        return st; /* nothing was allocated */
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
