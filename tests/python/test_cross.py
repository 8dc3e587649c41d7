"""Across languages and processes: C producer -> Python consumer, Python
producer -> C consumer, zero copy (the array is the mapping), and writes by
the producer seen without importing again."""
import msutil
import numpy as np

import modelshare


def mapping_of(address):
    """The /proc/self/maps line whose range holds address."""
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return line
    return None


class Cross(msutil.NamespaceTest):
    def test_c_producer_python_consumer(self):
        for size, seed in ((1, 3), (4096, 7), (3 << 20, 11)):
            p = self.helper("produce", size, seed)
            desc = p.stdout.readline().strip()
            with modelshare.Shm(dir=self.ns) as shm:
                t = shm.open(desc)
                self.assertEqual(t.shape, (size,))
                self.assertEqual(t.dtype, np.uint8)
                self.assertEqual(t.nbytes, size)
                self.assertFalse(t.writable)
                self.assertEqual(t.descriptor, desc)
                a = t.numpy()
                self.assertTrue(np.array_equal(a, msutil.pattern(size, seed)))
                d = np.from_dlpack(t)
                self.assertTrue(np.array_equal(d, a))
                del a, d
                t.release()
            self.assertEqual(self.finish(p), 0)

    def test_python_producer_c_consumer(self):
        with modelshare.Shm(dir=self.ns) as shm:
            for size, seed in ((1, 1), (12345, 2), (5 << 20, 9)):
                p = self.helper("consume", "-", size, seed)
                self.assertEqual(p.stdout.readline().strip(), "ready")
                with shm.alloc(size, np.uint8) as t:
                    t.numpy()[:] = msutil.pattern(size, seed)
                    p.stdin.write(t.descriptor + "\n")
                    p.stdin.flush()
                    self.assertEqual(p.wait(timeout=60), 0,
                                     "the C consumer saw wrong bytes")
                p.stdin.close()
            # A wrong pattern is caught: the test can fail.
            p = self.helper("consume", "-", 100, 5)
            p.stdout.readline()
            with shm.alloc(100, np.uint8) as t:
                t.numpy()[:] = msutil.pattern(100, 6)
                p.stdin.write(t.descriptor + "\n")
                p.stdin.flush()
                self.assertEqual(p.wait(timeout=60), 2)
            p.stdin.close()

    def test_zero_copy_and_producer_writes(self):
        p = self.helper("dlpack")  # float32 [4, 256] = i / 2
        desc = p.stdout.readline().strip()
        with modelshare.Shm(dir=self.ns) as shm:
            t = shm.open(desc)
            a, d = t.numpy(), np.from_dlpack(t)
            want = np.arange(1024, dtype=np.float32).reshape(4, 256) / 2
            self.assertEqual(a.shape, (4, 256))
            self.assertEqual(a.dtype, np.float32)
            self.assertTrue(np.array_equal(a, want))
            self.assertTrue(np.array_equal(d, want))
            # Same address as the library's data pointer, inside a shared
            # mapping of the region file named in the descriptor.
            self.assertEqual(a.ctypes.data, t.data_ptr)
            self.assertEqual(d.ctypes.data, t.data_ptr)
            line = mapping_of(a.ctypes.data)
            region = desc.split(":")[1]
            self.assertIsNotNone(line)
            self.assertIn(region, line)
            self.assertIn("r--s", line)  # read-only, shared
            for n in (1, 2):
                p.stdin.write("bump\n")
                p.stdin.flush()
                self.assertEqual(p.stdout.readline().strip(), "bumped")
                self.assertEqual(a[0, 0], 1000.0 * n)  # no re-import
                self.assertEqual(d[0, 0], 1000.0 * n)
            self.assertEqual(a[0, 1], 0.5)
            del a, d
            t.release()
        self.assertEqual(self.finish(p), 0)


if __name__ == "__main__":
    msutil.main()
