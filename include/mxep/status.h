/* mxep: status codes and the thread-local error detail shared by every module.
 *
 * Functions return mx_status_t (MX_OK = 0, negative = error). The function that
 * first detects an error records a detail message with mx_error_set() naming the
 * thing at fault (file, tensor, flag, rank) and what was expected; callers pass
 * the status on without overwriting the detail. */
#ifndef MXEP_STATUS_H
#define MXEP_STATUS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    MX_OK = 0,
    MX_ERR_INVALID = -1,     /* bad argument, shape, flag */
    MX_ERR_NOMEM = -2,       /* allocation failed */
    MX_ERR_IO = -3,          /* open/read/write/mmap failed */
    MX_ERR_FORMAT = -4,      /* malformed file or data */
    MX_ERR_UNSUPPORTED = -5, /* valid but not supported here */
    MX_ERR_NO_DEVICE = -6,   /* the device a backend needs is absent */
    MX_ERR_TRANSPORT = -7,   /* moving bytes between ranks failed */
    MX_ERR_TIMEOUT = -8,     /* a peer did not answer in time */
    MX_ERR_INTERNAL = -9     /* a bug: an invariant broke */
} mx_status_t;

#define MX_ERROR_DETAIL_MAX 1024

/* Short constant name of a status ("MX_ERR_FORMAT"); never NULL. */
const char *mx_status_str(mx_status_t status);

/* Records a printf-style detail message for this thread and returns `status`,
 * so a failing path can write `return mx_error_set(MX_ERR_INVALID, "...")`. */
mx_status_t mx_error_set(mx_status_t status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Prepends context ("loading layer 3: ") to this thread's detail message and
 * returns `status`. */
mx_status_t mx_error_prefix(mx_status_t status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* This thread's last detail message ("" when none); valid until the next set. */
const char *mx_error_detail(void);
/* mx_error_set for a failure that happened in another process (rank) and is only
 * passed on here; mx_error_relayed() tells whether the current detail is such
 * (mx_error_set and mx_error_clear reset it, mx_error_prefix keeps it), so that
 * a layer that adds its own context (e.g. which rows were this rank's) adds it
 * only to its own failures. */
mx_status_t mx_error_relay(mx_status_t status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int mx_error_relayed(void);

/* The status recorded with the last detail (MX_OK when none). */
mx_status_t mx_error_last(void);

void mx_error_clear(void);

/* The check a command makes on an output file path (`what`: its option, e.g.
 * "--json") before long work, so that a path that cannot be written fails at
 * once, not after the run: not empty, not an existing directory or other
 * non-regular file, its folder an existing folder this process can write.
 * MX_ERR_INVALID naming the option, the path and why. */
mx_status_t mx_output_path_check(const char *what, const char *path);

#ifdef __cplusplus
}
#endif
#endif
