/* mxep serve: the wire codec of docs/PROTOCOL.md (little-endian, fixed headers). */
#include <string.h>

#include "mxep/serve.h"

static void put16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}
static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static uint16_t get16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}
static uint32_t get32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}
static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

size_t mx_serve_wire_dtype_size(uint32_t dtype)
{
    switch (dtype) {
    case MX_SERVE_WIRE_BF16:
        return 2;
    case MX_SERVE_WIRE_F32:
        return 4;
    default:
        return 0;
    }
}

static const char *dtype_name(uint32_t dtype)
{
    return dtype == MX_SERVE_WIRE_BF16 ? "BF16" : dtype == MX_SERVE_WIRE_F32 ? "F32" : "?";
}

size_t mx_serve_wire_request_size(uint32_t dtype, size_t n_tokens, size_t hidden)
{
    size_t es = mx_serve_wire_dtype_size(dtype);
    if (es == 0 || n_tokens > MX_SERVE_WIRE_MAX_TOKENS || hidden > MX_SERVE_WIRE_MAX_HIDDEN)
        return 0;
    return MX_SERVE_WIRE_REQUEST_HEADER_BYTES + n_tokens * hidden * es;
}

mx_status_t mx_serve_wire_request_encode(const mx_serve_wire_request_t *req, void *buf, size_t buf_size,
                                         size_t *written_p)
{
    if (!req || !buf || !written_p)
        return mx_error_set(MX_ERR_INVALID, "mx_serve_wire_request_encode: NULL argument");
    size_t es = mx_serve_wire_dtype_size(req->dtype);
    if (es == 0)
        return mx_error_set(MX_ERR_INVALID, "request dtype %u: expected 1 (BF16) or 2 (F32)", req->dtype);
    if (req->n_tokens < 1 || req->n_tokens > MX_SERVE_WIRE_MAX_TOKENS || req->hidden < 1 ||
        req->hidden > MX_SERVE_WIRE_MAX_HIDDEN)
        return mx_error_set(MX_ERR_INVALID, "request shape [%u x %u]: expected 1..%u tokens and hidden 1..%u",
                            req->n_tokens, req->hidden, MX_SERVE_WIRE_MAX_TOKENS, MX_SERVE_WIRE_MAX_HIDDEN);
    size_t payload = (size_t)req->n_tokens * req->hidden * es;
    if (req->payload_bytes != payload || (!req->payload && payload))
        return mx_error_set(MX_ERR_INVALID, "request payload of %zu bytes: expected %zu for [%u x %u] %s",
                            req->payload_bytes, payload, req->n_tokens, req->hidden, dtype_name(req->dtype));
    size_t total = MX_SERVE_WIRE_REQUEST_HEADER_BYTES + payload;
    if (buf_size < total)
        return mx_error_set(MX_ERR_INVALID, "request buffer of %zu bytes: expected at least %zu", buf_size, total);
    unsigned char *p = buf;
    put32(p + 0, MX_SERVE_WIRE_REQUEST_MAGIC);
    put16(p + 4, MX_SERVE_WIRE_VERSION);
    put16(p + 6, MX_SERVE_WIRE_REQUEST_HEADER_BYTES);
    put64(p + 8, req->request_id);
    put32(p + 16, req->layer);
    put32(p + 20, req->dtype);
    put32(p + 24, req->n_tokens);
    put32(p + 28, req->hidden);
    put64(p + 32, payload);
    memcpy(p + MX_SERVE_WIRE_REQUEST_HEADER_BYTES, req->payload, payload);
    *written_p = total;
    return MX_OK;
}

