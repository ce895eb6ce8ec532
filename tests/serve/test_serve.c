/* serve: the wire codec, the NN_REP front-door loop and the client library,
 * over loopback tcp and ipc, with concurrent clients checked against a
 * reference computed in-process, each malformed request checked for its error
 * reply, a client that vanishes mid-request, stop/drain and SIGTERM. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "mxep/serve.h"

enum { HID = 64, LAYERS = 4, SLOW_LAYER = 2, FAIL_LAYER = 3, SEED = 20261123 };

static uint64_t rng_state;
static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}
static float rng_float(uint64_t *s)
{
    return (float)((rng_next(s) >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

static atomic_int g_compute_started;

#ifdef MXEP_TEST_PIPELINE
/* The reference: the coordinator's single-process pipeline on the `tiny`
 * synthetic preset with the `ref` backend, every layer prepacked once. */
#include "mxep/checkpoint.h"
#include "mxep/coordinator.h"
#include "mxep/kernels.h"

static mx_model_config_t g_cfg;
static const mx_backend_ops_t *g_ops;
static mx_router_weights_t g_rw[LAYERS];
static mx_backend_packed_t *g_packed[LAYERS];

static int pipeline_setup(void **state)
{
    (void)state;
    if (mx_synth_config("tiny", LAYERS, &g_cfg) != MX_OK || g_cfg.hidden != HID) {
        fprintf(stderr, "tiny preset: %s (hidden %zu, the test needs %d)\n", mx_error_detail(), g_cfg.hidden, HID);
        return -1;
    }
    g_ops = mx_backend_find("ref");
    mx_device_info_t dev;
    if (!g_ops || g_ops->probe(&dev) != MX_OK)
        return -1;
    int ids[256];
    for (int e = 0; e < g_cfg.n_experts && e < 256; e++)
        ids[e] = e;
    for (int l = 0; l < LAYERS; l++) {
        mx_expert_set_h set = NULL;
        if (mx_synth_router(&g_cfg, SEED, l, &g_rw[l]) != MX_OK ||
            mx_synth_experts(&g_cfg, SEED, l, ids, g_cfg.n_experts, &set) != MX_OK) {
            fprintf(stderr, "synthetic layer %d: %s\n", l, mx_error_detail());
            return -1;
        }
        mx_status_t st = g_ops->prepack(&dev, &g_cfg.moe, mx_expert_set_weights(set), g_cfg.n_experts, &g_packed[l]);
        mx_expert_set_destroy(set);
        if (st != MX_OK) {
            fprintf(stderr, "prepack layer %d: %s\n", l, mx_error_detail());
            return -1;
        }
    }
    printf("test_serve: reference = mx_pipeline_ref_run, preset tiny (E=%d, H=%zu), backend ref, seed %d\n",
           g_cfg.n_experts, g_cfg.hidden, SEED);
    return 0;
}

static int pipeline_teardown(void **state)
{
    (void)state;
    for (int l = 0; l < LAYERS; l++) {
        if (g_packed[l])
            g_ops->release(g_packed[l]);
        mx_router_weights_fini(&g_rw[l]);
    }
    return 0;
}

static mx_status_t ref_layer_status(int layer, size_t t, size_t h, const uint16_t *x, uint16_t *out)
{
    mx_pipeline_ref_t pipe = {g_ops, g_packed[layer], &g_cfg.router, &g_rw[layer], h, 1};
    return mx_pipeline_ref_run(&pipe, x, t, out, NULL);
}
#else
static int pipeline_setup(void **state)
{
    (void)state;
    printf("test_serve: reference = a deterministic per-token function (coordinator not built)\n");
    return 0;
}
static int pipeline_teardown(void **state)
{
    (void)state;
    return 0;
}
/* Per token (batch-invariant), depends on the layer and on the whole row. */
static mx_status_t ref_layer_status(int layer, size_t t, size_t h, const uint16_t *x, uint16_t *out)
{
    for (size_t i = 0; i < t; i++) {
        float sum = 0.0f;
        for (size_t j = 0; j < h; j++)
            sum += mx_serve_bf16_to_f32(x[i * h + j]);
        for (size_t j = 0; j < h; j++) {
            float v = mx_serve_bf16_to_f32(x[i * h + j]);
            out[i * h + j] = mx_serve_f32_to_bf16(v * (float)(layer + 1) - 0.01f * sum + (float)j * 0.001f);
        }
    }
    return MX_OK;
}
#endif

static void ref_layer(int layer, size_t t, size_t h, const uint16_t *x, uint16_t *out)
{
    if (ref_layer_status(layer, t, h, x, out) != MX_OK)
        fail_msg("reference layer %d failed: %s", layer, mx_error_detail());
}

/* The server's callback: the reference, except that layer SLOW_LAYER takes
 * 300 ms more and FAIL_LAYER fails. */
static mx_status_t compute_cb(int layer, size_t t, size_t h, const uint16_t *x, uint16_t *out, void *arg)
{
    (void)arg;
    atomic_store(&g_compute_started, 1);
    if (layer == FAIL_LAYER)
        return mx_error_set(MX_ERR_INTERNAL, "expert shard of layer %d is not loaded (test)", layer);
    if (layer == SLOW_LAYER) {
        struct timespec ts = {0, 300 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return ref_layer_status(layer, t, h, x, out);
}

static int free_tcp_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || getsockname(fd, (struct sockaddr *)&a, &l) != 0)
        return -1;
    close(fd);
    return ntohs(a.sin_port);
}

