/* The model worker's private structures, shared by worker.c (loop side:
 * accept, frames, responses), worker_batch.c (inference threads),
 * worker_stats.c and the endpoint/peer code of worker_sys_*.c.
 *
 * THREADS AND OWNERSHIP
 *
 * The loop thread owns connections, the model table and every libuv
 * handle.  A request becomes a job on the loop thread; it goes to its
 * model's queue (under w->lock), an inference thread takes it, runs it,
 * encodes its response and puts it on w->done (under w->lock), and the
 * loop writes it.  A job holds a reference on its connection, so a
 * connection closed meanwhile stays allocated (marked closed, which the
 * threads read atomically) until its last job came back; such jobs are
 * dropped and their outputs released.
 *
 * DIRECT RESPONSES (POSIX)
 *
 * An inference thread writes a response to the connection's socket itself
 * (non-blocking, under conn->wlock) when the loop has no write of its own
 * pending there (lib_busy == 0, no rest): the client gets its answer
 * without a hand-off to the loop.  The job still goes to w->done, so the
 * loop keeps its bookkeeping (ACKs, in-flight counts, release).  Every
 * loop write (uv_write) is made under wlock; if libuv could not write all
 * of it at once, lib_busy stays set until a write callback finds libuv's
 * queue empty, so libuv never has bytes queued while a thread writes.  A
 * partial write moves the frame to conn->rest (rest_state 1): the loop
 * writes that rest before any other frame of the connection and when the
 * job reaches it, so frames never interleave.  A
 * would-block write or an error leaves the job to the loop's usual write.
 * The push to w->done happens under wlock, so an ACK read after the
 * response always finds its job after taking wlock once.  conn_close()
 * sets fd to -1 under wlock before the socket is closed.
 *
 * Outputs sent by descriptor stay held by the job until the client's ACK
 * (it has opened them) or the connection's close: the client must open a
 * descriptor while some process holds it.  A connection's in-flight count
 * covers jobs from receipt to (written and, if held, acknowledged), so
 * max_inflight_per_client bounds what one client pins: queued requests,
 * unread responses and unacknowledged outputs alike.
 */
#ifndef MS_INTERNAL_WORKER_H
#define MS_INTERNAL_WORKER_H

#include "internal/common.h"
#include "internal/wire.h"
#include "internal/wout.h"

#include <uv.h>

#include <stdatomic.h>

typedef struct ms__wconn ms__wconn;
typedef struct ms__job ms__job;
typedef struct ms__wmodel ms__wmodel;

struct ms_worker_out {
  ms_shm_t *shm; /* NULL: heap outputs */
  char session[32];
};

#define MS__LAT_RING 1024

struct ms__wmodel {
  ms__wmodel *next;
  char name[MS_WORKER_NAME_MAX + 1];
  ms_model_t *handle;
  ms_worker_model_t m;    /* the caller's callbacks (loader not kept) */
  ms__job *qhead, *qtail; /* queued jobs (w->lock) */
  size_t qlen;
  /* stats (w->lock) */
  uint64_t requests, errors, nlat;
  uint32_t lat_us[MS__LAT_RING];
};

struct ms__job {
  ms__job *next; /* model queue, done list, or the connection's list */
  ms__job *prev; /* the connection's list */
  ms__wconn *conn;
  ms__wmodel *model;
  uint64_t id;
  uint64_t t_recv;
  uint8_t *frame; /* the REQUEST frame; msg points into it */
  ms__wire_msg msg;
  ms_worker_out_t out;
  ms_tensor_t *inputs[MS_WORKER_MAX_TENSORS];
  size_t n_in;
  ms_tensor_t *outputs[MS_WORKER_MAX_TENSORS];
  size_t n_out;
  int status;
  char why[160];
  int held;    /* outputs sent by descriptor: kept until ACK or close */
  int written; /* the write of resp finished (loop) */
  int acked;   /* ACK received (loop) */
  int linked;  /* on conn's list (loop) */
  ms__wbuf resp;
  int sent; /* an inference thread wrote resp (or left its rest to conn) */
  uv_write_t wreq;
};

enum { MS__C_HANDSHAKE, MS__C_READY, MS__C_CLOSED };

