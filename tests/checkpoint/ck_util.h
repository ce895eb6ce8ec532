/* Helpers for the checkpoint tests: temp dirs and hand-built safetensors files. */
#ifndef MXEP_TESTS_CK_UTIL_H
#define MXEP_TESTS_CK_UTIL_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *name;
    const char *dtype; /* written as is (tests may write bad ones) */
    int ndim;
    int64_t shape[4];
    const void *data;
    size_t nbytes;
} ck_tensor_t;

/* A fresh directory under $TMPDIR (or /tmp); the caller frees the string. */
char *ck_tmpdir(const char *tag);
/* Removes a directory tree of plain files and subdirectories. */
void ck_rmtree(const char *dir);
/* dir/name as a malloc'd string. */
char *ck_path(const char *dir, const char *name);
/* Writes a file with the given bytes / text. */
void ck_write_bytes(const char *path, const void *data, size_t n);
void ck_write_text(const char *path, const char *text);
/* Writes a well-formed safetensors file from the tensors, in order. */
void ck_write_st(const char *path, const ck_tensor_t *t, int n);
/* Writes a safetensors file whose header is exactly `header` followed by `data_bytes` bytes of 0x5A. */
void ck_write_raw_st(const char *path, const char *header, size_t data_bytes);
uint64_t ck_fnv(const void *data, size_t n);
/* Deterministic filler bytes. */
void ck_fill(void *dst, size_t n, uint64_t seed);

#endif
