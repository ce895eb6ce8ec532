/* mxep serve: the front-door loop that rank 0 runs (NN_REP socket). */
#include <errno.h>
#include <limits.h>
#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mxep/log.h"
#include "mxep/serve.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the serve payload is read in place: little-endian hosts only (docs/PROTOCOL.md)"
#endif

struct mx_serve {
    mx_serve_config_t cfg;
    char *url;
    int sock;
    atomic_int stop;
    mx_serve_stats_t stats;
    uint16_t *x;   /* [max_tokens x hidden] BF16 input */
    uint16_t *out; /* [max_tokens x hidden] BF16 output */
};

static volatile sig_atomic_t g_signal_received;

static void on_signal(int sig)
{
    (void)sig;
    g_signal_received = 1;
}

mx_status_t mx_serve_signals_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) != 0 || sigaction(SIGINT, &sa, NULL) != 0)
        return mx_error_set(MX_ERR_INTERNAL, "serve: cannot install the SIGTERM/SIGINT handlers: %s", strerror(errno));
    return MX_OK;
}

int mx_serve_signal_received(void)
{
    return g_signal_received != 0;
}

mx_status_t mx_serve_create(const mx_serve_config_t *config, mx_serve_h *server_p)
{
    if (!config || !server_p)
        return mx_error_set(MX_ERR_INVALID, "mx_serve_create: NULL argument");
    if (!config->url || !*config->url)
        return mx_error_set(MX_ERR_INVALID, "serve: no listen address (expected e.g. tcp://127.0.0.1:5555)");
    if (!config->compute)
        return mx_error_set(MX_ERR_INVALID, "serve: no compute callback");
    if (config->hidden < 1 || config->hidden > MX_SERVE_WIRE_MAX_HIDDEN)
        return mx_error_set(MX_ERR_INVALID, "serve: hidden %zu: expected 1..%u", config->hidden,
                            MX_SERVE_WIRE_MAX_HIDDEN);
    if (config->n_layers < 1 || config->first_layer < 0)
        return mx_error_set(MX_ERR_INVALID, "serve: layers %d..+%d: expected first_layer >= 0 and n_layers >= 1",
                            config->first_layer, config->n_layers);
    if (config->max_tokens > MX_SERVE_WIRE_MAX_TOKENS)
        return mx_error_set(MX_ERR_INVALID, "serve: max_tokens %zu: expected at most %u", config->max_tokens,
                            MX_SERVE_WIRE_MAX_TOKENS);
    if (config->poll_ms < 0)
        return mx_error_set(MX_ERR_INVALID, "serve: poll_ms %d: expected >= 0", config->poll_ms);
    struct mx_serve *s = calloc(1, sizeof *s);
    if (!s)
        return mx_error_set(MX_ERR_NOMEM, "serve: out of memory");
    s->cfg = *config;
    if (!s->cfg.max_tokens)
        s->cfg.max_tokens = 4096;
    if (!s->cfg.poll_ms)
        s->cfg.poll_ms = 100;
    s->sock = -1;
    mx_status_t st = MX_OK;
    s->url = strdup(config->url);
    size_t elems = s->cfg.max_tokens * s->cfg.hidden;
    s->x = malloc(elems * sizeof(uint16_t));
    s->out = malloc(elems * sizeof(uint16_t));
    if (!s->url || !s->x || !s->out) {
        st = mx_error_set(MX_ERR_NOMEM, "serve: cannot allocate buffers for %zu tokens x %zu hidden", s->cfg.max_tokens,
                          s->cfg.hidden);
        goto fail;
    }
    s->cfg.url = s->url;
    s->sock = nn_socket(AF_SP, NN_REP);
    if (s->sock < 0) {
        st = mx_error_set(MX_ERR_TRANSPORT, "serve: nn_socket(NN_REP): %s", nn_strerror(nn_errno()));
        goto fail;
    }
    /* Messages larger than the largest valid request (plus slack, so that a
     * request a little too large still gets its error reply) are cut off by
     * the transport: nanomsg closes that connection. */
    /* (the transport's limit counts the REQ socket's 4-byte request id in front of the
     * payload, and 4 more bytes per nanomsg device on the way: room for 16) */
    size_t maxmsg = MX_SERVE_WIRE_REQUEST_HEADER_BYTES + elems * 4 + 65536 + 64;
    int rcvmax = maxmsg > (size_t)INT_MAX ? -1 : (int)maxmsg;
    int linger = 1000;
    if (nn_setsockopt(s->sock, NN_SOL_SOCKET, NN_RCVMAXSIZE, &rcvmax, sizeof rcvmax) < 0 ||
        nn_setsockopt(s->sock, NN_SOL_SOCKET, NN_LINGER, &linger, sizeof linger) < 0) {
        st = mx_error_set(MX_ERR_TRANSPORT, "serve: nn_setsockopt: %s", nn_strerror(nn_errno()));
        goto fail;
    }
    if (nn_bind(s->sock, s->url) < 0) {
        st = mx_error_set(MX_ERR_TRANSPORT,
                          "serve: cannot listen on '%s': %s (expected a free nanomsg address such "
                          "as tcp://127.0.0.1:5555 or ipc:///tmp/mxep.sock)",
                          s->url, nn_strerror(nn_errno()));
        goto fail;
    }
    atomic_init(&s->stop, 0);
    MX_LOG_I("serve", "listening on %s (hidden %zu, layers %d..%d, at most %zu tokens per request; pid %ld)", s->url,
             s->cfg.hidden, s->cfg.first_layer, s->cfg.first_layer + s->cfg.n_layers - 1, s->cfg.max_tokens,
             (long)getpid());
    *server_p = s;
    return MX_OK;
fail:
    if (s->sock >= 0)
        nn_close(s->sock);
    free(s->url);
    free(s->x);
    free(s->out);
    free(s);
    return st;
}