mx_status_t mx_serve_wire_request_decode(const void *msg, size_t len, size_t max_tokens, size_t max_hidden,
                                         mx_serve_wire_request_t *req_p, uint64_t *request_id_p)
{
    if (!msg || !req_p)
        return mx_error_set(MX_ERR_INVALID, "mx_serve_wire_request_decode: NULL argument");
    const unsigned char *p = msg;
    if (len >= 16 && request_id_p)
        *request_id_p = get64(p + 8);
    if (len < MX_SERVE_WIRE_REQUEST_HEADER_BYTES)
        return mx_error_set(MX_ERR_FORMAT, "truncated header: request of %zu bytes, expected at least %u", len,
                            MX_SERVE_WIRE_REQUEST_HEADER_BYTES);
    uint32_t magic = get32(p);
    if (magic != MX_SERVE_WIRE_REQUEST_MAGIC)
        return mx_error_set(MX_ERR_FORMAT, "bad magic 0x%08x: expected 0x%08x (\"MXRQ\")", magic,
                            MX_SERVE_WIRE_REQUEST_MAGIC);
    uint16_t version = get16(p + 4), hsize = get16(p + 6);
    if (version != MX_SERVE_WIRE_VERSION)
        return mx_error_set(MX_ERR_UNSUPPORTED, "protocol version %u: this server speaks version %u", version,
                            MX_SERVE_WIRE_VERSION);
    if (hsize != MX_SERVE_WIRE_REQUEST_HEADER_BYTES)
        return mx_error_set(MX_ERR_FORMAT, "header size %u: expected %u for version %u", hsize,
                            MX_SERVE_WIRE_REQUEST_HEADER_BYTES, MX_SERVE_WIRE_VERSION);
    mx_serve_wire_request_t r = {0};
    r.request_id = get64(p + 8);
    r.layer = get32(p + 16);
    r.dtype = get32(p + 20);
    r.n_tokens = get32(p + 24);
    r.hidden = get32(p + 28);
    uint64_t declared = get64(p + 32);
    size_t es = mx_serve_wire_dtype_size(r.dtype);
    if (es == 0)
        return mx_error_set(MX_ERR_FORMAT, "dtype %u: expected 1 (BF16) or 2 (F32)", r.dtype);
    size_t mt = max_tokens ? max_tokens : MX_SERVE_WIRE_MAX_TOKENS,
           mh = max_hidden ? max_hidden : MX_SERVE_WIRE_MAX_HIDDEN;
    if (mt > MX_SERVE_WIRE_MAX_TOKENS)
        mt = MX_SERVE_WIRE_MAX_TOKENS;
    if (mh > MX_SERVE_WIRE_MAX_HIDDEN)
        mh = MX_SERVE_WIRE_MAX_HIDDEN;
    if (r.n_tokens < 1 || r.n_tokens > mt)
        return mx_error_set(MX_ERR_INVALID, "n_tokens %u: expected 1..%zu (oversized or empty batch)", r.n_tokens, mt);
    if (r.hidden < 1 || r.hidden > mh)
        return mx_error_set(MX_ERR_INVALID, "hidden %u: expected 1..%zu", r.hidden, mh);
    size_t payload = (size_t)r.n_tokens * r.hidden * es;
    if (declared != payload)
        return mx_error_set(MX_ERR_FORMAT, "payload_bytes %llu: expected %zu for [%u x %u] %s",
                            (unsigned long long)declared, payload, r.n_tokens, r.hidden, dtype_name(r.dtype));
    if (len - MX_SERVE_WIRE_REQUEST_HEADER_BYTES < payload)
        return mx_error_set(MX_ERR_FORMAT, "truncated payload: %zu bytes after the header, expected %zu",
                            len - MX_SERVE_WIRE_REQUEST_HEADER_BYTES, payload);
    if (len - MX_SERVE_WIRE_REQUEST_HEADER_BYTES > payload)
        return mx_error_set(MX_ERR_FORMAT, "%zu trailing bytes after the payload of %zu bytes",
                            len - MX_SERVE_WIRE_REQUEST_HEADER_BYTES - payload, payload);
    r.payload = p + MX_SERVE_WIRE_REQUEST_HEADER_BYTES;
    r.payload_bytes = payload;
    *req_p = r;
    return MX_OK;
}

size_t mx_serve_wire_reply_size(size_t message_bytes, size_t n_tokens, size_t hidden)
{
    if (message_bytes > MX_SERVE_WIRE_MAX_MESSAGE)
        message_bytes = MX_SERVE_WIRE_MAX_MESSAGE;
    return MX_SERVE_WIRE_REPLY_HEADER_BYTES + message_bytes + n_tokens * hidden * 2;
}

