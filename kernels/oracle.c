/* mxep kernels: the oracle. Picks, for one layer description, the backend
 * that runs it here (ARCHITECTURE.md, "The oracle").
 *
 * Selection text (the `forced` argument, else $MXEP_BACKEND), Open MPI style:
 *   "cpu"          force one backend: if it cannot run, that is an error;
 *   "cpu,cuda"     only these, the best of them wins; none usable is an error;
 *   "^cuda,hip"    any backend except these.
 * Names are case-insensitive. A name that is neither in the table nor one of
 * the backend names mxep knows (ref, cpu, cuda, hip, ze) is MX_ERR_INVALID. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mxep/kernels.h"
#include "mxep/log.h"

#define SEL_MAX 16
#define SEL_NAME_MAX 32
#define SEL_TEXT_MAX 256

typedef struct {
    int active;  /* a selection was given */
    int exclude; /* "^a,b" */
    int n;
    char names[SEL_MAX][SEL_NAME_MAX];
    char text[SEL_TEXT_MAX]; /* as given, for messages */
    const char *source;      /* "argument" or "MXEP_BACKEND" */
} selection_t;

typedef enum { CAND_EXCLUDED = 0, CAND_NO_DEVICE, CAND_DECLINED, CAND_USABLE } cand_state_t;

typedef struct {
    cand_state_t state;
    mx_device_info_t info;
    char reason[MX_REASON_MAX];
} candidate_t;

static const char *const known_names[] = {"ref", "cpu", "cuda", "hip", "ze"};

static int name_in_table(const mx_backend_ops_t *const *table, int count, const char *name)
{
    for (int i = 0; i < count; i++)
        if (strcasecmp(table[i]->name, name) == 0)
            return 1;
    return 0;
}

static int name_known(const char *name)
{
    for (size_t i = 0; i < sizeof(known_names) / sizeof(known_names[0]); i++)
        if (strcasecmp(known_names[i], name) == 0)
            return 1;
    return 0;
}

static void table_names(const mx_backend_ops_t *const *table, int count, char *buf, size_t len)
{
    size_t pos = 0;
    buf[0] = '\0';
    for (int i = 0; i < count && pos < len; i++) {
        int w = snprintf(buf + pos, len - pos, "%s%s", i ? ", " : "", table[i]->name);
        if (w < 0)
            break;
        pos += (size_t)w;
    }
}

static mx_status_t selection_parse(const char *text, const char *source, const mx_backend_ops_t *const *table,
                                   int count, selection_t *sel)
{
    memset(sel, 0, sizeof(*sel));
    sel->source = source;
    if (!text)
        return MX_OK;
    const char *p = text;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '\0')
        return MX_OK;
    if (strlen(text) >= SEL_TEXT_MAX)
        return mx_error_set(MX_ERR_INVALID, "backend selection %s='%.40s...': longer than %d characters", source, text,
                            SEL_TEXT_MAX - 1);
    snprintf(sel->text, sizeof(sel->text), "%s", text);
    sel->active = 1;
    if (*p == '^') {
        sel->exclude = 1;
        p++;
    }
    for (;;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        const char *s = p;
        while (n && (*s == ' ' || *s == '\t')) {
            s++;
            n--;
        }
        while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
            n--;
        if (n == 0)
            return mx_error_set(MX_ERR_INVALID,
                                "backend selection %s='%s': empty name; expected NAME[,NAME...] or ^NAME[,NAME...]",
                                source, text);
        if (n >= SEL_NAME_MAX || sel->n == SEL_MAX)
            return mx_error_set(MX_ERR_INVALID, "backend selection %s='%s': too many or too long names", source, text);
        char name[SEL_NAME_MAX];
        memcpy(name, s, n);
        name[n] = '\0';
        if (name[0] == '^')
            return mx_error_set(MX_ERR_INVALID,
                                "backend selection %s='%s': '^' may only start the list (it excludes every name)",
                                source, text);
        if (!name_in_table(table, count, name) && !name_known(name)) {
            char have[SEL_TEXT_MAX];
            table_names(table, count, have, sizeof(have));
            return mx_error_set(MX_ERR_INVALID,
                                "backend selection %s='%s': unknown backend '%s'; expected one of ref, cpu, cuda, "
                                "hip, ze (this build has: %s)",
                                source, text, name, have);
        }
        snprintf(sel->names[sel->n++], SEL_NAME_MAX, "%s", name);
        if (!end)
            break;
        p = end + 1;
    }
    return MX_OK;
}

