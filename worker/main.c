/* mxworker: the main job. `mpirun -n N mxworker [bench|run|info|serve] ...` */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <signal.h>
#include <unistd.h>

#include <mpi.h>

#include "worker_internal.h"

static int g_rank, g_timeout;

/* --timeout: the last resort against a hang. Prints one line, then MPI_Abort
 * (which mpirun turns into the end of every rank). */
static void on_alarm(int sig)
{
    (void)sig;
    char line[160];
    int n = snprintf(line, sizeof line,
                     "mxworker: rank %d: the job did not finish within --timeout %d s; aborting every rank\n", g_rank,
                     g_timeout);
    if (n > 0)
        (void)!write(2, line, (size_t)n);
    MPI_Abort(MPI_COMM_WORLD, 124);
    _exit(124);
}

int main(int argc, char **argv)
{
    /* OpenMP threads compute and copy; only this thread calls MPI */
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm comm = MPI_COMM_WORLD;
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    int rank = 0;
    MPI_Comm_rank(comm, &rank);
    wk_opts_t o;
    char msg[512] = "";
    int pr = wk_opts_parse(argc, argv, &o, msg, sizeof msg, rank == 0);
    /* every rank parsed its own argv: agree (a flag bad on one rank only ends the job too) */
    int worst = 0;
    MPI_Allreduce(&pr, &worst, 1, MPI_INT, MPI_MAX, comm);
    if (worst != 0) {
        mx_status_t st = pr == 2 ? mx_error_set(MX_ERR_INVALID, "%s", msg) : MX_OK;
        if (worst == 2) {
            wk_agree(comm, st, "parsing the command line");
        } else if (pr != 1 && rank == 0) {
            fprintf(stderr, "mxworker: some ranks were given --help and others not; every rank must run the same "
                            "command\n");
        }
        MPI_Finalize();
        return worst == 2 ? 2 : (pr == 1 ? 0 : 2);
    }
    if (o.timeout > 0) {
        g_rank = rank;
        g_timeout = o.timeout;
        signal(SIGALRM, on_alarm);
        alarm((unsigned)o.timeout);
    }
    int rc;
    if (o.cmd == WK_CMD_INFO) {
        rc = wk_cmd_info(comm, &o);
    } else {
        wk_job_t job;
        if (wk_job_open(comm, &o, 1, &job) != MX_OK) {
            rc = 1;
        } else {
            rc = o.cmd == WK_CMD_BENCH   ? wk_cmd_bench(&job)
                 : o.cmd == WK_CMD_SERVE ? wk_cmd_serve(&job)
                                         : wk_cmd_run(&job);
            wk_job_close(&job);
        }
    }
    MPI_Finalize();
    return rc;
}
