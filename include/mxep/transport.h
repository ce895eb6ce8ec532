/* mxep transport/: moving bytes between the ranks of one job.
 *
 * A transport is a vtable (mx_transport_ops_t) plus its context, behind an
 * opaque handle. Two collectives are all the coordinator needs:
 *
 *  - exchange_counts: every rank tells every rank how many bytes it will send
 *    (MPI_Alltoall of one uint64 per peer);
 *  - exchange: the payload itself, alltoallv-like, with per-rank byte counts
 *    and displacements on the send side. The receive side is owned by the
 *    transport: data from rank r lands at recv + recv_displs[r], where
 *    recv_displs are the prefix sums of recv_counts in rank order (so the
 *    result is contiguous, source ranks ascending). The received bytes stay
 *    valid until the next exchange or destroy on the same handle.
 *
 * The MPI implementation ("mpi") chooses a path per pair of ranks:
 *  - ranks on the same host (MPI_Comm_split_type SHARED) exchange through an
 *    MPI-3 shared-memory window (MPI_Win_allocate_shared): each rank's region is
 *    its receive buffer, every sender copies its bytes once, straight into the
 *    receiver's region, between two node barriers;
 *  - ranks on other hosts go through MPI_Ialltoallv (receiving into the same
 *    region), overlapped with the shared-memory copies;
 *  - when every rank is alone on its host, one blocking MPI_Alltoallv into the
 *    rank's region (nothing to copy, no window barriers).
 * The copies within a host use non-temporal stores for pieces of 64 KiB and
 * more (a layer's receive regions are cold: plain stores would first read every
 * destination line; MXEP_SHM_COPY=memcpy|stream|auto, auto = stream) and are
 * split over opts.copy_threads OpenMP threads.
 * MX_EXCHANGE_ALLTOALLV forces plain MPI_Alltoallv for every pair (a private
 * receive buffer, no window); MX_EXCHANGE_SHM demands the shared-memory path and
 * is refused (MX_ERR_UNSUPPORTED) when some peer is on another host; AUTO uses
 * the window whenever a host holds more than one rank of the job.
 *
 * Zero-copy rounds: the caller writes its bytes where the peer reads them,
 * which saves the pass over the bytes that exchange() makes (a layer already
 * writes them once: packing the tokens, or the expert outputs):
 *  - push (dispatch): after exchange_counts, push_begin says where to write the
 *    bytes for each rank (on the shm path: straight into the receiver's region);
 *    the caller writes them all, then push_end completes the round and gives
 *    what exchange() gives;
 *  - pull (combine): pull_begin gives one buffer to write every reply into (rank
 *    r's at send_displs[r]; on the shm path it lies in this rank's part of the
 *    window); the caller writes them, then pull_end gives, per rank r, where
 *    r's bytes for this rank are, to read them in place.
 * Pairs on other hosts (and the alltoallv mode, and transports without these
 * calls) go through a staging buffer and the usual messages, so every path
 * gives the same bytes. A round's results stay valid until the next round of
 * any kind (exchange, push or pull) on the handle.
 *
 * All functions on a handle are collective over its communicator, except the
 * getters. A failing collective returns MX_ERR_TRANSPORT naming the MPI call;
 * argument errors are detected locally before any communication where possible.
 * The transport never looks at what the bytes mean. */
#ifndef MXEP_TRANSPORT_H
#define MXEP_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include <mpi.h>

#include "mxep/hostmem.h"
#include "mxep/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    MX_EXCHANGE_AUTO = 0,      /* shm within a host when it helps, alltoallv across hosts */
    MX_EXCHANGE_ALLTOALLV = 1, /* plain MPI_Alltoallv for every pair */
    MX_EXCHANGE_SHM = 2        /* shared memory; every peer must share this host */
} mx_exchange_mode_t;