mx_status_t mx_serve_wire_reply_encode(const mx_serve_wire_reply_t *rep, void *buf, size_t buf_size, size_t *written_p)
{
    if (!rep || !buf || !written_p)
        return mx_error_set(MX_ERR_INVALID, "mx_serve_wire_reply_encode: NULL argument");
    size_t mlen = rep->message ? rep->message_bytes : 0;
    if (mlen > MX_SERVE_WIRE_MAX_MESSAGE)
        mlen = MX_SERVE_WIRE_MAX_MESSAGE;
    size_t payload = (size_t)rep->n_tokens * rep->hidden * 2;
    if (rep->payload_bytes != payload || (payload && !rep->payload))
        return mx_error_set(MX_ERR_INVALID, "reply payload of %zu bytes: expected %zu", rep->payload_bytes, payload);
    size_t total = MX_SERVE_WIRE_REPLY_HEADER_BYTES + mlen + payload;
    if (buf_size < total)
        return mx_error_set(MX_ERR_INVALID, "reply buffer of %zu bytes: expected at least %zu", buf_size, total);
    unsigned char *p = buf;
    put32(p + 0, MX_SERVE_WIRE_REPLY_MAGIC);
    put16(p + 4, MX_SERVE_WIRE_VERSION);
    put16(p + 6, MX_SERVE_WIRE_REPLY_HEADER_BYTES);
    put64(p + 8, rep->request_id);
    put32(p + 16, (uint32_t)rep->status);
    put32(p + 20, (uint32_t)mlen);
    put32(p + 24, rep->n_tokens);
    put32(p + 28, rep->hidden);
    put32(p + 32, payload ? MX_SERVE_WIRE_BF16 : 0);
    put32(p + 36, 0);
    put64(p + 40, payload);
    if (mlen)
        memcpy(p + MX_SERVE_WIRE_REPLY_HEADER_BYTES, rep->message, mlen);
    if (payload)
        memcpy(p + MX_SERVE_WIRE_REPLY_HEADER_BYTES + mlen, rep->payload, payload);
    *written_p = total;
    return MX_OK;
}

mx_status_t mx_serve_wire_reply_decode(const void *msg, size_t len, mx_serve_wire_reply_t *rep_p)
{
    if (!msg || !rep_p)
        return mx_error_set(MX_ERR_INVALID, "mx_serve_wire_reply_decode: NULL argument");
    const unsigned char *p = msg;
    if (len < MX_SERVE_WIRE_REPLY_HEADER_BYTES)
        return mx_error_set(MX_ERR_FORMAT, "truncated reply header: %zu bytes, expected at least %u", len,
                            MX_SERVE_WIRE_REPLY_HEADER_BYTES);
    if (get32(p) != MX_SERVE_WIRE_REPLY_MAGIC)
        return mx_error_set(MX_ERR_FORMAT, "bad reply magic 0x%08x: expected 0x%08x (\"MXRP\")", get32(p),
                            MX_SERVE_WIRE_REPLY_MAGIC);
    if (get16(p + 4) != MX_SERVE_WIRE_VERSION || get16(p + 6) != MX_SERVE_WIRE_REPLY_HEADER_BYTES)
        return mx_error_set(MX_ERR_UNSUPPORTED, "reply version %u / header size %u: expected %u / %u", get16(p + 4),
                            get16(p + 6), MX_SERVE_WIRE_VERSION, MX_SERVE_WIRE_REPLY_HEADER_BYTES);
    mx_serve_wire_reply_t r = {0};
    r.request_id = get64(p + 8);
    r.status = (int32_t)get32(p + 16);
    r.message_bytes = get32(p + 20);
    r.n_tokens = get32(p + 24);
    r.hidden = get32(p + 28);
    r.dtype = get32(p + 32);
    uint64_t declared = get64(p + 40);
    if (r.message_bytes > MX_SERVE_WIRE_MAX_MESSAGE)
        return mx_error_set(MX_ERR_FORMAT, "reply message of %zu bytes: at most %u", r.message_bytes,
                            MX_SERVE_WIRE_MAX_MESSAGE);
    if (r.n_tokens > MX_SERVE_WIRE_MAX_TOKENS || r.hidden > MX_SERVE_WIRE_MAX_HIDDEN)
        return mx_error_set(MX_ERR_FORMAT, "reply shape [%u x %u] over the format's limits", r.n_tokens, r.hidden);
    size_t payload = (size_t)r.n_tokens * r.hidden * 2;
    if (declared != payload || (payload && r.dtype != MX_SERVE_WIRE_BF16))
        return mx_error_set(MX_ERR_FORMAT, "reply payload_bytes %llu dtype %u: expected %zu BF16",
                            (unsigned long long)declared, r.dtype, payload);
    if (r.status == MX_OK && payload == 0)
        return mx_error_set(MX_ERR_FORMAT, "reply with status OK but no output");
    if (len != MX_SERVE_WIRE_REPLY_HEADER_BYTES + r.message_bytes + payload)
        return mx_error_set(MX_ERR_FORMAT, "reply of %zu bytes: expected %zu (header + message + payload)", len,
                            MX_SERVE_WIRE_REPLY_HEADER_BYTES + r.message_bytes + payload);
    r.message = (const char *)p + MX_SERVE_WIRE_REPLY_HEADER_BYTES;
    r.payload = payload ? p + MX_SERVE_WIRE_REPLY_HEADER_BYTES + r.message_bytes : NULL;
    r.payload_bytes = payload;
    *rep_p = r;
    return MX_OK;
}

uint16_t mx_serve_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu))
        return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float mx_serve_bf16_to_f32(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
