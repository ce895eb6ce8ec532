/* mxep transport/ucx: the UCX implementation of mx_transport_ops_t
 * (include/mxep/transport.h). Built when MXEP_HAVE_UCX; library mxep_transport_ucx.
 *
 * UCP workers and endpoints: every rank creates one UCP context and one worker
 * (tag matching), the worker addresses are exchanged once over MPI (allgather),
 * and every rank opens an endpoint to every other rank. exchange_counts and
 * exchange are then tagged sends and receives only (no MPI): receives are posted
 * straight into the transport-owned receive buffer at the prefix-sum
 * displacement of each source, sends come from the caller's buffer, bytes to
 * oneself are copied. Tags carry a sequence number, so successive exchanges
 * never mix. UCX picks the wire by itself (shared memory: posix, sysv, cma;
 * tcp; rc/ud on InfiniBand); path() says which it chose, e.g.
 * "ucx:posix/memory,tcp/eth0". UCX_TLS / UCX_NET_DEVICES steer it as usual.
 *
 * A peer that does not answer within MXEP_UCX_TIMEOUT_S seconds (default 300)
 * makes the exchange fail with MX_ERR_TIMEOUT instead of hanging. */
#ifndef MXEP_TRANSPORT_UCX_H
#define MXEP_TRANSPORT_UCX_H

#include "mxep/transport.h"

#ifdef __cplusplus
extern "C" {
#endif

const mx_transport_ops_t *mx_transport_ucx_ops(void);

#ifdef __cplusplus
}
#endif
#endif
