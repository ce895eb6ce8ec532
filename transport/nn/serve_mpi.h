/* mxep serve over an MPI job: rank 0 runs the front door (mx_serve_run), every
 * request is spread over all ranks of `comm`, the other ranks follow. This is
 * what `mxworker serve --listen URL` calls on EVERY rank of the job.
 *
 *   rank 0                                    ranks 1..R-1
 *   mx_serve_create(url) ... mx_serve_run     wait for a command (MPI_Ibcast, tested every 1 ms)
 *     per request: Bcast {RUN, layer, T}  ->  Scatterv of the token rows
 *       (even contiguous split, the first T % R ranks one more row)
 *       layer(layer, my rows)  on every rank, collectively
 *       Gatherv of the output rows to rank 0, Allreduce of the status
 *       (MINLOC: the failing rank Bcasts its error detail for the reply)
 *   stop (mx_serve_stop / SIGTERM / max_requests): the loop drains, then
 *     Bcast {STOP}                        ->  return MX_OK
 *   a follower that gets SIGTERM/SIGINT while it waits sends rank 0 one
 *     message on a duplicate of comm; rank 0's loop (mx_serve_config_t.stop_poll)
 *     takes it as its own stop
 *
 * The `layer` callback is collective: it is called on every rank with that
 * rank's slice, global tokens [first, first + n_local) of t_global (n_local may
 * be 0; the split is the one of wk_split: contiguous, the first t_global % R
 * ranks one row more), and must run the MoE layer across the ranks (route,
 * dispatch, experts, combine), writing out_local [n_local x hidden] BF16.
 * Call mx_serve_signals_install() on every rank first: mpirun forwards SIGTERM
 * to all ranks, and the followers must not die from it (they wait for rank 0's
 * STOP); a signal to one follower alone stops the job too. If rank 0 cannot listen (address busy), every rank returns that error. */
#ifndef MXEP_SERVE_MPI_H
#define MXEP_SERVE_MPI_H

#include <mpi.h>

#include "mxep/serve.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef mx_status_t (*mx_serve_layer_fn)(int layer, const uint16_t *x_local, size_t n_local, size_t first,
                                         size_t t_global, size_t hidden, uint16_t *out_local, void *arg);

/* Collective over comm. config is read on rank 0 only (url, hidden, n_layers,
 * max_tokens, poll_ms, max_requests; its compute and stop_poll are ignored);
 * other ranks may pass NULL. Returns MX_OK after a stop, or the error that
 * ended the job (the same status on every rank). stats_p (may be NULL) gets
 * rank 0's counts on rank 0. */
mx_status_t mx_serve_mpi_run(MPI_Comm comm, const mx_serve_config_t *config, mx_serve_layer_fn layer, void *arg,
                             mx_serve_stats_t *stats_p);

#ifdef __cplusplus
}
#endif
#endif
