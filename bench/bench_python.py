"""The python scenario of modelshare-bench, run by Debian's /usr/bin/python3.

Every figure is measured in this one run, with the same process split for
the package and for its baselines: this process is the producer and one
consumer process (multiprocessing, fork) reads every frame.  Per frame the
producer writes n bytes through numpy (``view[:] = src``) and sends a short
string (a descriptor or a shared_memory name) over the same
multiprocessing Pipe; the consumer maps the frame, sums it as uint64
through numpy and sends the sum back; then the producer lets the frame go.

  open_view_us_median  consumer, inside the pooled cycle: shm.open(descriptor)
                       + numpy() of a pooled, recycled region (the open
                       cache has it mapped), right after the producer wrote
                       the frame (caches as a pipeline sees them)
  open_view_hot_us_median  the same call repeated on one region with
                       nothing in between (caches warm): the package's own
                       cost
  cycle_pooled_gibs    full cycle through the package, pooled allocator
  cycle_pooled_c_gibs  the same frames read by a C consumer
                       (modelshare-bench --consumer, line pipe)
  mp_shm_fresh_gibs    multiprocessing.shared_memory, a new block per frame
                       (create, write, attach, read, close, unlink)
  mp_shm_reused_gibs   multiprocessing.shared_memory, one block created
                       once and attached once, rewritten every frame

Prints one JSON object on stdout: {"python": [row per size]}.

usage: bench_python.py --sizes 1,10,100 --reps 5 --frames 8
                       [--c-consumer PATH]
"""
import argparse
import json
import subprocess
import sys
import time
from multiprocessing import get_context, resource_tracker, shared_memory

import numpy as np

import modelshare

GIB = float(1 << 30)


