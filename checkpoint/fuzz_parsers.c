/* libFuzzer target: the safetensors header parser, the sharded index parser
 * and the config.json normalizer. The first byte picks the parser (0, 1, 2 mod
 * 3); the rest is the input. Each must return a status, never crash or leak. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int sel = data[0] % 3;
    data++;
    size--;
    /* a private copy so reads past the end are caught exactly */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    if (sel == 0) {
        mx_st_tensor_t *t = NULL;
        char *pool = NULL;
        int n = 0;
        if (mxi_st_parse("fuzz.safetensors", buf, size, &t, &n, &pool) == MX_OK) {
            for (int i = 0; i < n; i++) /* touch every tensor's bytes: they must lie inside the buffer */
                if (t[i].nbytes && (t[i].data < buf || t[i].data + t[i].nbytes > buf + size))
                    abort();
            free(t);
            free(pool);
        }
    } else if (sel == 1) {
        mxi_index_t x;
        if (mxi_index_parse("fuzz.index.json", (const char *)buf, size, &x) == MX_OK)
            mxi_index_fini(&x);
    } else {
        mx_model_config_t c;
        (void)mx_ckpt_config_parse((const char *)buf, size, "fuzz.config.json", &c);
    }
    free(buf);
    return 0;
}
