/* mxep serve: the front door. Programs that are not MPI jobs send a layer id and
 * a batch of hidden states [T x H] (BF16 or F32) to rank 0 of a running job over
 * a nanomsg socket and get the layer output [T x H] BF16 back. The wire format is
 * docs/PROTOCOL.md; this header has its codec (no nanomsg needed to use it), the
 * server loop that rank 0 runs, and the client library that `mxclient` uses.
 *
 * Ownership (nng style): a call that fails leaves every buffer with its caller;
 * outputs end in _p and are written only on success; structs the library fills
 * with allocated memory are released with their _fini (safe on a zeroed struct). */
#ifndef MXEP_SERVE_H
#define MXEP_SERVE_H

#include <stddef.h>
#include <stdint.h>

#include "mxep/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ================================================================ wire format */

#define MX_SERVE_WIRE_REQUEST_MAGIC 0x5152584Du /* "MXRQ" as little-endian bytes */
#define MX_SERVE_WIRE_REPLY_MAGIC 0x5052584Du   /* "MXRP" */
#define MX_SERVE_WIRE_VERSION 1u
#define MX_SERVE_WIRE_REQUEST_HEADER_BYTES 40u
#define MX_SERVE_WIRE_REPLY_HEADER_BYTES 48u
#define MX_SERVE_WIRE_MAX_TOKENS 65536u /* hard limit of the format; a server may set a lower one */
#define MX_SERVE_WIRE_MAX_HIDDEN 65536u
#define MX_SERVE_WIRE_MAX_MESSAGE 1024u /* bytes of the reply's status message */

typedef enum { MX_SERVE_WIRE_BF16 = 1, MX_SERVE_WIRE_F32 = 2 } mx_serve_wire_dtype_t;

/* Bytes per element of a dtype, 0 for an unknown one. */
size_t mx_serve_wire_dtype_size(uint32_t dtype);

/* A decoded request. `payload` points INTO the decoded message (a view). */
typedef struct {
    uint64_t request_id;
    uint32_t layer;
    uint32_t dtype; /* mx_serve_wire_dtype_t */
    uint32_t n_tokens;
    uint32_t hidden;
    const void *payload; /* n_tokens * hidden * dtype size bytes, little-endian */
    size_t payload_bytes;
} mx_serve_wire_request_t;

/* Size of the encoded request for this shape (0 when dtype is unknown). */
size_t mx_serve_wire_request_size(uint32_t dtype, size_t n_tokens, size_t hidden);

/* Writes the header and copies the payload into buf (buf_size >= mx_serve_wire_request_size).
 * Refuses (MX_ERR_INVALID) shapes over the format's limits and unknown dtypes. */
mx_status_t mx_serve_wire_request_encode(const mx_serve_wire_request_t *req, void *buf, size_t buf_size,
                                         size_t *written_p);

/* Checks and decodes one request message of `len` bytes. Limits: n_tokens in
 * 1..max_tokens, hidden in 1..max_hidden (0 = the format's limits). Errors
 * (MX_ERR_FORMAT unless said): shorter than a header ("truncated header"), bad
 * magic, unsupported version (MX_ERR_UNSUPPORTED), header size, unknown dtype,
 * zero or over-limit shape (MX_ERR_INVALID), payload_bytes not equal to
 * T*H*size, message length not header + payload (truncated or trailing bytes).
 * `request_id_p` (may be NULL) gets the request id whenever the header was long
 * enough to hold one, even on failure, so the error reply can carry it. */
mx_status_t mx_serve_wire_request_decode(const void *msg, size_t len, size_t max_tokens, size_t max_hidden,
                                         mx_serve_wire_request_t *req_p, uint64_t *request_id_p);

/* A decoded reply. `message` and `payload` point INTO the decoded message. */
typedef struct {
    uint64_t request_id;
    int32_t status;      /* mx_status_t: MX_OK, or the error the server met */
    const char *message; /* not NUL-terminated: message_bytes long ("" when OK) */
    size_t message_bytes;
    uint32_t n_tokens; /* 0 on error */
    uint32_t hidden;
    uint32_t dtype;      /* MX_SERVE_WIRE_BF16 (0 on error) */
    const void *payload; /* n_tokens * hidden BF16, little-endian */
    size_t payload_bytes;
} mx_serve_wire_reply_t;

size_t mx_serve_wire_reply_size(size_t message_bytes, size_t n_tokens, size_t hidden);
/* The message is cut to MX_SERVE_WIRE_MAX_MESSAGE bytes. */
mx_status_t mx_serve_wire_reply_encode(const mx_serve_wire_reply_t *rep, void *buf, size_t buf_size, size_t *written_p);
mx_status_t mx_serve_wire_reply_decode(const void *msg, size_t len, mx_serve_wire_reply_t *rep_p);

/* ================================================================ server (rank 0) */

/* The worker's side of one request: run layer `layer` on x [n_tokens x hidden]
 * BF16 (spreading the tokens over all ranks) and write out [n_tokens x hidden]
 * BF16. F32 requests are rounded to BF16 (nearest even) before the call. A
 * non-MX_OK return becomes the reply's status, with mx_error_detail() as its
 * message; the server keeps serving. */
