#include "mxep/moe.h"

#include <strings.h>

static const char *const scheme_names[MX_SCHEME_COUNT] = {"W16A16", "W4A16", "W4A8", "W8A16", "W8A8"};
static const char *const act_names[MX_ACT_COUNT] = {"silu", "swiglu_oai", "gelu_tanh"};
static const char *const router_names[MX_ROUTER_COUNT] = {"topk_softmax", "softmax_topk", "sigmoid_grouped",
                                                          "expert_choice", "gemma4"};

const char *mx_scheme_name(mx_scheme_t s) { return (unsigned)s < MX_SCHEME_COUNT ? scheme_names[s] : "?"; }
const char *mx_act_name(mx_act_t a) { return (unsigned)a < MX_ACT_COUNT ? act_names[a] : "?"; }
const char *mx_router_name(mx_router_kind_t k) { return (unsigned)k < MX_ROUTER_COUNT ? router_names[k] : "?"; }

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
        return mx_error_set(MX_ERR_INVALID,
                            "router '%s': expected topk_softmax, softmax_topk, sigmoid_grouped or expert_choice",
                            text ? text : "(null)");
    *kind_p = (mx_router_kind_t)i;
    return MX_OK;
}