typedef struct {
    mx_serve_h server;
    pthread_t thread;
    mx_status_t result;
    char url[128];
} server_fixture_t;

static void *server_main(void *p)
{
    server_fixture_t *f = p;
    f->result = mx_serve_run(f->server);
    return NULL;
}

static void server_start(server_fixture_t *f, const char *url, size_t max_tokens)
{
    snprintf(f->url, sizeof f->url, "%s", url);
    mx_serve_config_t cfg = {.url = f->url,
                             .hidden = HID,
                             .n_layers = LAYERS,
                             .max_tokens = max_tokens,
                             .poll_ms = 20,
                             .compute = compute_cb};
    assert_int_equal(mx_serve_create(&cfg, &f->server), MX_OK);
    f->result = MX_ERR_INTERNAL;
    assert_int_equal(pthread_create(&f->thread, NULL, server_main, f), 0);
}

static void server_tcp_start(server_fixture_t *f, size_t max_tokens)
{
    char url[64];
    int port = free_tcp_port();
    assert_true(port > 0);
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port);
    server_start(f, url, max_tokens);
}

/* Stops the loop, waits for it, and gives its final counts (stats_p may be NULL). */
static void server_finish_stats(server_fixture_t *f, mx_serve_stats_t *stats_p)
{
    mx_serve_stop(f->server);
    pthread_join(f->thread, NULL);
    assert_int_equal(f->result, MX_OK);
    if (stats_p)
        mx_serve_stats(f->server, stats_p);
    mx_serve_destroy(f->server);
}

static void server_finish(server_fixture_t *f)
{
    server_finish_stats(f, NULL);
}

/* A batch of random data of dtype; ref_p gets the expected BF16 output. */
static void *make_batch(uint64_t *rng, int layer, mx_serve_wire_dtype_t dtype, size_t t, uint16_t **ref_p)
{
    size_t n = t * HID;
    uint16_t *xb = malloc(n * 2), *ref = malloc(n * 2);
    float *xf = malloc(n * 4);
    assert_non_null(xb);
    assert_non_null(ref);
    assert_non_null(xf);
    for (size_t i = 0; i < n; i++) {
        xf[i] = rng_float(rng) * 4.0f;
        xb[i] = mx_serve_f32_to_bf16(xf[i]);
    }
    ref_layer(layer, t, HID, xb, ref);
    *ref_p = ref;
    if (dtype == MX_SERVE_WIRE_BF16) {
        free(xf);
        return xb;
    }
    free(xb);
    return xf;
}

/* ---------------------------------------------------------------- codec */

static void test_wire_request_roundtrip_keeps_every_field(void **state)
{
    (void)state;
    float x[3 * 5];
    for (int i = 0; i < 15; i++)
        x[i] = (float)i - 7.5f;
    mx_serve_wire_request_t req = {.request_id = 0x1122334455667788ull,
                                   .layer = 7,
                                   .dtype = MX_SERVE_WIRE_F32,
                                   .n_tokens = 3,
                                   .hidden = 5,
                                   .payload = x,
                                   .payload_bytes = sizeof x};
    size_t size = mx_serve_wire_request_size(MX_SERVE_WIRE_F32, 3, 5), written = 0;
    assert_int_equal(size, MX_SERVE_WIRE_REQUEST_HEADER_BYTES + sizeof x);
    unsigned char *buf = malloc(size);
    assert_int_equal(mx_serve_wire_request_encode(&req, buf, size, &written), MX_OK);
    assert_int_equal(written, size);
    assert_memory_equal(buf, "MXRQ", 4); /* magic bytes on the wire */
    mx_serve_wire_request_t got;
    uint64_t id = 0;
    assert_int_equal(mx_serve_wire_request_decode(buf, size, 0, 0, &got, &id), MX_OK);
    assert_true(got.request_id == req.request_id && id == req.request_id);
    assert_int_equal(got.layer, 7);
    assert_int_equal(got.dtype, MX_SERVE_WIRE_F32);
    assert_int_equal(got.n_tokens, 3);
    assert_int_equal(got.hidden, 5);
    assert_memory_equal(got.payload, x, sizeof x);
    free(buf);
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

typedef struct {
    const char *name;
    int field_off; /* -1: none */
    uint32_t value;
    long len_delta; /* added to the message length (bytes cut or appended) */
    mx_status_t want;
    const char *want_text;
} bad_case_t;

static const bad_case_t bad_cases[] = {
    {"truncated header", -1, 0, -(long)(MX_SERVE_WIRE_REQUEST_HEADER_BYTES + 2 * 4 * HID) + 20, MX_ERR_FORMAT,
     "truncated header"},
    {"empty message", -1, 0, -(long)(MX_SERVE_WIRE_REQUEST_HEADER_BYTES + 2 * 4 * HID), MX_ERR_FORMAT,
     "truncated header"},
    {"bad magic", 0, 0x4b4e554au, 0, MX_ERR_FORMAT, "bad magic"},
    {"newer version", 4, 0x00280002u, 0, MX_ERR_UNSUPPORTED, "protocol version 2"},
    {"bad header size", 4, 0x00300001u, 0, MX_ERR_FORMAT, "header size 48"},
    {"unknown dtype", 20, 9, 0, MX_ERR_FORMAT, "dtype 9"},
    {"zero tokens", 24, 0, 0, MX_ERR_INVALID, "n_tokens 0"},
    {"oversized batch", 24, 100000, 0, MX_ERR_INVALID, "n_tokens 100000"},
    {"zero hidden", 28, 0, 0, MX_ERR_INVALID, "hidden 0"},
    {"payload_bytes lies", 32, 12, 0, MX_ERR_FORMAT, "payload_bytes 12"},
    {"truncated payload", -1, 0, -5, MX_ERR_FORMAT, "truncated payload"},
    {"trailing bytes", -1, 0, 3, MX_ERR_FORMAT, "3 trailing bytes"},
};

/* A valid 2-token F32 request with one field overwritten and the length changed. */
static unsigned char *bad_message(const bad_case_t *c, size_t *len_p)
{
    float x[2 * HID];
    for (int i = 0; i < 2 * HID; i++)
        x[i] = (float)i;
    mx_serve_wire_request_t req = {.request_id = 99,
                                   .layer = 1,
                                   .dtype = MX_SERVE_WIRE_F32,
                                   .n_tokens = 2,
                                   .hidden = HID,
                                   .payload = x,
                                   .payload_bytes = sizeof x};
    size_t size = mx_serve_wire_request_size(MX_SERVE_WIRE_F32, 2, HID), written = 0;
    unsigned char *buf = calloc(1, size + 16);
    assert_non_null(buf);
    assert_int_equal(mx_serve_wire_request_encode(&req, buf, size, &written), MX_OK);
    if (c->field_off >= 0)
        put32(buf + c->field_off, c->value);
    if (c->field_off == 32)
        put32(buf + 36, 0);
    *len_p = (size_t)((long)size + c->len_delta);
    return buf;
}

static void test_wire_request_decode_refuses_each_malformed_case(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        size_t len = 0;
        unsigned char *msg = bad_message(&bad_cases[i], &len);
        mx_serve_wire_request_t poison;
        memset(&poison, 0xab, sizeof poison);
        mx_serve_wire_request_t got = poison;
        mx_status_t st = mx_serve_wire_request_decode(msg, len, 4096, 0, &got, NULL);
        if (st != bad_cases[i].want || !strstr(mx_error_detail(), bad_cases[i].want_text))
            fail_msg("case '%s': got %s '%s', want %s containing '%s'", bad_cases[i].name, mx_status_str(st),
                     mx_error_detail(), mx_status_str(bad_cases[i].want), bad_cases[i].want_text);
        assert_memory_equal(&got, &poison, sizeof got); /* output untouched on failure */
        free(msg);
    }
}