void mx_serve_stop(mx_serve_h s)
{
    if (s)
        atomic_store(&s->stop, 1);
}

void mx_serve_stats(mx_serve_h s, mx_serve_stats_t *stats_p)
{
    if (s && stats_p)
        *stats_p = s->stats;
}

void mx_serve_destroy(mx_serve_h s)
{
    if (!s)
        return;
    nn_close(s->sock);
    free(s->url);
    free(s->x);
    free(s->out);
    free(s);
}

/* Sends one reply (error when status != MX_OK). Returns 0, or -1 when the
 * socket could not take it (counted as dropped). */
static int send_reply(struct mx_serve *s, uint64_t id, mx_status_t status, const char *message,
                      const mx_serve_wire_request_t *req)
{
    mx_serve_wire_reply_t rep = {0};
    rep.request_id = id;
    rep.status = status;
    rep.message = message ? message : "";
    rep.message_bytes = strlen(rep.message);
    if (status == MX_OK) {
        rep.n_tokens = req->n_tokens;
        rep.hidden = req->hidden;
        rep.payload = s->out;
        rep.payload_bytes = (size_t)req->n_tokens * req->hidden * 2;
    }
    size_t size = mx_serve_wire_reply_size(rep.message_bytes, rep.n_tokens, rep.hidden), written = 0;
    void *msg = nn_allocmsg(size, 0);
    if (!msg) {
        s->stats.dropped++;
        MX_LOG_E("serve", "request %llu: cannot allocate a reply of %zu bytes", (unsigned long long)id, size);
        return -1;
    }
    if (mx_serve_wire_reply_encode(&rep, msg, size, &written) != MX_OK) {
        nn_freemsg(msg);
        s->stats.dropped++;
        MX_LOG_E("serve", "request %llu: cannot encode the reply: %s", (unsigned long long)id, mx_error_detail());
        return -1;
    }
    if (nn_send(s->sock, &msg, NN_MSG, NN_DONTWAIT) < 0) {
        int e = nn_errno();
        nn_freemsg(msg);
        s->stats.dropped++;
        MX_LOG_W("serve", "request %llu: reply not sent: %s", (unsigned long long)id, nn_strerror(e));
        return -1;
    }
    if (status == MX_OK)
        s->stats.ok++;
    else
        s->stats.errors++;
    return 0;
}

