"""Leaks: 100,000 DLPack capsules consumed and 100,000 left unconsumed (and
as many numpy views) leave no tensor held, no Python memory and no file
descriptor behind; a consumer failing after taking a capsule still frees
it."""
import gc
import os
import textwrap
import tracemalloc

import msutil
import numpy as np

import modelshare

N = 100_000


def fd_count():
    return len(os.listdir("/proc/self/fd"))


class Leaks(msutil.NamespaceTest):
    def check_clean(self, shm, opened=0):
        s = shm.stats()
        self.assertEqual(s["regions_active"], 0, s)
        self.assertEqual(s["bytes_allocated"], 0, s)

    def run_capsules(self, shm, make):
        """N consumed and N unconsumed capsules of a tensor from make()."""
        t = make()
        for _ in range(N):
            a = np.from_dlpack(t)  # consumed: numpy owns the export
        del a
        for _ in range(N):
            c = t.__dlpack__()  # unconsumed: the capsule frees it
        del c
        for _ in range(N):
            a = t.numpy()
        del a
        t.release()
        gc.collect()

    def test_capsules_of_own_and_opened_tensors(self):
        p = self.helper("produce", 65536, 4)
        desc = p.stdout.readline().strip()
        with modelshare.Shm(dir=self.ns) as shm:
            # Warm up every code path once, then measure.
            self.run_capsules(shm, lambda: shm.alloc(4, np.uint8))
            fds = fd_count()
            tracemalloc.start()
            before, _ = tracemalloc.get_traced_memory()
            self.run_capsules(shm, lambda: shm.alloc((64, 64), np.float32))
            self.check_clean(shm)
            self.run_capsules(shm, lambda: shm.open(desc))
            gc.collect()
            after, _ = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            self.check_clean(shm)
            self.assertEqual(fd_count(), fds)
            # 2 x 300,000 exports: anything kept per export would show as
            # megabytes.  Allow a few KiB of interpreter caches.
            self.assertLess(after - before, 16 << 10, (before, after))
            s = shm.stats()
            self.assertEqual(s["allocations"], 2)
        # Destroy succeeded (no tensor held): the C producer can finish.
        self.assertEqual(self.finish(p), 0)

    def test_failed_consumer_frees_the_capsule(self):
        # numpy 1.24 refuses bool (DLPack code 6) after taking the capsule:
        # the capsule dies with the exception pending.  Run it in a child:
        # it must neither crash nor keep the tensor.
        child = textwrap.dedent("""
            import gc, sys
            import numpy as np
            import modelshare
            shm = modelshare.Shm(dir=sys.argv[1])
            t = shm.alloc(8, np.bool_)
            for _ in range(1000):
                try:
                    np.from_dlpack(t)
                except (RuntimeError, SystemError, BufferError):
                    pass
            t.release()
            gc.collect()
            s = shm.stats()
            assert s["regions_active"] == 0, s
            shm.close()
            print("failed consumer: ok")
        """)
        r = msutil.run_python(child, self.ns)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr[-2000:])
        self.assertEqual(r.stdout.strip(), "failed consumer: ok")

    def test_capsule_dropped_during_unwinding(self):
        with modelshare.Shm(dir=self.ns) as shm:
            t = shm.alloc(16, np.int32)

            def fail():
                cap = t.__dlpack__()  # noqa: F841 (dies while unwinding)
                raise KeyError("mine")

            with self.assertRaises(KeyError) as cm:
                fail()
            self.assertEqual(cm.exception.args, ("mine",))
            t.release()
            gc.collect()
            self.check_clean(shm)


if __name__ == "__main__":
    msutil.main()