static void test_wire_reply_decode_refuses_length_mismatch(void **state)
{
    (void)state;
    uint16_t out[HID] = {0};
    mx_serve_wire_reply_t rep = {
        .request_id = 5, .status = MX_OK, .n_tokens = 1, .hidden = HID, .payload = out, .payload_bytes = sizeof out};
    size_t size = mx_serve_wire_reply_size(0, 1, HID), written = 0;
    unsigned char *buf = malloc(size);
    assert_int_equal(mx_serve_wire_reply_encode(&rep, buf, size, &written), MX_OK);
    mx_serve_wire_reply_t got;
    assert_int_equal(mx_serve_wire_reply_decode(buf, written, &got), MX_OK);
    assert_int_equal(got.request_id, 5);
    assert_int_equal(mx_serve_wire_reply_decode(buf, written - 1, &got), MX_ERR_FORMAT);
    free(buf);
}

/* ---------------------------------------------------------------- server */

typedef struct {
    const char *url;
    int client_index;
    int requests;
    int failures;
    char first_failure[2048];
} client_job_t;

static void *client_main(void *p)
{
    client_job_t *job = p;
    uint64_t rng = (uint64_t)SEED * 7919u + (uint64_t)job->client_index * 104729u + 1u;
    mx_client_h c = NULL;
    if (mx_client_create(job->url, 10000, &c) != MX_OK) {
        job->failures = job->requests;
        snprintf(job->first_failure, sizeof job->first_failure, "create: %s", mx_error_detail());
        return NULL;
    }
    for (int r = 0; r < job->requests; r++) {
        size_t t = 1 + rng_next(&rng) % 48;
        int layer = (int)(rng_next(&rng) % 2);
        mx_serve_wire_dtype_t dt = (rng_next(&rng) & 1) ? MX_SERVE_WIRE_BF16 : MX_SERVE_WIRE_F32;
        uint16_t *ref = NULL;
        void *x = make_batch(&rng, layer, dt, t, &ref);
        mx_client_reply_t rep = {0};
        mx_status_t st = mx_client_request(c, layer, dt, t, HID, x, &rep);
        const char *why = NULL;
        if (st != MX_OK)
            why = mx_error_detail();
        else if (rep.status != MX_OK)
            why = rep.message;
        else if (rep.n_tokens != t || rep.hidden != HID)
            why = "wrong output shape";
        else if (memcmp(rep.out, ref, t * HID * 2) != 0)
            why = "output differs from the in-process reference";
        if (why) {
            if (job->failures++ == 0)
                snprintf(job->first_failure, sizeof job->first_failure, "client %d request %d (seed %d): %s",
                         job->client_index, r, SEED, why);
        }
        mx_client_reply_fini(&rep);
        free(x);
        free(ref);
    }
    mx_client_destroy(c);
    return NULL;
}