def consumer(conn):
    """Serves ("ms", desc) / ("mp", name) / ("mpr", name) until None."""
    shm = modelshare.Shm(open_cache=256)
    attached = {}  # the reused block stays attached
    while True:
        msg = conn.recv()
        if msg is None:
            break
        kind, arg = msg
        if kind == "ms":
            t0 = time.perf_counter()
            t = shm.open(arg)
            a = t.numpy()
            t1 = time.perf_counter()
            total = int(a.view(np.uint64).sum())
            del a
            t.release()
            conn.send((total, t1 - t0))
        elif kind == "hot":
            times = []
            for _ in range(arg[1]):
                t0 = time.perf_counter()
                t = shm.open(arg[0])
                a = t.numpy()
                times.append(time.perf_counter() - t0)
                del a
                t.release()
            conn.send((0, float(np.median(times))))
        elif kind == "mp":
            s = shared_memory.SharedMemory(name=arg)
            resource_tracker.unregister(s._name, "shared_memory")
            a = np.ndarray((s.size // 8,), dtype=np.uint64, buffer=s.buf)
            total = int(a.sum())
            del a
            s.close()
            conn.send((total, 0.0))
        elif kind == "mpr":
            if arg not in attached:
                s = shared_memory.SharedMemory(name=arg)
                resource_tracker.unregister(s._name, "shared_memory")
                attached[arg] = (s, np.ndarray((s.size // 8,),
                                               dtype=np.uint64, buffer=s.buf))
            total = int(attached[arg][1].sum())
            conn.send((total, 0.0))
        elif kind == "drop":
            s, a = attached.pop(arg)
            del a
            s.close()
            conn.send((0, 0.0))
    for s, a in attached.values():
        del a
        s.close()
    shm.close()


def read_all(n):
    """What msb_read_all() (the C consumer) returns for n bytes of 7s."""
    w = np.full(n // 8, 7, dtype=np.uint64)
    with np.errstate(over="ignore"):
        a, c = w[0::4].sum(dtype=np.uint64), w[2::4].sum(dtype=np.uint64)
        b = np.bitwise_xor.reduce(w[1::4])
        d = np.bitwise_xor.reduce(w[3::4])
        return int(a + b + c + d)


def timed(reps, frames, methods):
    """Median seconds per frame of each method over reps runs, plus one
    warm-up run.  The methods take turns within each run, so that a noisy
    moment of the machine hits all of them alike."""
    per = {name: [] for name in methods}
    for r in range(reps + 1):
        for name, one in methods.items():
            t0 = time.perf_counter()
            for _ in range(frames):
                one()
            if r:
                per[name].append((time.perf_counter() - t0) / frames)
    return {name: float(np.median(v)) for name, v in per.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,10,100")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--c-consumer")
    args = ap.parse_args()

    ctx = get_context("fork")
    conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=consumer, args=(child_conn,), daemon=True)
    proc.start()  # before this process creates its allocator
    cproc = None
    if args.c_consumer:
        cproc = subprocess.Popen([args.c_consumer, "--consumer"], text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    shm = modelshare.Shm(pool_bytes=2 << 30)
    rows = []
    for mib in (int(s) for s in args.sizes.split(",")):
        n = mib << 20
        print(f"[modelshare-bench] python: {mib} MiB", file=sys.stderr)
        src = np.full(n // 8, 7, dtype=np.uint64).view(np.uint8)
        want = 7 * (n // 8)
        opens = []

        want_c = read_all(n)

        def check(total, want=want):
            if total != want:
                raise SystemExit(f"bench_python: consumer read {total}, "
                                 f"want {want}")

        def pooled():
            with shm.alloc(n, np.uint8) as t:
                t.numpy()[:] = src
                conn.send(("ms", t.descriptor))
                total, open_s = conn.recv()
            check(total)
            opens.append(open_s)

        def pooled_c():
            with shm.alloc(n, np.uint8) as t:
                t.numpy()[:] = src
                cproc.stdin.write(f"open {t.descriptor}\n")
                cproc.stdin.flush()
                reply = cproc.stdout.readline().split()
            check(int(reply[2]), want_c)

        def mp_fresh():
            s = shared_memory.SharedMemory(create=True, size=n)
            v = np.ndarray((n,), dtype=np.uint8, buffer=s.buf)
            v[:] = src
            del v
            conn.send(("mp", s.name))
            total, _ = conn.recv()
            s.close()
            s.unlink()
            check(total)

        block = shared_memory.SharedMemory(create=True, size=n)
        view = np.ndarray((n,), dtype=np.uint8, buffer=block.buf)

        def mp_reused():
            view[:] = src
            conn.send(("mpr", block.name))
            total, _ = conn.recv()
            check(total)

        methods = {"pooled": pooled, "mp_fresh": mp_fresh,
                   "mp_reused": mp_reused}
        if cproc:
            methods["pooled_c"] = pooled_c
        per = timed(args.reps, args.frames, methods)
        per_pooled, per_fresh = per["pooled"], per["mp_fresh"]
        per_reused, per_c = per["mp_reused"], per.get("pooled_c")
        open_us = float(np.median(opens[args.frames:])) * 1e6
        with shm.alloc(n, np.uint8) as t:
            conn.send(("hot", (t.descriptor, 1000)))
            hot_us = conn.recv()[1] * 1e6
        conn.send(("drop", block.name))
        conn.recv()
        del view
        block.close()
        block.unlink()
        rows.append({
            "size_bytes": n,
            "open_view_us_median": open_us,
            "open_view_hot_us_median": hot_us,
            "cycle_pooled_gibs": n / GIB / per_pooled,
            "cycle_pooled_c_gibs": n / GIB / per_c if per_c else None,
            "mp_shm_fresh_gibs": n / GIB / per_fresh,
            "mp_shm_reused_gibs": n / GIB / per_reused,
        })
    conn.send(None)
    proc.join()
    if cproc:
        cproc.stdin.close()
        cproc.wait()
    shm.close()
    print(json.dumps({"python": rows}))
    return 0 if proc.exitcode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
