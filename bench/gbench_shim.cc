// Google Benchmark behind the C API of gbench_shim.h.
#include "gbench_shim.h"

#include <benchmark/benchmark.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

struct msb_state {
  benchmark::State *st;
};

namespace {

struct Entry {
  std::string name;
  msb_body fn;
  void *arg;
  int threads;
  int64_t bytes;
};

std::vector<Entry> &entries() {
  static std::vector<Entry> v;
  return v;
}

std::map<std::string, double> &medians() {
  static std::map<std::string, double> m;
  return m;
}

// Keeps the median aggregate of each benchmark; prints one line to stderr.
class CaptureReporter : public benchmark::BenchmarkReporter {
public:
  bool ReportContext(const Context &) override { return true; }
  void ReportRuns(const std::vector<Run> &runs) override {
    for (const Run &r : runs) {
      if (r.run_type != Run::RT_Aggregate || r.aggregate_name != "median")
        continue;
      std::string name = r.run_name.function_name;
      double ns = r.GetAdjustedRealTime(); // in the run's time unit
      if (r.time_unit == benchmark::kMicrosecond)
        ns *= 1e3;
      else if (r.time_unit == benchmark::kMillisecond)
        ns *= 1e6;
      else if (r.time_unit == benchmark::kSecond)
        ns *= 1e9;
      medians()[name] = ns;
      std::fprintf(stderr, "  micro %-40s %12.1f ns (median)\n", name.c_str(),
                   ns);
    }
  }
};

} // namespace

extern "C" {

void msb_add(const char *name, msb_body fn, void *arg, int threads,
             int64_t bytes_per_iter) {
  entries().push_back({name, fn, arg, threads, bytes_per_iter});
}

int msb_keep_running(msb_state *st) { return st->st->KeepRunning(); }
void msb_pause(msb_state *st) { st->st->PauseTiming(); }
void msb_resume(msb_state *st) { st->st->ResumeTiming(); }
int msb_thread_index(const msb_state *st) {
  return static_cast<int>(st->st->thread_index());
}

void msb_run(int reps, double min_time_s) {
  for (const Entry &e : entries()) {
    Entry copy = e;
    auto *b = benchmark::RegisterBenchmark(
        e.name.c_str(), [copy](benchmark::State &state) {
          msb_state s{&state};
          copy.fn(&s, copy.arg);
          if (copy.bytes > 0)
            state.SetBytesProcessed(state.iterations() * copy.bytes);
        });
    b->Repetitions(reps)
        ->ReportAggregatesOnly(true)
        ->MinTime(min_time_s)
        ->UseRealTime();
    if (e.threads > 1)
      b->Threads(e.threads);
  }
  int argc = 1;
  char prog[] = "modelshare-bench";
  char *argv[] = {prog, nullptr};
  benchmark::Initialize(&argc, argv);
  CaptureReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
}

double msb_median_ns(const char *name) {
  auto it = medians().find(name);
  return it == medians().end() ? -1 : it->second;
}
}