static void run_concurrent_clients(const char *url)
{
    enum { CLIENTS = 4, REQUESTS = 6 };
    pthread_t th[CLIENTS];
    client_job_t jobs[CLIENTS];
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < CLIENTS; i++) {
        jobs[i] = (client_job_t){.url = url, .client_index = i, .requests = REQUESTS};
        assert_int_equal(pthread_create(&th[i], NULL, client_main, &jobs[i]), 0);
    }
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < CLIENTS; i++)
        if (jobs[i].failures)
            fail_msg("%d failures; first: %s", jobs[i].failures, jobs[i].first_failure);
}

static void test_serve_concurrent_tcp_clients_each_get_their_own_correct_reply(void **state)
{
    (void)state;
    server_fixture_t f;
    server_tcp_start(&f, 0);
    run_concurrent_clients(f.url);
    mx_serve_stats_t s;
    server_finish_stats(&f, &s);
    assert_int_equal(s.requests, 24);
    assert_int_equal(s.ok, 24);
    assert_int_equal(s.errors, 0);
}

static void test_serve_concurrent_ipc_clients_each_get_their_own_correct_reply(void **state)
{
    (void)state;
    char url[128];
    snprintf(url, sizeof url, "ipc:///tmp/mxep-test-serve-%ld.sock", (long)getpid());
    server_fixture_t f;
    server_start(&f, url, 0);
    run_concurrent_clients(f.url);
    server_finish(&f);
    unlink(url + strlen("ipc://"));
}

static void expect_error_reply(mx_client_h c, const void *msg, size_t len, mx_status_t want, const char *text,
                               const char *name)
{
    mx_client_reply_t rep = {0};
    mx_status_t st = mx_client_request_raw(c, msg, len, &rep);
    if (st != MX_OK)
        fail_msg("case '%s': no reply: %s", name, mx_error_detail());
    if (rep.status != (int32_t)want || !strstr(rep.message, text))
        fail_msg("case '%s': reply %s '%s', want %s containing '%s'", name, mx_status_str(rep.status), rep.message,
                 mx_status_str(want), text);
    assert_null(rep.out);
    mx_client_reply_fini(&rep);
}

static void expect_good_request(mx_client_h c, uint64_t *rng)
{
    uint16_t *ref = NULL;
    void *x = make_batch(rng, 1, MX_SERVE_WIRE_BF16, 5, &ref);
    mx_client_reply_t rep = {0};
    assert_int_equal(mx_client_request(c, 1, MX_SERVE_WIRE_BF16, 5, HID, x, &rep), MX_OK);
    if (rep.status != MX_OK)
        fail_msg("valid request refused: %s", rep.message);
    assert_memory_equal(rep.out, ref, 5 * HID * 2);
    mx_client_reply_fini(&rep);
    free(x);
    free(ref);
}

static void test_serve_malformed_requests_get_error_replies_and_serving_continues(void **state)
{
    (void)state;
    uint64_t rng = SEED;
    server_fixture_t f;
    server_tcp_start(&f, 64);
    mx_client_h c = NULL;
    assert_int_equal(mx_client_create(f.url, 5000, &c), MX_OK);
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        size_t len = 0;
        unsigned char *msg = bad_message(&bad_cases[i], &len);
        expect_error_reply(c, msg, len, bad_cases[i].want, bad_cases[i].want_text, bad_cases[i].name);
        free(msg);
        expect_good_request(c, &rng);
    }
    /* Valid for the format but not for this model / server. */
    uint16_t *ref = NULL;
    void *x = make_batch(&rng, 0, MX_SERVE_WIRE_BF16, 65, &ref);
    mx_client_reply_t rep = {0};
    assert_int_equal(mx_client_request(c, 0, MX_SERVE_WIRE_BF16, 65, HID, x, &rep), MX_OK);
    assert_int_equal(rep.status, MX_ERR_INVALID); /* over this server's max_tokens = 64 */
    assert_non_null(strstr(rep.message, "n_tokens 65"));
    assert_int_equal(mx_client_request(c, LAYERS, MX_SERVE_WIRE_BF16, 3, HID, x, &rep), MX_OK);
    assert_int_equal(rep.status, MX_ERR_INVALID);
    assert_non_null(strstr(rep.message, "layer 4"));
    assert_int_equal(mx_client_request(c, 0, MX_SERVE_WIRE_BF16, 2, HID * 2, x, &rep), MX_OK);
    assert_int_equal(rep.status, MX_ERR_INVALID);
    assert_non_null(strstr(rep.message, "this model has hidden 64"));
    assert_int_equal(mx_client_request(c, FAIL_LAYER, MX_SERVE_WIRE_BF16, 3, HID, x, &rep), MX_OK);
    assert_int_equal(rep.status, MX_ERR_INTERNAL);
    assert_non_null(strstr(rep.message, "not loaded (test)"));
    free(x);
    free(ref);
    expect_good_request(c, &rng);
    mx_client_destroy(c);
    mx_serve_stats_t s;
    server_finish_stats(&f, &s);
    assert_int_equal(s.errors, sizeof bad_cases / sizeof bad_cases[0] + 4);
    assert_int_equal(s.ok, sizeof bad_cases / sizeof bad_cases[0] + 1);
}