const char *mx_exchange_mode_name(mx_exchange_mode_t mode); /* "auto", "alltoallv", "shm" */
/* "auto" | "alltoallv" | "shm" (case-insensitive); MX_ERR_INVALID naming the text otherwise. */
mx_status_t mx_exchange_mode_parse(const char *text, mx_exchange_mode_t *mode_p);

typedef struct {
    mx_exchange_mode_t mode;
    size_t initial_bytes; /* receive capacity reserved at create (per rank); 0 = 1 MiB. Grows on demand. */
    int copy_threads;     /* threads that copy the bytes between ranks of one host (OpenMP); 0 or 1 = the caller's
                             thread only. MPI is called from the caller's thread only (MPI_THREAD_FUNNELED). */
} mx_transport_opts_t;

typedef struct mx_transport *mx_transport_h;

/* Where this rank's exchange time went, summed over the calls since create or
 * the last reset. "Waiting" is time spent until other ranks got somewhere
 * (their skew, plus the synchronization itself); "moving" is time spent while
 * this rank's bytes were being moved. The phases an implementation does not
 * have stay 0; the handle itself measures the calls and totals. */
typedef struct {
    uint64_t exchanges;    /* exchange() calls */
    uint64_t counts;       /* exchange_counts() calls */
    double counts_ms;      /* in exchange_counts() */
    double total_ms;       /* in exchange() */
    double arrive_ms;      /* waiting: until every local peer had entered the round (shm: first node barrier) */
    double copy_ms;        /* moving: copying this rank's bytes into the local peers' regions */
    double remote_ms;      /* moving (and waiting): the MPI_(I)alltoallv pairs after the copies (cross-host pairs;
                              alltoallv mode: every pair) */
    double depart_ms;      /* waiting: until every local peer had finished copying (shm: second node barrier) */
    uint64_t local_bytes;  /* sent through shared memory */
    uint64_t remote_bytes; /* sent through MPI (or UCX) messages, self excluded */
} mx_transport_stats_t;

/* The vtable an implementation provides. ctx is the implementation's own state. */
typedef struct mx_transport_ops {
    const char *name; /* "mpi", "ucx" */
    mx_status_t (*create)(MPI_Comm comm, const mx_transport_opts_t *opts, void **ctx_p);
    void (*destroy)(void *ctx);
    /* send_counts[size] bytes to each rank -> recv_counts_p[size] bytes from each rank. */
    mx_status_t (*exchange_counts)(void *ctx, const size_t *send_counts, size_t *recv_counts_p);
    /* See the header comment. recv_counts must be what exchange_counts returned
     * for the same send_counts. *recv_p and recv_displs_p[size] are outputs. */
    mx_status_t (*exchange)(void *ctx, const void *send, const size_t *send_counts, const size_t *send_displs,
                            const size_t *recv_counts, const uint8_t **recv_p, size_t *recv_displs_p);
    /* Which path this handle uses: "shm", "alltoallv", "shm+alltoallv". */
    const char *(*path)(const void *ctx);
    /* Optional: adds the phases it measured (arrive/copy/remote/depart, bytes)
     * since its last reset into *stats_p (when not NULL), then resets them when
     * `reset`. Local, not collective. */
    void (*phases)(void *ctx, mx_transport_stats_t *stats_p, int reset);
    /* Optional zero-copy rounds (see the header comment). zero_copy says whether
     * this handle does them natively (else the generic staging path over
     * exchange() is used). dst_p / src_p [size]: NULL where the count is 0. */
    int (*zero_copy)(const void *ctx);
    mx_status_t (*push_begin)(void *ctx, const size_t *send_counts, const size_t *recv_counts, uint8_t **dst_p);
    mx_status_t (*push_end)(void *ctx, const uint8_t **recv_p, size_t *recv_displs_p);
    mx_status_t (*pull_begin)(void *ctx, size_t bytes, const size_t *send_counts, const size_t *send_displs,
                              const size_t *recv_counts, uint8_t **buf_p);
    mx_status_t (*pull_end)(void *ctx, const uint8_t **src_p);
    /* Optional: from now on tell `hooks` (copied) about the memory this handle
     * lets the caller write or read in place (pull_begin's buffer, push_end's
     * receive area): at once for what is there, later as it comes and goes. */
    void (*set_host_hooks)(void *ctx, const mx_host_hooks_t *hooks);
} mx_transport_ops_t;