struct ms__wconn {
  uv_pipe_t pipe;
  uv_timer_t timer; /* handshake deadline */
  ms_worker_t *w;
  ms__wconn *next, *prev; /* w->conns (loop) */
  uint64_t serial;
  int state;         /* loop */
  atomic_int closed; /* read by inference threads */
  int desc_in;       /* the worker opened the client's probe */
  int is_inline;     /* counted in stats "inline" */
  unsigned refs;     /* handles not yet closed + jobs (loop) */
  unsigned inflight; /* see above (loop) */
  ms__job *jobs;     /* responses written or being written (loop) */
  ms__framer rx;
  /* direct responses (see above) */
  uv_mutex_t wlock;
  ms__wout out; /* fd, lib_busy, rest (wlock) */
};

/* Allocated apart from the worker, so that a failed start can close them
 * on the host's loop after the caller destroyed the worker. */
struct ms__whandles {
  uv_pipe_t server;
  uv_async_t done_async, stop_async;
  uv_timer_t drain_timer;
  int open; /* used only by a failed start's closes */
};

enum { MS__W_NEW, MS__W_RUNNING, MS__W_DRAINING, MS__W_STOPPED };

struct ms_worker {
  ms_worker_options_t o;
  char *endpoint;
  size_t max_body; /* min(max_frame_bytes, UINT32_MAX) - header */
  ms_registry_t *reg;
  int own_reg;
  ms_shm_t *shm;
  int own_shm;
  ms_tensor_t *probe; /* ours, for clients to prove they can open it */
  char probe_desc[MS_DESCRIPTOR_MAX];
  ms__wmodel *models;

  uv_loop_t *loop;
  uv_loop_t own_loop;
  int own_loop_used;
  uv_thread_t loop_thread; /* the thread running loop */
  uv_thread_t run_thread;  /* ms_worker_run()'s */
  struct ms__whandles *h;  /* the worker's own handles, from start */
  int handles_open;        /* loop */
  int in_drain;            /* loop: maybe_drained() is running */
  ms__wconn *conns;        /* loop */
  uint64_t next_serial;
  int drain_expired;
  uint64_t ep_ino; /* POSIX: our socket file's inode, removed at stop */

  uv_mutex_t lock; /* queues, done list, state, stats */
  uv_cond_t work;  /* inference threads wait here */
  uv_cond_t state_cv;
  int state;
  int threads_stop;
  uv_thread_t *threads;
  uint32_t nthreads;
  ms__job *done_head, *done_tail;
  uint64_t queued;  /* jobs in queues or running (lock) */
  uint64_t pending; /* jobs not yet finished on the loop (loop) */

  /* stats (lock) */
  uint64_t st_connections, st_refused, st_refused_uid, st_requests,
      st_responses, st_protocol_errors, st_batches, st_batched_requests;
  uint64_t st_errors[64];
  uint64_t st_hist[64];
  uint32_t st_clients, st_inline;
};

/* worker_batch.c */
int ms__batch_start(ms_worker_t *w);
void ms__batch_stop(ms_worker_t *w); /* joins the threads */
/* Queues a job for its model (loop thread). */
void ms__batch_submit(ms_worker_t *w, ms__job *j);
/* Releases a job's inputs and outputs and frees it (any thread). */
void ms__job_free(ms__job *j);

/* worker.c: the loop side of direct responses.  Takes finished jobs off
 * w->done and writes or finishes them (loop thread). */
void ms__done_drain(ms_worker_t *w);

/* worker_stats.c */
void ms__stats_error(ms_worker_t *w, int code); /* lock held */

/* worker_sys_posix.c / worker_sys_win32.c: the platform's endpoint rules.
 * Longest endpoint accepted, in bytes. */
size_t ms__ep_max(void);
/* Checks or creates the endpoint's directory and replaces a stale socket
 * file; MS_EBUSY if a live worker answers there.  msg gets why. */
int ms__ep_prepare(const char *ep, char *msg, size_t cap);
/* After bind: mode 0600, and remember which file is ours in *ino. */
int ms__ep_secure(const char *ep, uint64_t *ino);
/* At stop: removes the socket file if it is still ours. */
void ms__ep_remove(const char *ep, uint64_t ino);

/* 0 if the peer of an accepted connection may talk to us; MS_EACCES for
 * another user (refused and counted), MS_EIO if it cannot be told. */
int ms__peer_check(uv_pipe_t *p, int64_t allowed_uid);

#endif