static void test_serve_client_that_disconnects_mid_request_leaves_server_serving(void **state)
{
    (void)state;
    uint64_t rng = SEED + 1;
    server_fixture_t f;
    server_tcp_start(&f, 0);
    for (int round = 0; round < 3; round++) {
        int s = nn_socket(AF_SP, NN_REQ);
        assert_true(s >= 0);
        assert_true(nn_connect(s, f.url) >= 0);
        uint16_t *ref = NULL;
        void *x = make_batch(&rng, SLOW_LAYER, MX_SERVE_WIRE_BF16, 8, &ref);
        size_t size = mx_serve_wire_request_size(MX_SERVE_WIRE_BF16, 8, HID), written = 0;
        unsigned char *msg = malloc(size);
        mx_serve_wire_request_t req = {.request_id = 1,
                                       .layer = SLOW_LAYER,
                                       .dtype = MX_SERVE_WIRE_BF16,
                                       .n_tokens = 8,
                                       .hidden = HID,
                                       .payload = x,
                                       .payload_bytes = 8 * HID * 2};
        assert_int_equal(mx_serve_wire_request_encode(&req, msg, size, &written), MX_OK);
        atomic_store(&g_compute_started, 0);
        assert_int_equal(nn_send(s, msg, written, 0), (int)written);
        for (int i = 0; i < 200 && !atomic_load(&g_compute_started); i++)
            usleep(5000);
        nn_close(s); /* gone while the server computes */
        free(msg);
        free(x);
        free(ref);
    }
    mx_client_h c = NULL;
    assert_int_equal(mx_client_create(f.url, 5000, &c), MX_OK);
    expect_good_request(c, &rng);
    mx_client_destroy(c);
    server_finish(&f);
}

static void test_serve_message_over_the_transport_limit_is_cut_and_serving_continues(void **state)
{
    (void)state;
    uint64_t rng = SEED + 5;
    server_fixture_t f;
    server_tcp_start(&f, 64); /* limit: 40 + 64 * 64 * 4 + 64 KiB bytes */
    size_t big = 1u << 20;
    unsigned char *msg = malloc(big);
    assert_non_null(msg);
    memset(msg, 0x5a, big);
    mx_client_h c = NULL;
    assert_int_equal(mx_client_create(f.url, 500, &c), MX_OK);
    mx_client_reply_t rep = {.status = 777};
    assert_int_equal(mx_client_request_raw(c, msg, big, &rep), MX_ERR_TIMEOUT); /* connection cut, no reply */
    assert_int_equal(rep.status, 777);
    mx_client_destroy(c);
    free(msg);
    assert_int_equal(mx_client_create(f.url, 5000, &c), MX_OK);
    expect_good_request(c, &rng);
    mx_client_destroy(c);
    server_finish(&f);
}

typedef struct {
    const char *url;
    mx_status_t st;
    mx_client_reply_t rep;
    uint16_t *ref;
} slow_job_t;

static void *slow_client(void *p)
{
    slow_job_t *j = p;
    uint64_t rng = SEED + 2;
    void *x = make_batch(&rng, SLOW_LAYER, MX_SERVE_WIRE_F32, 4, &j->ref);
    mx_client_h c = NULL;
    j->st = mx_client_create(j->url, 5000, &c);
    if (j->st == MX_OK)
        j->st = mx_client_request(c, SLOW_LAYER, MX_SERVE_WIRE_F32, 4, HID, x, &j->rep);
    mx_client_destroy(c);
    free(x);
    return NULL;
}

static void test_serve_stop_drains_the_request_in_flight(void **state)
{
    (void)state;
    server_fixture_t f;
    server_tcp_start(&f, 0);
    slow_job_t j = {.url = f.url};
    atomic_store(&g_compute_started, 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, slow_client, &j), 0);
    for (int i = 0; i < 400 && !atomic_load(&g_compute_started); i++)
        usleep(5000);
    assert_true(atomic_load(&g_compute_started));
    mx_serve_stop(f.server); /* while layer 2 computes (300 ms) */
    pthread_join(f.thread, NULL);
    assert_int_equal(f.result, MX_OK);
    pthread_join(th, NULL);
    assert_int_equal(j.st, MX_OK);
    assert_int_equal(j.rep.status, MX_OK);
    assert_memory_equal(j.rep.out, j.ref, 4 * HID * 2);
    mx_client_reply_fini(&j.rep);
    free(j.ref);
    mx_serve_destroy(f.server);
}

/* Clients that send again as soon as they get a reply: after mx_serve_stop the loop
 * answers at most one request per connection and returns, while they keep sending
 * (it kept serving them as long as they sent: a SIGTERM under load never stopped the
 * server). */
typedef struct {
    const char *url;
    atomic_int *quit;
    atomic_int answered;
} pest_t;

static void *pest_client(void *p)
{
    pest_t *j = p;
    uint64_t rng = SEED + 7;
    uint16_t *ref = NULL;
    void *x = make_batch(&rng, 0, MX_SERVE_WIRE_BF16, 1, &ref);
    mx_client_h c = NULL;
    if (mx_client_create(j->url, 1000, &c) == MX_OK)
        while (!atomic_load(j->quit)) {
            mx_client_reply_t rep = {0};
            if (mx_client_request(c, 0, MX_SERVE_WIRE_BF16, 1, HID, x, &rep) == MX_OK && rep.status == MX_OK)
                atomic_fetch_add(&j->answered, 1);
            mx_client_reply_fini(&rep);
        }
    mx_client_destroy(c);
    free(x);
    free(ref);
    return NULL;
}