/* The MPI implementation. */
const mx_transport_ops_t *mx_transport_mpi_ops(void);
/* An implementation by name ("mpi"); NULL when absent from this build. */
const mx_transport_ops_t *mx_transport_find(const char *name);

/* Collective over comm (which is duplicated; the caller keeps its own).
 * opts may be NULL (AUTO, 1 MiB). *t_p written only on success. */
mx_status_t mx_transport_create(const mx_transport_ops_t *ops, MPI_Comm comm, const mx_transport_opts_t *opts,
                                mx_transport_h *t_p);
/* Collective. NULL is ignored. */
void mx_transport_destroy(mx_transport_h t);
/* Installs host-memory hooks (mxep/hostmem.h; copied, once per handle; local):
 * on_alloc at once for the buffers the handle has, then for each buffer it
 * allocates that pull_begin / push_end hand out (its staging buffer, its
 * shared-memory region), on_free before such a buffer goes (destroy included).
 * A worker whose backend page-locks host memory installs them. */
void mx_transport_set_host_hooks(mx_transport_h t, const mx_host_hooks_t *hooks);

mx_status_t mx_transport_exchange_counts(mx_transport_h t, const size_t *send_counts, size_t *recv_counts_p);
mx_status_t mx_transport_exchange(mx_transport_h t, const void *send, const size_t *send_counts,
                                  const size_t *send_displs, const size_t *recv_counts, const uint8_t **recv_p,
                                  size_t *recv_displs_p);

/* Push round (collective), after exchange_counts with the same send_counts
 * (recv_counts is its result): dst_p[r] is where to write the send_counts[r]
 * bytes for rank r (NULL when 0); nothing may be written there after push_end.
 * push_end (collective) gives *recv_p and recv_displs_p[size] as exchange()
 * does. Every push_begin is followed by a push_end, whatever either returned or
 * the writing in between did (the peers wait for it); after a failed begin the
 * end sends nothing and returns the begin's error. */
mx_status_t mx_transport_push_begin(mx_transport_h t, const size_t *send_counts, const size_t *recv_counts,
                                    uint8_t **dst_p);
mx_status_t mx_transport_push_end(mx_transport_h t, const uint8_t **recv_p, size_t *recv_displs_p);
/* Pull round (collective): *buf_p: `bytes` to write this rank's replies into,
 * rank r's send_counts[r] bytes at send_displs[r] (the pieces lie inside
 * `bytes`); recv_counts[r]: the bytes this rank gets back from r (both sides
 * know them). pull_end (collective; paired like push_end): src_p[r] is where
 * r's bytes for this rank are (NULL when 0), valid until the next round. */
mx_status_t mx_transport_pull_begin(mx_transport_h t, size_t bytes, const size_t *send_counts,
                                    const size_t *send_displs, const size_t *recv_counts, uint8_t **buf_p);
mx_status_t mx_transport_pull_end(mx_transport_h t, const uint8_t **src_p);
/* Whether this handle's push and pull rounds write straight into the peers'
 * memory (1) or stage the bytes and send them (0). */
int mx_transport_zero_copy(const mx_transport_h t);

/* Local: this rank's stats since create or the last reset (*stats_p zeroed
 * first); then resets them when `reset`. */
void mx_transport_stats(mx_transport_h t, mx_transport_stats_t *stats_p, int reset);

int mx_transport_rank(const mx_transport_h t);
int mx_transport_size(const mx_transport_h t);
const char *mx_transport_name(const mx_transport_h t); /* the ops' name */
const char *mx_transport_path(const mx_transport_h t); /* "shm", "alltoallv", "shm+alltoallv" */

#ifdef __cplusplus
}
#endif
#endif
