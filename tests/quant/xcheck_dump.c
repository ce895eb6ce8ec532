/* xcheck_dump: run raw values through mxep's quant/ codecs, for the
 * independent cross-check against ml_dtypes (tests/quant/xcheck_ml_dtypes.py).
 *
 *   xcheck_dump FORMAT encode IN OUT   IN: little-endian float32s; OUT: codes
 *   xcheck_dump FORMAT decode IN OUT   IN: codes; OUT: float32 bit patterns
 *
 * Codes are 1 byte (4- and 8-bit formats, E2M1 in the low nibble) or 2 bytes
 * little-endian (bf16, f16). The mxfp4 scale "formats" only encode: amax ->
 * E8M0 byte through that rule. Exit status 0 on success, 2 on bad usage or
 * I/O, with the reason on stderr. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxep/quant.h"

typedef struct {
    const char *name;
    int code_bytes;
    int can_decode;
    const char *what;
} fmt_t;

static const fmt_t formats[] = {
    {"e2m1", 1, 1, "FP4 E2M1 (saturating at +-6)"},
    {"e8m0", 1, 1, "E8M0 scale byte (decode only: mxep has no float -> e8m0 cast)"},
    {"e4m3fn", 1, 1, "FP8 E4M3FN (saturating at +-448)"},
    {"e4m3fnuz", 1, 1, "FP8 E4M3FNUZ (saturating at +-240)"},
    {"e5m2", 1, 1, "FP8 E5M2, IEEE overflow to Inf (saturate = 0)"},
    {"e5m2sat", 1, 1, "FP8 E5M2, saturating at +-57344 (saturate = 1)"},
    {"bf16", 2, 1, "bfloat16"},
    {"f16", 2, 1, "IEEE binary16"},
    {"scale_floor", 1, 0, "MXFP4 scale byte for amax, rule floor"},
    {"scale_round_up", 1, 0, "MXFP4 scale byte for amax, rule round_up"},
    {"scale_even", 1, 0, "MXFP4 scale byte for amax, rule even"},
    {"scale_rceil", 1, 0, "MXFP4 scale byte for amax, rule rceil"},
};
#define NFORMATS (sizeof formats / sizeof formats[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: xcheck_dump FORMAT encode|decode IN OUT\n"
               "  encode: IN holds little-endian float32 values, OUT gets one code each\n"
               "  decode: IN holds codes, OUT gets the float32 bit pattern of each\n"
               "Codes are 1 byte, or 2 bytes little-endian for bf16 and f16.\n"
               "FORMAT:\n");
    for (size_t i = 0; i < NFORMATS; i++)
        fprintf(f, "  %-15s %s\n", formats[i].name, formats[i].what);
}

static void *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "xcheck_dump: cannot open %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 20, n = 0;
    unsigned char *buf = malloc(cap);
    while (buf != NULL) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap)
            break;
        unsigned char *nb = realloc(buf, cap * 2);
        if (nb == NULL) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    int bad = ferror(f);
    fclose(f);
    if (buf == NULL || bad) {
        fprintf(stderr, "xcheck_dump: cannot read %s\n", path);
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int main(int argc, char **argv)
{
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc != 5) {
        usage(stderr);
        return 2;
    }
    const fmt_t *fmt = NULL;
    for (size_t i = 0; i < NFORMATS; i++)
        if (strcmp(argv[1], formats[i].name) == 0)
            fmt = &formats[i];
    if (fmt == NULL) {
        fprintf(stderr, "xcheck_dump: unknown format \"%s\" (see --help)\n", argv[1]);
        return 2;
    }
    int encode = strcmp(argv[2], "encode") == 0;
    if (!encode && strcmp(argv[2], "decode") != 0) {
        fprintf(stderr, "xcheck_dump: direction \"%s\": expected encode or decode\n", argv[2]);
        return 2;
    }
    if (!encode && !fmt->can_decode) {
        fprintf(stderr, "xcheck_dump: format %s only encodes\n", fmt->name);
        return 2;
    }
    if (encode && strcmp(fmt->name, "e8m0") == 0) {
        fprintf(stderr, "xcheck_dump: mxep defines no float -> e8m0 cast; use scale_floor, scale_round_up, "
                        "scale_even or scale_rceil\n");
        return 2;
    }
    size_t len;
    unsigned char *in = read_all(argv[3], &len);
    if (in == NULL)
        return 2;
    size_t in_size = encode ? 4 : (size_t)fmt->code_bytes;
    if (len % in_size != 0) {
        fprintf(stderr, "xcheck_dump: %s has %zu bytes, not a multiple of %zu\n", argv[3], len, in_size);
        free(in);
        return 2;
    }
    size_t n = len / in_size;
    size_t out_size = encode ? (size_t)fmt->code_bytes : 4;
    unsigned char *out = malloc(n * out_size + 1);
    if (out == NULL) {
        fprintf(stderr, "xcheck_dump: out of memory for %zu values\n", n);
        free(in);
        return 2;
    }
    const char *f = fmt->name;
    for (size_t i = 0; i < n; i++) {
        if (encode) {
            uint32_t u = le32(in + 4 * i);
            float x;
            memcpy(&x, &u, 4);
            uint32_t c;
            if (!strcmp(f, "e2m1"))
                c = mx_quant_e2m1_from_f32(x);
            else if (!strcmp(f, "e4m3fn"))
                c = mx_quant_e4m3fn_from_f32(x);
            else if (!strcmp(f, "e4m3fnuz"))
                c = mx_quant_e4m3fnuz_from_f32(x);
            else if (!strcmp(f, "e5m2"))
                c = mx_quant_e5m2_from_f32(x, 0);
            else if (!strcmp(f, "e5m2sat"))
                c = mx_quant_e5m2_from_f32(x, 1);
            else if (!strcmp(f, "bf16"))
                c = mx_quant_bf16_from_f32(x);
            else if (!strcmp(f, "f16"))
                c = mx_quant_f16_from_f32(x);
            else if (!strcmp(f, "scale_floor"))
                c = mx_quant_mxfp4_scale(x, MX_SCALE_FLOOR);
            else if (!strcmp(f, "scale_round_up"))
                c = mx_quant_mxfp4_scale(x, MX_SCALE_ROUND_UP);
            else if (!strcmp(f, "scale_even"))
                c = mx_quant_mxfp4_scale(x, MX_SCALE_EVEN);
            else
                c = mx_quant_mxfp4_scale(x, MX_SCALE_RCEIL);
            out[out_size * i] = (unsigned char)(c & 0xFF);
            if (out_size == 2)
                out[out_size * i + 1] = (unsigned char)(c >> 8);
        } else {
            uint32_t c = in[in_size * i];
            if (in_size == 2)
                c |= (uint32_t)in[in_size * i + 1] << 8;
            float x;
            if (!strcmp(f, "e2m1"))
                x = mx_quant_e2m1_to_f32((uint8_t)c);
            else if (!strcmp(f, "e8m0"))
                x = mx_quant_e8m0_to_f32((uint8_t)c);
            else if (!strcmp(f, "e4m3fn"))
                x = mx_quant_e4m3fn_to_f32((uint8_t)c);
            else if (!strcmp(f, "e4m3fnuz"))
                x = mx_quant_e4m3fnuz_to_f32((uint8_t)c);
            else if (!strcmp(f, "e5m2") || !strcmp(f, "e5m2sat"))
                x = mx_quant_e5m2_to_f32((uint8_t)c);
            else if (!strcmp(f, "bf16"))
                x = mx_quant_bf16_to_f32((uint16_t)c);
            else
                x = mx_quant_f16_to_f32((uint16_t)c);
            uint32_t u;
            memcpy(&u, &x, 4);
            for (int b = 0; b < 4; b++)
                out[4 * i + (size_t)b] = (unsigned char)(u >> (8 * b));
        }
    }
    free(in);
    FILE *fo = fopen(argv[4], "wb");
    if (fo == NULL) {
        fprintf(stderr, "xcheck_dump: cannot create %s: %s\n", argv[4], strerror(errno));
        free(out);
        return 2;
    }
    size_t wrote = fwrite(out, out_size, n, fo);
    int bad = fclose(fo) != 0 || wrote != n;
    free(out);
    if (bad) {
        fprintf(stderr, "xcheck_dump: cannot write %s\n", argv[4]);
        remove(argv[4]);
        return 2;
    }
    return 0;
}
