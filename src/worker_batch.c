/* The worker's inference threads: per-model queues, batching, running
 * infer/infer_batch, and encoding each response off the loop thread. */
#include "internal/shm.h"
#include "internal/worker.h"

#include <stdio.h>
#include <string.h>

void ms__job_free(ms__job *j) {
  for (size_t i = 0; i < j->n_in; i++)
    ms_tensor_release(j->inputs[i]);
  for (size_t i = 0; i < j->n_out; i++)
    ms_tensor_release(j->outputs[i]);
  ms__wbuf_free(&j->resp);
  ms__free(j->frame);
  ms__free(j);
}

int ms_worker_out_alloc(ms_worker_out_t *out, ms_dtype_t dtype, int ndim,
                        const int64_t *shape, ms_tensor_t **t) {
  if (out == NULL || t == NULL)
    return MS_EINVAL;
  if (out->shm != NULL)
    return ms_tensor_alloc(out->shm, dtype, ndim, shape, out->session, t);
  return ms__tensor_new_heap(dtype, ndim, shape, t); /* no shared memory */
}

void ms__batch_submit(ms_worker_t *w, ms__job *j) {
  ms__wmodel *m = j->model;
  uv_mutex_lock(&w->lock);
  w->st_requests++;
  j->next = NULL;
  if (m->qtail != NULL)
    m->qtail->next = j;
  else
    m->qhead = j;
  m->qtail = j;
  m->qlen++;
  w->queued++;
  uv_cond_signal(&w->work);
  uv_mutex_unlock(&w->lock);
}

/* The model whose oldest queued job is oldest, or NULL.  Lock held. */
static ms__wmodel *oldest(ms_worker_t *w) {
  ms__wmodel *best = NULL;
  for (ms__wmodel *m = w->models; m != NULL; m = m->next)
    if (m->qhead != NULL &&
        (best == NULL || m->qhead->t_recv < best->qhead->t_recv))
      best = m;
  return best;
}

static int fail(ms__job *j, int code, const char *why) {
  j->status = code;
  (void)snprintf(j->why, sizeof(j->why), "%s", why);
  return code;
}

/* Opens or decodes the inputs of j.  0, or j->status set. */
static int open_inputs(ms_worker_t *w, ms__job *j) {
  for (uint16_t i = 0; i < j->msg.n; i++) {
    const ms__wire_tensor *t = &j->msg.t[i];
    int rc;
    if (t->kind == MS__T_DESC) {
      char d[MS_DESCRIPTOR_MAX];
      memcpy(d, t->bytes, t->len);
      d[t->len] = '\0';
      rc = ms_tensor_open(w->shm, d, 0, &j->inputs[i]);
    } else {
      rc = ms_tensor_deserialize(NULL, t->bytes, t->len, &j->inputs[i]);
    }
    if (rc != 0) {
      char why[160];
      (void)snprintf(why, sizeof(why), "input %u: %s", i,
                     ms_shm_errmsg(t->kind == MS__T_DESC ? w->shm : NULL));
      return fail(j, rc, why);
    }
    j->n_in = i + 1u;
  }
  return 0;
}

/* Encodes j's response into j->resp; keeps the outputs when some went by
 * descriptor (until the client's ACK), else releases them. */
static void encode(ms_worker_t *w, ms__job *j) {
  int desc = w->shm != NULL && (w->o.flags & MS_WORKER_INLINE) == 0 &&
             (j->msg.flags & MS__REQ_INLINE_OUT) == 0;
  for (int pass = 0; pass < 2; pass++) {
    ms__wbuf *b = &j->resp;
    ms__wbuf_begin(b, MS__MSG_RESPONSE, j->id);
    ms__wbuf_u32(b, (uint32_t)j->status);
    ms__wbuf_u16(b, (uint16_t)(j->status == 0 ? j->n_out : 0));
    ms__wbuf_u16(b, 0);
    ms__wbuf_str(b, j->why, j->status != 0 ? strlen(j->why) : 0);
    j->held = 0;
    for (size_t i = 0; j->status == 0 && i < j->n_out; i++) {
      int used = 0;
      ms__wbuf_tensor(b, j->outputs[i], desc, &used);
      j->held |= used;
    }
    int rc = ms__wbuf_end(b, w->max_body);
    if (rc == 0)
      break;
    /* The outputs did not fit a frame (or could not be encoded): the
     * request fails instead; an error response always fits. */
    (void)fail(j, rc,
               rc == MS_ERANGE ? "response over max_frame_bytes"
                               : "cannot encode the outputs");
  }
  if (!j->held || j->status != 0) {
    for (size_t i = 0; i < j->n_out; i++)
      ms_tensor_release(j->outputs[i]);
    j->n_out = 0;
    j->held = 0;
  }
  for (size_t i = 0; i < j->n_in; i++)
    ms_tensor_release(j->inputs[i]);
  j->n_in = 0;
}

/* Writes j's response to its connection when the loop has nothing queued
 * there (see "direct responses" in worker.h), then puts j on w->done for
 * the loop, both under the connection's wlock. */
static void hand_over(ms_worker_t *w, ms__job *j) {
  ms__wconn *c = j->conn;
  uv_mutex_lock(&c->wlock);
  if (ms__wout_direct(&c->out, &j->resp) > 0)
    j->sent = 1; /* a rest, if any, is the loop's */
  uv_mutex_lock(&w->lock);
  j->next = NULL;
  if (w->done_tail != NULL)
    w->done_tail->next = j;
  else
    w->done_head = j;
  w->done_tail = j;
  w->queued--;
  uv_mutex_unlock(&w->lock);
  uv_mutex_unlock(&c->wlock);
}

