/* libFuzzer target for the front door's wire decoders: any bytes must give
 * MX_OK with a consistent view or an error, never a crash or an out-of-bounds
 * read; a request that decodes must re-encode to the same bytes. */
#include <stdlib.h>
#include <string.h>

#include "mxep/serve.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Own copy of exactly `size` bytes, so ASan sees any read past the end. */
    uint8_t *msg = malloc(size ? size : 1);
    if (!msg)
        return 0;
    memcpy(msg, data, size);
    mx_serve_wire_request_t req;
    uint64_t id = 0;
    if (mx_serve_wire_request_decode(msg, size, 0, 0, &req, &id) == MX_OK) {
        size_t n = mx_serve_wire_request_size(req.dtype, req.n_tokens, req.hidden), written = 0;
        if (n != size)
            abort();
        uint8_t *again = malloc(n);
        if (again && (mx_serve_wire_request_encode(&req, again, n, &written) != MX_OK || written != size ||
                      memcmp(again, msg, size) != 0))
            abort();
        free(again);
    }
    mx_serve_wire_reply_t rep;
    if (mx_serve_wire_reply_decode(msg, size, &rep) == MX_OK) {
        volatile uint8_t sink = 0;
        for (size_t i = 0; i < rep.message_bytes; i++)
            sink ^= (uint8_t)rep.message[i];
        if (rep.payload_bytes)
            sink ^= ((const uint8_t *)rep.payload)[rep.payload_bytes - 1];
        (void)sink;
    }
    free(msg);
    return 0;
}
