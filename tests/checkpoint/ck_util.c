#include "ck_util.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *ck_tmpdir(const char *tag)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    char *p = malloc(strlen(base) + strlen(tag) + 32);
    sprintf(p, "%s/mxep-%s-XXXXXX", base, tag);
    if (!mkdtemp(p)) {
        perror("mkdtemp");
        abort();
    }
    return p;
}

void ck_rmtree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char *p = ck_path(dir, e->d_name);
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
            ck_rmtree(p);
        else
            unlink(p);
        free(p);
    }
    closedir(d);
    rmdir(dir);
}

char *ck_path(const char *dir, const char *name)
{
    char *p = malloc(strlen(dir) + strlen(name) + 2);
    sprintf(p, "%s/%s", dir, name);
    return p;
}

void ck_write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n)) {
        perror(path);
        abort();
    }
    fclose(f);
}

void ck_write_text(const char *path, const char *text)
{
    ck_write_bytes(path, text, strlen(text));
}

static void write_header_and_data(const char *path, const char *header, const void *const *datas, const size_t *sizes,
                                  int n, size_t filler)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        abort();
    }
    uint64_t len = strlen(header);
    uint8_t lb[8];
    for (int i = 0; i < 8; i++)
        lb[i] = (uint8_t)(len >> (8 * i));
    fwrite(lb, 1, 8, f);
    fwrite(header, 1, len, f);
    for (int i = 0; i < n; i++)
        if (sizes[i])
            fwrite(datas[i], 1, sizes[i], f);
    for (size_t i = 0; i < filler; i++)
        fputc(0x5A, f);
    fclose(f);
}

void ck_write_st(const char *path, const ck_tensor_t *t, int n)
{
    size_t cap = 256 + (size_t)n * 256;
    char *h = malloc(cap);
    size_t o = (size_t)sprintf(h, "{");
    size_t off = 0;
    const void **datas = malloc(sizeof *datas * (size_t)(n ? n : 1));
    size_t *sizes = malloc(sizeof *sizes * (size_t)(n ? n : 1));
    for (int i = 0; i < n; i++) {
        o += (size_t)sprintf(h + o, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "", t[i].name, t[i].dtype);
        for (int d = 0; d < t[i].ndim; d++)
            o += (size_t)sprintf(h + o, "%s%lld", d ? "," : "", (long long)t[i].shape[d]);
        o += (size_t)sprintf(h + o, "],\"data_offsets\":[%zu,%zu]}", off, off + t[i].nbytes);
        off += t[i].nbytes;
        datas[i] = t[i].data;
        sizes[i] = t[i].nbytes;
    }
    sprintf(h + o, "}");
    write_header_and_data(path, h, datas, sizes, n, 0);
    free(h);
    free(datas);
    free(sizes);
}

void ck_write_raw_st(const char *path, const char *header, size_t data_bytes)
{
    write_header_and_data(path, header, NULL, NULL, 0, data_bytes);
}

uint64_t ck_fnv(const void *data, size_t n)
{
    const uint8_t *p = data;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

void ck_fill(void *dst, size_t n, uint64_t seed)
{
    uint8_t *p = dst;
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)(x >> 24);
    }
}