static void run_batch(ms_worker_t *w, ms__wmodel *m, ms__job **jobs, size_t n) {
  ms__job *run[64] = {NULL};
  ms_worker_request_t req[64];
  ms_worker_request_t *reqs[64];
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    ms__job *j = jobs[i];
    if (atomic_load(&j->conn->closed))
      (void)fail(j, MS_ECANCELED, "the client is gone");
    else if (open_inputs(w, j) == 0)
      run[k++] = j;
  }
  void *model = ms_model_get(m->handle);
  if (k > 0 && m->m.infer_batch != NULL) {
    for (size_t i = 0; i < k; i++) {
      req[i] = (ms_worker_request_t){sizeof(ms_worker_request_t),
                                     run[i]->inputs,
                                     run[i]->n_in,
                                     &run[i]->out,
                                     run[i]->outputs,
                                     0,
                                     0,
                                     0};
      reqs[i] = &req[i];
    }
    int rc = m->m.infer_batch(m->m.user, model, reqs, k);
    for (size_t i = 0; i < k; i++) {
      size_t no = req[i].n_out;
      run[i]->n_out = no <= MS_WORKER_MAX_TENSORS ? no : MS_WORKER_MAX_TENSORS;
      int st = rc < 0 ? rc : req[i].status > 0 ? MS_ELOAD : req[i].status;
      if (no > MS_WORKER_MAX_TENSORS)
        st = MS_ERANGE;
      if (st != 0)
        (void)fail(run[i], st, "the model failed");
    }
  } else {
    for (size_t i = 0; i < k; i++) {
      ms__job *j = run[i];
      size_t no = 0;
      int rc = m->m.infer(m->m.user, model, j->inputs, j->n_in, &j->out,
                          j->outputs, &no);
      j->n_out = no <= MS_WORKER_MAX_TENSORS ? no : MS_WORKER_MAX_TENSORS;
      if (rc == 0 && no > MS_WORKER_MAX_TENSORS)
        rc = MS_ERANGE;
      if (rc != 0)
        (void)fail(j, rc > 0 ? MS_ELOAD : rc, "the model failed");
    }
  }
  for (size_t i = 0; i < n; i++)
    encode(w, jobs[i]);
  uint64_t now = uv_hrtime();
  uv_mutex_lock(&w->lock);
  if (k > 0) {
    w->st_batches += m->m.infer_batch != NULL ? 1 : k;
    w->st_batched_requests += k;
    if (m->m.infer_batch != NULL)
      w->st_hist[k - 1]++;
    else
      w->st_hist[0] += k;
  }
  for (size_t i = 0; i < n; i++) {
    ms__job *j = jobs[i];
    m->requests++;
    w->st_responses++;
    if (j->status != 0) {
      m->errors++;
      ms__stats_error(w, j->status);
    }
    uint64_t us = (now - j->t_recv) / 1000;
    m->lat_us[m->nlat++ % MS__LAT_RING] =
        us < UINT32_MAX ? (uint32_t)us : UINT32_MAX;
  }
  uv_mutex_unlock(&w->lock);
  for (size_t i = 0; i < n; i++)
    hand_over(w, jobs[i]);
  (void)uv_async_send(&w->h->done_async);
}

static void thread_main(void *arg) {
  ms_worker_t *w = arg;
  ms__job *jobs[64];
  uv_mutex_lock(&w->lock);
  while (!w->threads_stop) {
    ms__wmodel *m = oldest(w);
    if (m == NULL) {
      uv_cond_wait(&w->work, &w->lock);
      continue;
    }
    size_t max = w->o.max_batch;
    if (m->qlen < max && w->o.max_batch_delay_us > 0) {
      /* Wait for the batch to fill, up to the delay after its oldest
       * request arrived. */
      uint64_t deadline = m->qhead->t_recv + w->o.max_batch_delay_us * 1000ull;
      uint64_t now = uv_hrtime();
      if (now < deadline) {
        (void)uv_cond_timedwait(&w->work, &w->lock, deadline - now);
        continue; /* re-pick: another thread may have taken them */
      }
    }
    size_t n = 0;
    while (n < max && m->qhead != NULL) {
      ms__job *j = m->qhead;
      m->qhead = j->next;
      m->qlen--;
      jobs[n++] = j;
    }
    if (m->qhead == NULL)
      m->qtail = NULL;
    uv_mutex_unlock(&w->lock);
    run_batch(w, m, jobs, n);
    uv_mutex_lock(&w->lock);
  }
  uv_mutex_unlock(&w->lock);
}

int ms__batch_start(ms_worker_t *w) {
  w->threads = ms__calloc(w->o.threads, sizeof(uv_thread_t));
  if (w->threads == NULL)
    return MS_ENOMEM;
  w->threads_stop = 0;
  for (w->nthreads = 0; w->nthreads < w->o.threads; w->nthreads++)
    if (uv_thread_create(&w->threads[w->nthreads], thread_main, w) != 0) {
      ms__batch_stop(w);
      return MS_ENOMEM;
    }
  return 0;
}

void ms__batch_stop(ms_worker_t *w) {
  uv_mutex_lock(&w->lock);
  w->threads_stop = 1;
  uv_cond_broadcast(&w->work);
  uv_mutex_unlock(&w->lock);
  for (uint32_t i = 0; i < w->nthreads; i++)
    (void)uv_thread_join(&w->threads[i]);
  ms__free(w->threads);
  w->threads = NULL;
  w->nthreads = 0;
}