static int selection_names(const selection_t *sel, const char *name)
{
    for (int i = 0; i < sel->n; i++)
        if (strcasecmp(sel->names[i], name) == 0)
            return 1;
    return 0;
}

static void appendf(char *buf, size_t len, size_t *pos, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
static void appendf(char *buf, size_t len, size_t *pos, const char *fmt, ...)
{
    if (!buf || len == 0 || *pos >= len - 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(buf + *pos, len - *pos, fmt, ap);
    va_end(ap);
    if (w < 0)
        return;
    *pos += (size_t)w;
    if (*pos > len - 1)
        *pos = len - 1;
}

static void desc_text(const mx_moe_desc_t *d, char *buf, size_t len)
{
    snprintf(buf, len, "%s %s (%s gate/up) H=%zu I=%zu", mx_scheme_name(d->scheme), mx_act_name(d->act),
             d->order == MX_GATEUP_HALVES        ? "halves"
             : d->order == MX_GATEUP_INTERLEAVED ? "interleaved"
                                                 : "?",
             d->hidden, d->inter);
}

static const char *state_word(cand_state_t s)
{
    switch (s) {
    case CAND_EXCLUDED:
        return "excluded";
    case CAND_NO_DEVICE:
        return "no device";
    case CAND_DECLINED:
        return "declined";
    case CAND_USABLE:
        return "usable";
    }
    return "?";
}

/* "cpu: declined (reason); cuda: no device (reason)" for the candidates in `mask` states. */
static void reasons_text(const mx_backend_ops_t *const *table, int count, const candidate_t *c, int skip, char *buf,
                         size_t len)
{
    size_t pos = 0;
    buf[0] = '\0';
    int any = 0;
    for (int i = 0; i < count; i++) {
        if (i == skip || c[i].state == CAND_USABLE)
            continue;
        appendf(buf, len, &pos, "%s%s: %s (%s)", any ? "; " : "", table[i]->name, state_word(c[i].state), c[i].reason);
        any = 1;
    }
    if (!any)
        appendf(buf, len, &pos, "no other backend is compiled in");
}

mx_status_t mx_oracle_select_from(const mx_backend_ops_t *const *table, int count, const mx_moe_desc_t *desc,
                                  const char *forced, char *report, size_t report_len, mx_oracle_choice_t *choice_p)
{
    if (report && report_len)
        report[0] = '\0';
    if (!table || count <= 0)
        return mx_error_set(MX_ERR_INVALID, "oracle: empty backend table (count %d); expected at least ref", count);
    if (!desc || !choice_p)
        return mx_error_set(MX_ERR_INVALID, "oracle: %s is NULL", !desc ? "layer description" : "choice_p");
    for (int i = 0; i < count; i++)
        if (!table[i] || !table[i]->name || !table[i]->probe || !table[i]->supports)
            return mx_error_set(MX_ERR_INVALID, "oracle: backend table entry %d is incomplete (NULL %s)", i,
                                !table[i]          ? "entry"
                                : !table[i]->name  ? "name"
                                : !table[i]->probe ? "probe"
                                                   : "supports");

    const char *source = "argument";
    if (!forced || !*forced) {
        forced = getenv("MXEP_BACKEND");
        source = "MXEP_BACKEND";
    }
    selection_t sel;
    mx_status_t st = selection_parse(forced, source, table, count, &sel);
    if (st != MX_OK)
        return st;

    char what[160];
    desc_text(desc, what, sizeof(what));

    candidate_t *cand = calloc((size_t)count, sizeof(*cand));
    if (!cand)
        return mx_error_set(MX_ERR_NOMEM, "oracle: cannot allocate %d candidates", count);

    int best = -1, n_usable = 0;
    for (int i = 0; i < count; i++) {
        const mx_backend_ops_t *b = table[i];
        candidate_t *c = &cand[i];
        c->info.device_index = -1;
        if (sel.active && (sel.exclude ? selection_names(&sel, b->name) : !selection_names(&sel, b->name))) {
            c->state = CAND_EXCLUDED;
            size_t rp = 0;
            appendf(c->reason, sizeof(c->reason), &rp, "%s by %s=%s", sel.exclude ? "excluded" : "not selected",
                    sel.source, sel.text);
        } else {
            mx_error_clear();
            mx_status_t ps = b->probe(&c->info);
            if (ps != MX_OK && ps != MX_ERR_NO_DEVICE) {
                /* not "no device" but a setting this machine cannot honour (MXEP_CPU_ISA=avx2x, or a
                 * level the CPU lacks; MXEP_CUDA_DEVICE past the GPUs): an error, not a quiet fall back
                 * to another backend (ref runs some 45x slower) */
                st = mx_error_prefix(ps, "backend %s: ", b->name);
                free(cand);
                return st;
            }
            if (ps != MX_OK) {
                c->state = CAND_NO_DEVICE;
                const char *d = mx_error_detail();
                snprintf(c->reason, sizeof(c->reason), "%s", (d && *d) ? d : mx_status_str(ps));
                memset(&c->info, 0, sizeof(c->info));
                c->info.device_index = -1;
            } else {
                char r[MX_REASON_MAX] = "";
                if (!b->supports(&c->info, desc, r, sizeof(r))) {
                    c->state = CAND_DECLINED;
                    snprintf(c->reason, sizeof(c->reason), "%s", r[0] ? r : "declined without a reason");
                } else {
                    c->state = CAND_USABLE;
                    snprintf(c->reason, sizeof(c->reason), "priority %d, %s: %s", b->priority,
                             c->info.isa[0] ? c->info.isa : "?", c->info.name[0] ? c->info.name : "?");
                    n_usable++;
                    if (best < 0 || b->priority > table[best]->priority)
                        best = i;
                }
            }
        }
        MX_LOG_D("kernels", "oracle for %s: %s: %s (%s)", what, b->name, state_word(c->state), c->reason);
    }

    for (int i = 0; i < count; i++) {
        size_t pos = report ? strlen(report) : 0;
        appendf(report, report_len, &pos, "%s: %s (%s)\n", table[i]->name,
                i == best ? "chosen" : state_word(cand[i].state), cand[i].reason);
    }

    if (best < 0) {
        char why[1024];
        reasons_text(table, count, cand, -1, why, sizeof(why));
        if (sel.active && !sel.exclude && sel.n == 1) {
            int i;
            for (i = 0; i < count; i++)
                if (strcasecmp(table[i]->name, sel.names[0]) == 0)
                    break;
            if (i == count) {
                char have[SEL_TEXT_MAX];
                table_names(table, count, have, sizeof(have));
                st = mx_error_set(MX_ERR_UNSUPPORTED,
                                  "backend '%s' (forced by %s) is not compiled into this build (it has: %s)",
                                  sel.names[0], sel.source, have);
            } else {
                st = mx_error_set(cand[i].state == CAND_NO_DEVICE ? MX_ERR_NO_DEVICE : MX_ERR_UNSUPPORTED,
                                  "backend '%s' (forced by %s) cannot run %s: %s (%s)", table[i]->name, sel.source,
                                  what, state_word(cand[i].state), cand[i].reason);
            }
        } else {
            int all_no_device = 1, any = 0;
            for (int i = 0; i < count; i++) {
                if (cand[i].state == CAND_EXCLUDED)
                    continue;
                any = 1;
                if (cand[i].state != CAND_NO_DEVICE)
                    all_no_device = 0;
            }
            st = mx_error_set(any && all_no_device ? MX_ERR_NO_DEVICE : MX_ERR_UNSUPPORTED, "no backend can run %s: %s",
                              what, why);
            if (sel.active)
                st = mx_error_prefix(st, "backend selection %s='%s': ", sel.source, sel.text);
        }
        free(cand);
        return st;
    }

    const mx_backend_ops_t *chosen = table[best];
    int forced_this = sel.active && !sel.exclude && selection_names(&sel, chosen->name);
    if (strcasecmp(chosen->name, "ref") == 0 && !forced_this) {
        char why[1024];
        reasons_text(table, count, cand, best, why, sizeof(why));
        MX_LOG_W("kernels", "no native backend fits %s; running the scalar ref backend (slow). %s", what, why);
    }
    MX_LOG_D("kernels", "oracle for %s: chose %s (%s)", what, chosen->name, cand[best].reason);

    choice_p->backend = chosen;
    choice_p->device = cand[best].info;
    size_t rp = 0;
    if (forced_this && sel.n == 1)
        appendf(choice_p->reason, sizeof(choice_p->reason), &rp, "forced by %s=%s; %s", sel.source, sel.text,
                cand[best].reason);
    else
        appendf(choice_p->reason, sizeof(choice_p->reason), &rp, "highest priority of %d usable; %s", n_usable,
                cand[best].reason);
    free(cand);
    return MX_OK;
}

mx_status_t mx_oracle_select(const mx_moe_desc_t *desc, const char *forced, char *report, size_t report_len,
                             mx_oracle_choice_t *choice_p)
{
    int count = 0;
    const mx_backend_ops_t *const *table = mx_backend_registry(&count);
    return mx_oracle_select_from(table, count, desc, forced, report, report_len, choice_p);
}
