#include "mxep/status.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static _Thread_local char detail[MX_ERROR_DETAIL_MAX];
static _Thread_local mx_status_t last_status = MX_OK;
static _Thread_local int relayed; /* the detail tells of another process's failure */

const char *mx_status_str(mx_status_t status)
{
    switch (status) {
    case MX_OK: return "MX_OK";
    case MX_ERR_INVALID: return "MX_ERR_INVALID";
    case MX_ERR_NOMEM: return "MX_ERR_NOMEM";
    case MX_ERR_IO: return "MX_ERR_IO";
    case MX_ERR_FORMAT: return "MX_ERR_FORMAT";
    case MX_ERR_UNSUPPORTED: return "MX_ERR_UNSUPPORTED";
    case MX_ERR_NO_DEVICE: return "MX_ERR_NO_DEVICE";
    case MX_ERR_TRANSPORT: return "MX_ERR_TRANSPORT";
    case MX_ERR_TIMEOUT: return "MX_ERR_TIMEOUT";
    case MX_ERR_INTERNAL: return "MX_ERR_INTERNAL";
    }
    return "MX_ERR_UNKNOWN";
}

static mx_status_t error_vset(mx_status_t status, int relay, const char *fmt, va_list ap)
{
    vsnprintf(detail, sizeof detail, fmt, ap);
    last_status = status;
    relayed = relay;
    return status;
}

mx_status_t mx_error_set(mx_status_t status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_vset(status, 0, fmt, ap);
    va_end(ap);
    return status;
}

mx_status_t mx_error_relay(mx_status_t status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_vset(status, 1, fmt, ap);
    va_end(ap);
    return status;
}

int mx_error_relayed(void)
{
    return relayed;
}

mx_status_t mx_error_prefix(mx_status_t status, const char *fmt, ...)
{
    char head[MX_ERROR_DETAIL_MAX];
    char old[MX_ERROR_DETAIL_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    size_t hl = strnlen(head, sizeof head - 1);
    memcpy(old, detail, sizeof old);
    memcpy(detail, head, hl);
    size_t ol = strnlen(old, sizeof old - 1);
    if (ol > sizeof detail - 1 - hl)
        ol = sizeof detail - 1 - hl;
    memcpy(detail + hl, old, ol);
    detail[hl + ol] = '\0';
    last_status = status;
    return status;
}

const char *mx_error_detail(void) { return detail; }

mx_status_t mx_error_last(void) { return last_status; }

void mx_error_clear(void)
{
    detail[0] = '\0';
    last_status = MX_OK;
    relayed = 0;
}

mx_status_t mx_output_path_check(const char *what, const char *path)
{
    if (!path || !*path)
        return mx_error_set(MX_ERR_INVALID, "%s '': expected a file path", what);
    struct stat sb;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode))
        return mx_error_set(MX_ERR_INVALID, "%s %s: %s, expected a file path", what, path,
                            S_ISDIR(sb.st_mode) ? "is a directory" : "is not a regular file");
    const char *slash = strrchr(path, '/');
    char dir[4096];
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else if ((size_t)(slash - path) < sizeof dir)
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    else
        return mx_error_set(MX_ERR_INVALID, "%s: path too long", what);
    if (stat(dir, &sb) != 0)
        return mx_error_set(MX_ERR_INVALID, "%s %s: folder %s: %s", what, path, dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return mx_error_set(MX_ERR_INVALID, "%s %s: %s is not a folder", what, path, dir);
    if (access(dir, W_OK | X_OK) != 0)
        return mx_error_set(MX_ERR_INVALID, "%s %s: folder %s is not writable: %s", what, path, dir, strerror(errno));
    return MX_OK;
}