static void test_serve_stop_under_steady_load_returns(void **state)
{
    (void)state;
    enum { CLIENTS = 4 };
    server_fixture_t f;
    server_tcp_start(&f, 0);
    atomic_int quit;
    atomic_init(&quit, 0);
    pest_t jobs[CLIENTS];
    pthread_t th[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        jobs[i].url = f.url;
        jobs[i].quit = &quit;
        atomic_init(&jobs[i].answered, 0);
        assert_int_equal(pthread_create(&th[i], NULL, pest_client, &jobs[i]), 0);
    }
    for (int busy = 0, k = 0; k < 1000 && busy < CLIENTS; k++) { /* every client answered a few times */
        usleep(5000);
        busy = 0;
        for (int i = 0; i < CLIENTS; i++)
            busy += atomic_load(&jobs[i].answered) >= 3;
    }
    unsigned long long seen = 0; /* answers the clients had before the stop */
    for (int i = 0; i < CLIENTS; i++)
        seen += (unsigned long long)atomic_load(&jobs[i].answered);
    mx_serve_stats_t after;
    mx_serve_stop(f.server);
    pthread_join(f.thread, NULL); /* the clients still send: this returned only once they stopped */
    mx_serve_stats(f.server, &after);
    atomic_store(&quit, 1);
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(f.result, MX_OK);
    for (int i = 0; i < CLIENTS; i++)
        assert_true(atomic_load(&jobs[i].answered) >= 3);
    /* beyond those: each client's request out at the stop, then at most one per connection */
    if (after.requests > seen + 2 * CLIENTS)
        fail_msg("%llu requests taken, %llu answered before the stop, %d clients connected",
                 (unsigned long long)after.requests, seen, CLIENTS);
    assert_int_equal(after.requests, after.ok + after.errors + after.dropped);
    mx_serve_destroy(f.server);
}

/* The stop poll (mx_serve_config_t.stop_poll, how mx_serve_mpi_run hears of a signal
 * on another rank): asked before each request and every poll_ms while idle; its first
 * non-zero answer stops the loop, and it is not asked again after that. */
static int g_polls;
static int stop_on_third_poll(void *arg)
{
    (void)arg;
    return ++g_polls >= 3;
}

static void test_serve_stop_poll_stops_the_loop(void **state)
{
    (void)state;
    char url[64];
    int port = free_tcp_port();
    assert_true(port > 0);
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", port);
    mx_serve_config_t cfg = {.url = url,
                             .hidden = HID,
                             .n_layers = LAYERS,
                             .poll_ms = 20,
                             .compute = compute_cb,
                             .stop_poll = stop_on_third_poll};
    mx_serve_h srv = NULL;
    assert_int_equal(mx_serve_create(&cfg, &srv), MX_OK);
    g_polls = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(mx_serve_run(srv), MX_OK); /* idle: three polls, 20 ms apart */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_int_equal(g_polls, 3);
    const double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    if (ms > 5000.0)
        fail_msg("the loop took %.0f ms to stop after the poll said so", ms);
    mx_serve_destroy(srv);
}

static void test_serve_create_refuses_bad_config_and_busy_address(void **state)
{
    (void)state;
    mx_serve_h s = (mx_serve_h)(uintptr_t)0x1;
    mx_serve_config_t cfg = {.url = "tcp://127.0.0.1:1", .hidden = 0, .n_layers = 1, .compute = compute_cb};
    assert_int_equal(mx_serve_create(&cfg, &s), MX_ERR_INVALID);
    cfg.hidden = HID;
    cfg.first_layer = -1;
    assert_int_equal(mx_serve_create(&cfg, &s), MX_ERR_INVALID);
    assert_non_null(strstr(mx_error_detail(), "first_layer"));
    cfg.first_layer = 0;
    cfg.compute = NULL;
    assert_int_equal(mx_serve_create(&cfg, &s), MX_ERR_INVALID);
    cfg.compute = compute_cb;
    cfg.url = "nonsense://x";
    assert_int_equal(mx_serve_create(&cfg, &s), MX_ERR_TRANSPORT);
    assert_non_null(strstr(mx_error_detail(), "nonsense://x"));
    assert_ptr_equal(s, (mx_serve_h)(uintptr_t)0x1); /* untouched on failure */
    server_fixture_t f;
    server_tcp_start(&f, 0);
    cfg.url = f.url;
    assert_int_equal(mx_serve_create(&cfg, &s), MX_ERR_TRANSPORT);
    assert_non_null(strstr(mx_error_detail(), f.url));
    server_finish(&f);
}

static void test_client_without_server_times_out(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", free_tcp_port());
    mx_client_h c = NULL;
    assert_int_equal(mx_client_create(url, 300, &c), MX_OK);
    uint16_t x[HID] = {0x3f80};
    mx_client_reply_t rep = {.status = 12345};
    assert_int_equal(mx_client_request(c, 0, MX_SERVE_WIRE_BF16, 1, HID, x, &rep), MX_ERR_TIMEOUT);
    assert_int_equal(rep.status, 12345); /* untouched */
    assert_int_equal(mx_client_request(c, 0, (mx_serve_wire_dtype_t)7, 1, HID, x, &rep), MX_ERR_INVALID);
    mx_client_destroy(c);
}

/* Runs cmd (its stderr dropped) and parses its whole stdout as one JSON value;
 * *rc_p gets the exit status. NULL when stdout is not JSON. */
