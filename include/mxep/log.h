/* mxep: log lines carry rank, host and module:  [mxep r3 host worker] text
 * The level comes from MXEP_LOG=error|warn|info|debug (default info) unless set
 * with mx_log_set_level(). Output goes to stderr (or the sink set for tests). */
#ifndef MXEP_LOG_H
#define MXEP_LOG_H

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { MX_LOG_ERROR = 0, MX_LOG_WARN = 1, MX_LOG_INFO = 2, MX_LOG_DEBUG = 3 } mx_log_level_t;

/* Parses "error", "warn", "info", "debug" (case-insensitive). Returns 0 and
 * writes *level_p on success, -1 for anything else. */
int mx_log_level_parse(const char *text, mx_log_level_t *level_p);

/* Reads MXEP_LOG once; an unknown value keeps the default and warns once. */
mx_log_level_t mx_log_get_level(void);
void mx_log_set_level(mx_log_level_t level);

/* Identity printed in every line: rank (-1 = not in a job) and host name. */
void mx_log_set_rank(int rank);
void mx_log_set_host(const char *host);

/* Where lines go (NULL = stderr). For tests. */
void mx_log_set_sink(FILE *sink);

int mx_log_enabled(mx_log_level_t level);

void mx_log(mx_log_level_t level, const char *module, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

#define MX_LOG_E(mod, ...) mx_log(MX_LOG_ERROR, (mod), __VA_ARGS__)
#define MX_LOG_W(mod, ...) mx_log(MX_LOG_WARN, (mod), __VA_ARGS__)
#define MX_LOG_I(mod, ...) mx_log(MX_LOG_INFO, (mod), __VA_ARGS__)
#define MX_LOG_D(mod, ...) \
    do { if (mx_log_enabled(MX_LOG_DEBUG)) mx_log(MX_LOG_DEBUG, (mod), __VA_ARGS__); } while (0)

#ifdef __cplusplus
}
#endif
#endif
