#include "mxep/moe.h"

#include <stdarg.h>
#include <stdio.h>
#include <strings.h>

static const char *const scheme_names[MX_SCHEME_COUNT] = {"W16A16", "W4A16", "W4A8", "W8A16", "W8A8"};
static const char *const act_names[MX_ACT_COUNT] = {"silu", "swiglu_oai", "gelu_tanh"};
static const char *const router_names[MX_ROUTER_COUNT] = {"topk_softmax", "softmax_topk", "sigmoid_grouped",
                                                          "expert_choice", "gemma4"};

const char *mx_scheme_name(mx_scheme_t s)
{
    return (unsigned)s < MX_SCHEME_COUNT ? scheme_names[s] : "?";
}
mx_wfmt_t mx_scheme_wfmt(mx_scheme_t s)
{
    return s == MX_SCHEME_W16A16 ? MX_WFMT_BF16 : s == MX_SCHEME_W4A16 || s == MX_SCHEME_W4A8 ? MX_WFMT_MXFP4 : MX_WFMT_FP8;
}
const char *mx_wfmt_name(mx_wfmt_t f)
{
    return f == MX_WFMT_BF16 ? "BF16" : f == MX_WFMT_MXFP4 ? "MXFP4" : f == MX_WFMT_FP8 ? "FP8" : "?";
}
const char *mx_act_name(mx_act_t a)
{
    return (unsigned)a < MX_ACT_COUNT ? act_names[a] : "?";
}
const char *mx_router_name(mx_router_kind_t k)
{
    return (unsigned)k < MX_ROUTER_COUNT ? router_names[k] : "?";
}

static int lookup(const char *text, const char *const *names, int n)
{
    if (!text)
        return -1;
    for (int i = 0; i < n; i++)
        if (strcasecmp(text, names[i]) == 0)
            return i;
    return -1;
}

mx_status_t mx_scheme_parse(const char *text, mx_scheme_t *scheme_p)
{
    int i = lookup(text, scheme_names, MX_SCHEME_COUNT);
    if (i < 0)
        return mx_error_set(MX_ERR_INVALID, "scheme '%s': expected W16A16, W4A16, W4A8, W8A16 or W8A8",
                            text ? text : "(null)");
    *scheme_p = (mx_scheme_t)i;
    return MX_OK;
}

mx_status_t mx_act_parse(const char *text, mx_act_t *act_p)
{
    int i = lookup(text, act_names, MX_ACT_COUNT);
    if (i < 0)
        return mx_error_set(MX_ERR_INVALID, "activation '%s': expected silu, swiglu_oai or gelu_tanh",
                            text ? text : "(null)");
    *act_p = (mx_act_t)i;
    return MX_OK;
}

mx_status_t mx_router_parse(const char *text, mx_router_kind_t *kind_p)
{
    int i = lookup(text, router_names, MX_ROUTER_COUNT);
    if (i < 0)
        return mx_error_set(
            MX_ERR_INVALID,
            "router '%s': expected topk_softmax, softmax_topk, sigmoid_grouped, expert_choice or gemma4",
            text ? text : "(null)");
    *kind_p = (mx_router_kind_t)i;
    return MX_OK;
}

static int decline(char *reason, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int decline(char *reason, size_t len, const char *fmt, ...)
{
    if (reason && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(reason, len, fmt, ap);
        va_end(ap);
    }
    return 0;
}

int mx_moe_desc_check(const mx_moe_desc_t *d, size_t max_dim, char *reason, size_t reason_len)
{
    if (!d)
        return decline(reason, reason_len, "no layer description");
    if ((unsigned)d->scheme >= MX_SCHEME_COUNT)
        return decline(reason, reason_len, "unknown scheme %d", (int)d->scheme);
    if ((unsigned)d->act >= MX_ACT_COUNT)
        return decline(reason, reason_len, "unknown activation %d", (int)d->act);
    if (d->order != MX_GATEUP_HALVES && d->order != MX_GATEUP_INTERLEAVED)
        return decline(reason, reason_len, "unknown gate/up order %d", (int)d->order);
    if (d->hidden == 0 || d->inter == 0 || d->hidden > max_dim || d->inter > max_dim)
        return decline(reason, reason_len, "H=%zu I=%zu: expected 1..%zu each", d->hidden, d->inter, max_dim);
    if ((d->scheme == MX_SCHEME_W4A16 || d->scheme == MX_SCHEME_W4A8) && (d->hidden % 32 || d->inter % 32))
        return decline(reason, reason_len, "%s needs H and I multiples of 32 (MXFP4 blocks), got H=%zu I=%zu",
                       mx_scheme_name(d->scheme), d->hidden, d->inter);
    if (d->scheme == MX_SCHEME_W8A8 && d->act_group != 0 && d->act_group != 128)
        return decline(reason, reason_len, "W8A8 activation groups of %d (act_group %d): expected 0 (per token) or 128",
                       d->act_group, d->act_group);
    if (d->act == MX_ACT_SWIGLU_OAI && !(d->swiglu_limit > 0.0f && d->swiglu_alpha > 0.0f))
        return decline(reason, reason_len, "swiglu_oai needs swiglu_limit > 0 and swiglu_alpha > 0 (got %g, %g)",
                       (double)d->swiglu_limit, (double)d->swiglu_alpha);
    return 1;
}