static cJSON *run_json(const char *cmd, int *rc_p)
{
    char full[1200], buf[4096];
    snprintf(full, sizeof full, "%s 2>/dev/null", cmd);
    FILE *p = popen(full, "r");
    assert_non_null(p);
    size_t n = fread(buf, 1, sizeof buf - 1, p);
    buf[n] = 0;
    const int st = pclose(p);
    *rc_p = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return cJSON_Parse(buf);
}

/* mxclient --json: a failure is one {"ok": false, "status", "message"} object
 * too, and a path with quotes and backslashes stays valid JSON. */
static void check_json_failure(const char *cmd, int want_rc, const char *want_status)
{
    int rc = -1;
    cJSON *o = run_json(cmd, &rc);
    assert_int_equal(rc, want_rc);
    assert_non_null(o);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(o, "ok")));
    const cJSON *st = cJSON_GetObjectItem(o, "status"), *msg = cJSON_GetObjectItem(o, "message");
    assert_true(cJSON_IsString(st) && cJSON_IsString(msg));
    assert_string_equal(st->valuestring, want_status);
    assert_true(strlen(msg->valuestring) > 0);
    cJSON_Delete(o);
}

/* mxclient (the CLI) against the in-process server: safetensors F32 in,
 * safetensors BF16 out, compared with the reference. */
static void test_mxclient_cli_sends_safetensors_and_writes_the_reply(void **state)
{
    (void)state;
    uint64_t rng = SEED + 3;
    server_fixture_t f;
    server_tcp_start(&f, 0);
    enum { T = 7 };
    uint16_t *ref = NULL;
    float *x = make_batch(&rng, 1, MX_SERVE_WIRE_F32, T, &ref);
    char in[128], out[128], cmd[1024];
    snprintf(in, sizeof in, "/tmp/mxep-test-mxclient-%ld-in.safetensors", (long)getpid());
    snprintf(out, sizeof out, "/tmp/mxep-test-mxclient-%ld-out.safetensors", (long)getpid());
    char hdr[128];
    int n = snprintf(hdr, sizeof hdr, "{\"x\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[0,%d]}}", T, HID,
                     T * HID * 4);
    FILE *fp = fopen(in, "wb");
    assert_non_null(fp);
    uint64_t hl = (uint64_t)n;
    fwrite(&hl, 8, 1, fp);
    fwrite(hdr, 1, (size_t)n, fp);
    fwrite(x, 4, T * HID, fp);
    fclose(fp);
    snprintf(cmd, sizeof cmd, "%s --url %s --input %s --layer 1 --output %s --repeat 3 --json > %s.json", MXCLIENT_PATH,
             f.url, in, out, out);
    assert_int_equal(system(cmd), 0);
    fp = fopen(out, "rb");
    assert_non_null(fp);
    uint64_t ohl = 0;
    assert_int_equal(fread(&ohl, 8, 1, fp), 1);
    assert_true(ohl < 4096);
    fseek(fp, (long)(8 + ohl), SEEK_SET);
    uint16_t got[T * HID];
    assert_int_equal(fread(got, 2, T * HID, fp), T * HID);
    fclose(fp);
    assert_memory_equal(got, ref, sizeof got);
    /* --json with an output path that JSON must escape */
    char odd[160];
    snprintf(odd, sizeof odd, "/tmp/mxep-test-mxclient-%ld-o\"q\\x.bin", (long)getpid());
    snprintf(cmd, sizeof cmd, "%s --url %s --input %s --layer 1 --output '%s' --json", MXCLIENT_PATH, f.url, in, odd);
    int jrc = -1;
    cJSON *jo = run_json(cmd, &jrc);
    assert_int_equal(jrc, 0);
    assert_non_null(jo);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(jo, "ok")));
    assert_true(cJSON_IsString(cJSON_GetObjectItem(jo, "output")));
    assert_string_equal(cJSON_GetObjectItem(jo, "output")->valuestring, odd);
    cJSON_Delete(jo);
    assert_int_equal(access(odd, F_OK), 0);
    unlink(odd);
    /* --json failures: the server refuses (layer 3), no directory for the output,
     * no server at all (a timeout) */
    snprintf(cmd, sizeof cmd, "%s --url %s --input %s --layer 3 --json", MXCLIENT_PATH, f.url, in);
    check_json_failure(cmd, 1, "MX_ERR_INTERNAL"); /* the test server has no layer 3 loaded */
    snprintf(cmd, sizeof cmd, "%s --url %s --input %s --layer 1 --output /nonexistent-dir/y.bin --json", MXCLIENT_PATH,
             f.url, in);
    check_json_failure(cmd, 2, "MX_ERR_IO");
    snprintf(cmd, sizeof cmd, "%s --url tcp://127.0.0.1:%d --input %s --timeout-ms 300 --json", MXCLIENT_PATH,
             free_tcp_port(), in);
    check_json_failure(cmd, 1, "MX_ERR_TIMEOUT");
    /* bad usage and unreadable input are {"ok": false} objects too (stdout was empty), exit 2; a
     * malformed --url is bad usage (it exited 1, as a server that did not answer) */
    snprintf(cmd, sizeof cmd, "%s --url %s --input %s --repeat 0 --json", MXCLIENT_PATH, f.url, in);
    check_json_failure(cmd, 2, "MX_ERR_INVALID");
    snprintf(cmd, sizeof cmd, "%s --json --url %s --input /nonexistent/x.safetensors", MXCLIENT_PATH, f.url);
    check_json_failure(cmd, 2, "MX_ERR_INVALID");
    snprintf(cmd, sizeof cmd, "%s --url notaurl --input %s --json", MXCLIENT_PATH, in);
    check_json_failure(cmd, 2, "MX_ERR_INVALID");
    /* a shape that is not whole numbers ([2.5, H] was read as [2, H]) */
    char frac[128];
    snprintf(frac, sizeof frac, "/tmp/mxep-test-mxclient-%ld-frac.safetensors", (long)getpid());
    n = snprintf(hdr, sizeof hdr, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2.5,%d],\"data_offsets\":[0,%d]}}", HID,
                 2 * HID * 4 + HID * 2);
    fp = fopen(frac, "wb");
    assert_non_null(fp);
    hl = (uint64_t)n;
    fwrite(&hl, 8, 1, fp);
    fwrite(hdr, 1, (size_t)n, fp);
    fwrite(x, 1, 2 * HID * 4 + HID * 2, fp);
    fclose(fp);
    snprintf(cmd, sizeof cmd, "%s --url %s --input %s --json", MXCLIENT_PATH, f.url, frac);
    check_json_failure(cmd, 2, "MX_ERR_INVALID");
    unlink(frac);
    /* flags of the other input format are refused, not ignored (exit 2, before connecting) */
    snprintf(cmd, sizeof cmd, "%s --url %s --input %s --hidden 64 2>/dev/null", MXCLIENT_PATH, f.url, in);
    int frc = system(cmd);
    assert_true(WIFEXITED(frc) && WEXITSTATUS(frc) == 2);
    snprintf(cmd, sizeof cmd, "%s --url %s --input %s --format raw --hidden 64 --tensor x 2>/dev/null", MXCLIENT_PATH,
             f.url, in);
    frc = system(cmd);
    assert_true(WIFEXITED(frc) && WEXITSTATUS(frc) == 2);
    /* A refused request: exit status 1, nothing written. */
    unlink(out);
    snprintf(cmd, sizeof cmd, "%s --url %s --input %s --layer 3 --output %s 2>/dev/null >/dev/null", MXCLIENT_PATH,
             f.url, in, out);
    int rc = system(cmd);
    assert_true(WIFEXITED(rc) && WEXITSTATUS(rc) == 1);
    assert_int_not_equal(access(out, F_OK), 0);
    fp = fopen(in, "wb"); /* 11 bytes: not a whole number of rows of 4 BF16 values */
    assert_non_null(fp);
    fwrite("0123456789a", 1, 11, fp);
    fclose(fp);
    snprintf(cmd, sizeof cmd, "%s --url %s --input %s --hidden 4 --format raw 2>/dev/null", MXCLIENT_PATH, f.url, in);
    rc = system(cmd);
    assert_true(WIFEXITED(rc) && WEXITSTATUS(rc) == 2);
    unlink(in);
    snprintf(cmd, sizeof cmd, "%s.json", out);
    unlink(cmd);
    free(x);
    free(ref);
    server_finish(&f);
}

