#include "mxep/log.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static int level = -1; /* -1: not read from MXEP_LOG yet */
static int rank = -1;
static char host[64];
static FILE *sink;

int mx_log_level_parse(const char *text, mx_log_level_t *level_p)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    if (!text)
        return -1;
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(text, names[i]) == 0) {
            *level_p = (mx_log_level_t)i;
            return 0;
        }
    }
    return -1;
}

mx_log_level_t mx_log_get_level(void)
{
    if (level < 0) {
        const char *env = getenv("MXEP_LOG");
        mx_log_level_t parsed = MX_LOG_INFO;
        level = MX_LOG_INFO;
        if (env && *env) {
            if (mx_log_level_parse(env, &parsed) == 0)
                level = (int)parsed;
            else
                mx_log(MX_LOG_WARN, "log", "MXEP_LOG=%s is not one of error|warn|info|debug; using info", env);
        }
    }
    return (mx_log_level_t)level;
}

void mx_log_set_level(mx_log_level_t lvl) { level = (int)lvl; }
void mx_log_set_rank(int r) { rank = r; }
void mx_log_set_sink(FILE *f) { sink = f; }

void mx_log_set_host(const char *h)
{
    if (!h) {
        host[0] = '\0';
        return;
    }
    snprintf(host, sizeof host, "%s", h);
}

int mx_log_enabled(mx_log_level_t lvl) { return (int)lvl <= (int)mx_log_get_level(); }

void mx_log(mx_log_level_t lvl, const char *module, const char *fmt, ...)
{
    static const char *const tags[] = {"error: ", "warning: ", "", ""};
    char line[2048];
    int n;
    va_list ap;

    if (!mx_log_enabled(lvl))
        return;
    if (!host[0]) {
        if (gethostname(host, sizeof host - 1) != 0)
            snprintf(host, sizeof host, "?");
        host[sizeof host - 1] = '\0';
    }
    if (rank >= 0)
        n = snprintf(line, sizeof line, "[mxep r%d %s %s] %s", rank, host, module ? module : "-", tags[lvl]);
    else
        n = snprintf(line, sizeof line, "[mxep %s %s] %s", host, module ? module : "-", tags[lvl]);
    if (n < 0 || (size_t)n >= sizeof line)
        n = 0;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(sink ? sink : stderr, "%s\n", line);
    fflush(sink ? sink : stderr);
}