static void handle(struct mx_serve *s, const void *msg, size_t len)
{
    uint64_t id = 0;
    mx_serve_wire_request_t req;
    s->stats.requests++;
    mx_error_clear();
    mx_status_t st = mx_serve_wire_request_decode(
        msg, len, s->cfg.max_tokens, s->cfg.hidden > MX_SERVE_WIRE_MAX_HIDDEN ? 0 : MX_SERVE_WIRE_MAX_HIDDEN, &req,
        &id);
    if (st == MX_OK && req.hidden != s->cfg.hidden)
        st = mx_error_set(MX_ERR_INVALID, "hidden %u: this model has hidden %zu", req.hidden, s->cfg.hidden);
    if (st == MX_OK && (req.layer < (uint32_t)s->cfg.first_layer ||
                        req.layer - (uint32_t)s->cfg.first_layer >= (uint32_t)s->cfg.n_layers))
        st = mx_error_set(MX_ERR_INVALID, "layer %u: this server has layers %d..%d", req.layer, s->cfg.first_layer,
                          s->cfg.first_layer + s->cfg.n_layers - 1);
    if (st != MX_OK) {
        char detail[MX_ERROR_DETAIL_MAX];
        snprintf(detail, sizeof detail, "%s", mx_error_detail());
        MX_LOG_W("serve", "request %llu refused: %s: %s", (unsigned long long)id, mx_status_str(st), detail);
        send_reply(s, id, st, detail, NULL);
        return;
    }
    size_t n = (size_t)req.n_tokens * req.hidden;
    if (req.dtype == MX_SERVE_WIRE_BF16) {
        memcpy(s->x, req.payload, n * 2);
    } else {
        const unsigned char *p = req.payload;
        for (size_t i = 0; i < n; i++) {
            float f;
            memcpy(&f, p + 4 * i, 4);
            s->x[i] = mx_serve_f32_to_bf16(f);
        }
    }
    for (size_t i = 0; i < n; i++)
        s->out[i] = 0x7fc1; /* poison: a NaN the compute must overwrite */
    mx_error_clear();
    st = s->cfg.compute((int)req.layer, req.n_tokens, req.hidden, s->x, s->out, s->cfg.compute_arg);
    if (st != MX_OK) {
        char detail[MX_ERROR_DETAIL_MAX];
        snprintf(detail, sizeof detail, "layer %u, %u tokens: %s", req.layer, req.n_tokens,
                 *mx_error_detail() ? mx_error_detail() : mx_status_str(st));
        MX_LOG_W("serve", "request %llu failed: %s: %s", (unsigned long long)id, mx_status_str(st), detail);
        send_reply(s, id, st, detail, NULL);
        return;
    }
    send_reply(s, id, MX_OK, NULL, &req);
}

static int stop_requested(struct mx_serve *s)
{
    return atomic_load(&s->stop) || g_signal_received || (s->cfg.stop_poll && s->cfg.stop_poll(s->cfg.stop_poll_arg));
}

static mx_status_t stopped(const struct mx_serve *s)
{
    MX_LOG_I("serve", "stopped after %llu requests (%llu ok, %llu errors)", (unsigned long long)s->stats.requests,
             (unsigned long long)s->stats.ok, (unsigned long long)s->stats.errors);
    return MX_OK;
}

mx_status_t mx_serve_run(mx_serve_h s)
{
    if (!s)
        return mx_error_set(MX_ERR_INVALID, "mx_serve_run: NULL server");
    int draining = 0;
    uint64_t drain_left = 0;
    for (;;) {
        if (s->cfg.max_requests && s->stats.ok + s->stats.errors + s->stats.dropped >= s->cfg.max_requests)
            return MX_OK;
        if (!draining && stop_requested(s)) {
            draining = 1;
            /* A REQ client has at most one request out, so no more than one per connection
             * can have arrived before the stop; taking only that many keeps clients that
             * send again at once from holding the server (they kept it serving as long as
             * they sent). Fair queueing takes each connection's waiting request first. */
            drain_left = nn_get_statistic(s->sock, NN_STAT_CURRENT_CONNECTIONS);
            if (drain_left == (uint64_t)-1)
                drain_left = 0;
            MX_LOG_I("serve",
                     "stop requested: answering the requests already received (at most one per connection; "
                     "%llu connected), then returning",
                     (unsigned long long)drain_left);
        }
        if (draining && drain_left == 0)
            return stopped(s);
        if (!draining) {
            struct nn_pollfd pfd = {.fd = s->sock, .events = NN_POLLIN, .revents = 0};
            int rc = nn_poll(&pfd, 1, s->cfg.poll_ms);
            if (rc < 0) {
                if (nn_errno() == EINTR)
                    continue;
                return mx_error_set(MX_ERR_TRANSPORT, "serve on %s: nn_poll: %s", s->url, nn_strerror(nn_errno()));
            }
            if (rc == 0 || !(pfd.revents & NN_POLLIN))
                continue;
        }
        void *msg = NULL;
        int len = nn_recv(s->sock, &msg, NN_MSG, NN_DONTWAIT);
        if (len < 0) {
            int e = nn_errno();
            if (e == EAGAIN) {
                if (draining)
                    return stopped(s);
                continue;
            }
            if (e == EINTR)
                continue;
            return mx_error_set(MX_ERR_TRANSPORT, "serve on %s: nn_recv: %s", s->url, nn_strerror(e));
        }
        if (draining)
            drain_left--;
        handle(s, msg, (size_t)len);
        nn_freemsg(msg);
    }
}