/* Last: the signal flag is process-wide and stays set. */
static void test_serve_sigterm_stops_the_loop(void **state)
{
    (void)state;
    assert_int_equal(mx_serve_signals_install(), MX_OK);
    server_fixture_t f;
    server_tcp_start(&f, 0);
    mx_client_h c = NULL;
    uint64_t rng = SEED + 4;
    assert_int_equal(mx_client_create(f.url, 5000, &c), MX_OK);
    expect_good_request(c, &rng);
    assert_false(mx_serve_signal_received());
    kill(getpid(), SIGTERM);
    pthread_join(f.thread, NULL);
    assert_int_equal(f.result, MX_OK);
    assert_true(mx_serve_signal_received());
    mx_client_destroy(c);
    mx_serve_destroy(f.server);
}

int main(void)
{
    printf("test_serve: seed %d\n", SEED);
    rng_state = SEED;
    (void)rng_state;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wire_request_roundtrip_keeps_every_field),
        cmocka_unit_test(test_wire_request_decode_refuses_each_malformed_case),
        cmocka_unit_test(test_wire_reply_decode_refuses_length_mismatch),
        cmocka_unit_test(test_serve_concurrent_tcp_clients_each_get_their_own_correct_reply),
        cmocka_unit_test(test_serve_concurrent_ipc_clients_each_get_their_own_correct_reply),
        cmocka_unit_test(test_serve_malformed_requests_get_error_replies_and_serving_continues),
        cmocka_unit_test(test_serve_client_that_disconnects_mid_request_leaves_server_serving),
        cmocka_unit_test(test_serve_message_over_the_transport_limit_is_cut_and_serving_continues),
        cmocka_unit_test(test_serve_stop_drains_the_request_in_flight),
        cmocka_unit_test(test_serve_stop_poll_stops_the_loop),
        cmocka_unit_test(test_serve_stop_under_steady_load_returns),
        cmocka_unit_test(test_serve_create_refuses_bad_config_and_busy_address),
        cmocka_unit_test(test_client_without_server_times_out),
        cmocka_unit_test(test_mxclient_cli_sends_safetensors_and_writes_the_reply),
        cmocka_unit_test(test_serve_sigterm_stops_the_loop),
    };
    return cmocka_run_group_tests(tests, pipeline_setup, pipeline_teardown);
}
