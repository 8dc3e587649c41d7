#!/usr/bin/env bash
# Runs modelshare-bench --quick and checks that its JSON parses and holds
# every key the bench promises.  Values are not judged (CI machines are
# noisy), so the bench's exit status 1 (some target was a MISS) is ignored
# on purpose; any other failure (a crash, a bad argument, a scenario that
# could not run: status 2, 3 or a signal) fails the check.
set -euo pipefail
out=$1
status=0
"$BENCH" --quick --json "$out" >/dev/null || status=$?
if [ "$status" -ne 0 ] && [ "$status" -ne 1 ]; then
  echo "modelshare-bench --quick failed with status $status" >&2
  exit 1
fi
/usr/bin/python3 - "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
need = {
    "machine": ["cpu", "cores", "kernel"],
    "registry": ["model", "instances", "without", "with", "memory_reduction",
                 "limit", "hit_ns_median", "mutex_pair_ns_median",
                 "pss_without_bytes", "pss_with_bytes", "hit_ns_by_threads"],
    "dedup": ["threads", "loads", "wall_ratio_vs_one_load"],
    "channel": ["spin_one_way_us_median", "busy_poll_one_way_us_median",
                "blocked_one_way_us_median", "futex_one_way_us_median",
                "idle_cpu_percent", "syscalls_per_message_spinning"],
    "vision": ["frame_bytes", "fps_shm", "fps_serialization", "speedup",
               "fps_serialization_fast", "fps_pipe_copy", "speedup_vs_best"],
}
for obj, keys in need.items():
    for k in keys:
        assert k in d[obj], f"{obj}.{k} missing"
for k in ["rss_bytes", "load_s"]:
    assert k in d["registry"]["without"], f"registry.without.{k} missing"
for k in ["rss_bytes", "load_s", "hits", "misses", "hit_rate"]:
    assert k in d["registry"]["with"], f"registry.with.{k} missing"
assert len(d["shm"]) >= 1
for e in d["shm"]:
    for k in ["size_bytes", "floor_gibs", "heap_read_gibs", "shm_read_gibs",
              "shm_read_cached_gibs", "handoff_us_median", "cycle_fresh_gibs",
              "cycle_pooled_gibs", "cycle_pooled_channel_gibs",
              "pipe_serialization_gibs",
              "python_mp_shm_gibs", "python_mp_shm_reused_gibs",
              "python_fresh_ratio", "python_reused_ratio"]:
        assert k in e, f"shm[].{k} missing"
assert d["dedup"]["loads"] == 1, "64 threads must load once"
hb = d["registry"]["hit_ns_by_threads"]
assert isinstance(hb, dict) and "1" in hb and "2" in hb, \
    "registry.hit_ns_by_threads needs thread counts 1 and 2"
print("bench JSON: ok")
PY

# The python scenario (bench/bench_python.c): one row per size.
/usr/bin/python3 - "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
assert len(d["python"]) >= 1, "python rows missing"
for e in d["python"]:
    for k in ["size_bytes", "open_view_us_median", "cycle_pooled_gibs",
              "mp_shm_fresh_gibs", "mp_shm_reused_gibs"]:
        assert isinstance(e.get(k), (int, float)), f"python[].{k} missing"
print("bench JSON python: ok")
PY

# The memfd scenario (bench/bench_memfd.c): rows per backend and size, and
# the shm rows annotated with their backend and the memfd figures.
/usr/bin/python3 - "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
keys = ["first_open_us_median", "cached_open_us_median", "cycle_pooled_gibs"]
rows = d["memfd"]
assert {e["backend"] for e in rows} == {"named", "memfd"}, "memfd[].backend"
for e in rows:
    for k in keys + ["size_bytes"]:
        assert isinstance(e.get(k), (int, float)), f"memfd[].{k} missing"
for e in d["shm"]:
    assert e.get("backend") == "named", "shm[].backend missing"
    for k in keys:
        assert isinstance(e["memfd"].get(k), (int, float)), f"shm[].memfd.{k}"
print("bench JSON memfd: ok")
PY

# The weights scenario (bench/bench_weights.c): one shared host image.
/usr/bin/python3 - "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
w = d["weights"]
for k in ["processes", "image_bytes", "transform_s", "first_use_s",
          "next_use_s_median", "transform_runs", "pss_bytes_shared",
          "pss_bytes_private", "sharing_ratio"]:
    assert isinstance(w.get(k), (int, float)), f"weights.{k} missing"
assert w["transform_runs"] == 1, "the 4 workers must transform once"
print("bench JSON weights: ok")
PY

# The worker scenario (bench/bench_worker.c).
/usr/bin/python3 - "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
w = d["worker"]
for k in ["clients", "requests", "rtt_us_median", "rtt_us_p99",
          "socket_rtt_us_median", "rtt_ratio_vs_socket", "batched_rps",
          "unbatched_rps", "mean_batch", "pss_bytes_with_worker",
          "pss_bytes_separate", "memory_reduction"]:
    assert isinstance(w.get(k), (int, float)), f"worker.{k} missing"
assert w["clients"] == 8, "the batching run has 8 concurrent clients"
for k in ["rtt_us_median", "socket_rtt_us_median", "batched_rps",
          "unbatched_rps", "mean_batch"]:
    assert w[k] > 0, f"worker.{k} must be measured"
print("bench JSON worker: ok")
PY
