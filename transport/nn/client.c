/* mxep serve: the client library (NN_REQ socket). */
#include <errno.h>
#include <limits.h>
#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mxep/serve.h"

struct mx_client {
    int sock;
    char *url;
    int timeout_ms;
    uint64_t next_id;
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

mx_status_t mx_client_create(const char *url, int timeout_ms, mx_client_h *client_p)
{
    if (!url || !*url || !client_p)
        return mx_error_set(MX_ERR_INVALID, "mx_client_create: expected a server address such as tcp://127.0.0.1:5555");
    if (timeout_ms < 0)
        return mx_error_set(MX_ERR_INVALID, "client timeout %d ms: expected >= 0", timeout_ms);
    struct mx_client *c = calloc(1, sizeof *c);
    if (!c || !(c->url = strdup(url))) {
        free(c);
        return mx_error_set(MX_ERR_NOMEM, "client: out of memory");
    }
    c->timeout_ms = timeout_ms ? timeout_ms : 30000;
    /* Request ids: unique per client in practice (pid, time, address), counting up. */
    static atomic_uint_fast64_t serial;
    c->next_id = ((uint64_t)getpid() << 40) ^ ((uint64_t)time(NULL) << 20) ^ ((uint64_t)(uintptr_t)c >> 4) ^
                 ((uint64_t)atomic_fetch_add(&serial, 1) << 56);
    c->sock = nn_socket(AF_SP, NN_REQ);
    mx_status_t st = MX_OK;
    if (c->sock < 0) {
        st = mx_error_set(MX_ERR_TRANSPORT, "client: nn_socket(NN_REQ): %s", nn_strerror(nn_errno()));
        goto fail;
    }
    int resend = INT_MAX; /* never resend by itself: a request is computed once */
    int rcvmax = -1, linger = 0;
    if (nn_setsockopt(c->sock, NN_SOL_SOCKET, NN_SNDTIMEO, &c->timeout_ms, sizeof(int)) < 0 ||
        nn_setsockopt(c->sock, NN_SOL_SOCKET, NN_RCVTIMEO, &c->timeout_ms, sizeof(int)) < 0 ||
        nn_setsockopt(c->sock, NN_SOL_SOCKET, NN_RCVMAXSIZE, &rcvmax, sizeof rcvmax) < 0 ||
        nn_setsockopt(c->sock, NN_SOL_SOCKET, NN_LINGER, &linger, sizeof linger) < 0 ||
        nn_setsockopt(c->sock, NN_REQ, NN_REQ_RESEND_IVL, &resend, sizeof resend) < 0) {
        st = mx_error_set(MX_ERR_TRANSPORT, "client: nn_setsockopt: %s", nn_strerror(nn_errno()));
        goto fail;
    }
    if (nn_connect(c->sock, url) < 0) {
        const int e = nn_errno(); /* a malformed address (nn_connect's own checks) is a caller's error */
        st = mx_error_set(e == EINVAL || e == EPROTONOSUPPORT || e == ENODEV || e == ENAMETOOLONG ? MX_ERR_INVALID
                                                                                                  : MX_ERR_TRANSPORT,
                          "client: cannot connect to '%s': %s (expected a nanomsg address such as "
                          "tcp://127.0.0.1:5555 or ipc:///tmp/mxep.sock)",
                          url, nn_strerror(e));
        goto fail;
    }
    *client_p = c;
    return MX_OK;
fail:
    if (c->sock >= 0)
        nn_close(c->sock);
    free(c->url);
    free(c);
    return st;
}

void mx_client_destroy(mx_client_h c)
{
    if (!c)
        return;
    nn_close(c->sock);
    free(c->url);
    free(c);
}

void mx_client_reply_fini(mx_client_reply_t *reply)
{
    if (!reply)
        return;
    free(reply->out);
    reply->out = NULL;
}

/* Sends len bytes of msg (copied; the caller keeps msg), waits, decodes. */
static mx_status_t exchange(struct mx_client *c, const void *msg, size_t len, int check_id, uint64_t id,
                            mx_client_reply_t *reply_p)
{
    double t0 = now_ms();
    if (nn_send(c->sock, msg, len, 0) < 0) {
        int e = nn_errno();
        if (e == ETIMEDOUT || e == EAGAIN)
            return mx_error_set(MX_ERR_TIMEOUT, "client: sending %zu bytes to %s took more than %d ms", len, c->url,
                                c->timeout_ms);
        return mx_error_set(MX_ERR_TRANSPORT, "client: send to %s: %s", c->url, nn_strerror(e));
    }
    void *buf = NULL;
    int n = nn_recv(c->sock, &buf, NN_MSG, 0);
    if (n < 0) {
        int e = nn_errno();
        if (e == ETIMEDOUT || e == EAGAIN)
            return mx_error_set(MX_ERR_TIMEOUT, "client: no reply from %s within %d ms", c->url, c->timeout_ms);
        return mx_error_set(MX_ERR_TRANSPORT, "client: receive from %s: %s", c->url, nn_strerror(e));
    }
    double t1 = now_ms();
    mx_serve_wire_reply_t rep;
    mx_status_t st = mx_serve_wire_reply_decode(buf, (size_t)n, &rep);
    if (st == MX_OK && check_id && rep.request_id != id)
        st = mx_error_set(MX_ERR_FORMAT, "client: reply to request %llu, expected %llu",
                          (unsigned long long)rep.request_id, (unsigned long long)id);
    if (st != MX_OK) {
        nn_freemsg(buf);
        return mx_error_prefix(st, "client: bad reply from %s: ", c->url);
    }
    mx_client_reply_t r;
    memset(&r, 0, sizeof r);
    r.status = rep.status;
    memcpy(r.message, rep.message, rep.message_bytes);
    r.message[rep.message_bytes] = '\0';
    r.request_id = rep.request_id;
    r.n_tokens = rep.n_tokens;
    r.hidden = rep.hidden;
    r.latency_ms = t1 - t0;
    if (rep.payload_bytes) {
        r.out = malloc(rep.payload_bytes);
        if (!r.out) {
            nn_freemsg(buf);
            return mx_error_set(MX_ERR_NOMEM, "client: cannot hold a reply of %zu bytes", rep.payload_bytes);
        }
        memcpy(r.out, rep.payload, rep.payload_bytes);
    }
    nn_freemsg(buf);
    *reply_p = r;
    return MX_OK;
}

mx_status_t mx_client_request(mx_client_h c, int layer, mx_serve_wire_dtype_t dtype, size_t n_tokens, size_t hidden,
                              const void *x, mx_client_reply_t *reply_p)
{
    if (!c || !x || !reply_p)
        return mx_error_set(MX_ERR_INVALID, "mx_client_request: NULL argument");
    if (layer < 0)
        return mx_error_set(MX_ERR_INVALID, "client: layer %d: expected >= 0", layer);
    size_t size = mx_serve_wire_request_size(dtype, n_tokens, hidden);
    if (size == 0 || n_tokens == 0 || hidden == 0)
        return mx_error_set(MX_ERR_INVALID,
                            "client: request [%zu x %zu] dtype %d: expected 1..%u tokens, hidden "
                            "1..%u, dtype BF16 or F32",
                            n_tokens, hidden, (int)dtype, MX_SERVE_WIRE_MAX_TOKENS, MX_SERVE_WIRE_MAX_HIDDEN);
    mx_serve_wire_request_t req = {.request_id = c->next_id++,
                                   .layer = (uint32_t)layer,
                                   .dtype = dtype,
                                   .n_tokens = (uint32_t)n_tokens,
                                   .hidden = (uint32_t)hidden,
                                   .payload = x,
                                   .payload_bytes = n_tokens * hidden * mx_serve_wire_dtype_size(dtype)};
    void *msg = malloc(size);
    if (!msg)
        return mx_error_set(MX_ERR_NOMEM, "client: cannot allocate a request of %zu bytes", size);
    size_t written = 0;
    mx_status_t st = mx_serve_wire_request_encode(&req, msg, size, &written);
    if (st == MX_OK)
        st = exchange(c, msg, written, 1, req.request_id, reply_p);
    free(msg);
    return st;
}

mx_status_t mx_client_request_raw(mx_client_h c, const void *bytes, size_t len, mx_client_reply_t *reply_p)
{
    if (!c || (!bytes && len) || !reply_p)
        return mx_error_set(MX_ERR_INVALID, "mx_client_request_raw: NULL argument");
    return exchange(c, len ? bytes : "", len, 0, 0, reply_p);
}