typedef mx_status_t (*mx_serve_compute_fn)(int layer, size_t n_tokens, size_t hidden, const uint16_t *x, uint16_t *out,
                                           void *arg);

typedef struct {
    const char *url; /* nanomsg address to bind: tcp://127.0.0.1:5555, tcp://0.0.0.0:5555, ipc:///tmp/x */
    size_t hidden;   /* H of the model: other H are refused */
    int first_layer; /* layers first_layer .. first_layer + n_layers - 1 are accepted */
    int n_layers;
    size_t max_tokens;     /* per request; 0 = 4096; at most MX_SERVE_WIRE_MAX_TOKENS */
    int poll_ms;           /* how often the loop looks for a stop request; 0 = 100 */
    uint64_t max_requests; /* return after this many replies; 0 = serve until stopped */
    mx_serve_compute_fn compute;
    void *compute_arg;
    /* optional: asked each time the loop looks for a stop request (before each
     * request, and every poll_ms while idle); non-zero stops it as
     * mx_serve_stop() does (mx_serve_mpi_run: a signal that reached another rank) */
    int (*stop_poll)(void *arg);
    void *stop_poll_arg;
} mx_serve_config_t;

typedef struct mx_serve *mx_serve_h;

typedef struct {
    uint64_t requests; /* messages received */
    uint64_t ok;       /* replies with MX_OK */
    uint64_t errors;   /* error replies (malformed, refused, compute failed) */
    uint64_t dropped;  /* replies the socket refused (a reply to a client that has gone is dropped by
                          nanomsg without an error: it counts as sent) */
} mx_serve_stats_t;

/* Opens an NN_REP socket and binds it to config->url. NN_REP serves any number
 * of clients: requests are taken one at a time (fair-queued across clients) and
 * each reply goes back to the client that sent the request. Errors:
 * MX_ERR_INVALID (config), MX_ERR_TRANSPORT naming the url (bind failed). */
mx_status_t mx_serve_create(const mx_serve_config_t *config, mx_serve_h *server_p);

/* The loop: receive, validate, compute, reply, until mx_serve_stop(),
 * SIGTERM/SIGINT (after mx_serve_signals_install()) or max_requests replies.
 * On a stop it first drains: every request already received by the socket
 * gets its reply. Bad requests get error replies and never end the loop.
 * Returns MX_OK when stopped, MX_ERR_TRANSPORT if the socket itself failed. */
mx_status_t mx_serve_run(mx_serve_h server);

/* Asks a running loop to drain and return; callable from any thread. */
void mx_serve_stop(mx_serve_h server);

/* Installs SIGTERM and SIGINT handlers that stop every running serve loop of
 * this process (previous handlers are replaced). */
mx_status_t mx_serve_signals_install(void);

/* 1 when SIGTERM/SIGINT arrived since mx_serve_signals_install(). */
int mx_serve_signal_received(void);

/* The counts so far. Call it from the loop's thread (e.g. in the callback) or
 * after mx_serve_run returned: they are not synchronized with a running loop. */
void mx_serve_stats(mx_serve_h server, mx_serve_stats_t *stats_p);
void mx_serve_destroy(mx_serve_h server);

/* ================================================================ client */

typedef struct mx_client *mx_client_h;

/* Opens an NN_REQ socket connected to url. timeout_ms bounds each request
 * (send and reply); 0 = 30000. Connecting is lazy in nanomsg: a server that is
 * not there shows as MX_ERR_TIMEOUT at the first request. */
mx_status_t mx_client_create(const char *url, int timeout_ms, mx_client_h *client_p);

typedef struct {
    int32_t status;                              /* the server's verdict: MX_OK or an mx_status_t error */
    char message[MX_SERVE_WIRE_MAX_MESSAGE + 1]; /* NUL-terminated, "" when OK */
    uint64_t request_id;
    size_t n_tokens;
    size_t hidden;
    uint16_t *out;     /* [n_tokens x hidden] BF16 (malloc'd; NULL on error) */
    double latency_ms; /* send to reply */
} mx_client_reply_t;

void mx_client_reply_fini(mx_client_reply_t *reply);

/* Sends layer `layer`, x [n_tokens x hidden] of `dtype` and waits for the
 * reply. Returns MX_OK when a well-formed reply to THIS request arrived (then
 * reply_p->status tells whether the server succeeded); MX_ERR_TIMEOUT when
 * none came in time, MX_ERR_TRANSPORT, MX_ERR_FORMAT for a bad reply,
 * MX_ERR_INVALID for bad arguments. */
mx_status_t mx_client_request(mx_client_h client, int layer, mx_serve_wire_dtype_t dtype, size_t n_tokens,
                              size_t hidden, const void *x, mx_client_reply_t *reply_p);

/* Sends `len` bytes as they are (for tests and protocol tools) and waits for a
 * reply as above (its request id is not checked). */
mx_status_t mx_client_request_raw(mx_client_h client, const void *msg, size_t len, mx_client_reply_t *reply_p);

void mx_client_destroy(mx_client_h client);

/* BF16 <-> F32 helpers used on both sides (round to nearest even; NaN stays NaN). */
uint16_t mx_serve_f32_to_bf16(float f);
float mx_serve_bf16_to_f32(uint16_t b);

#ifdef __cplusplus
}
#endif
#endif
