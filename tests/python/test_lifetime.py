"""Lifetime and read-only: arrays outlive release(), close() refuses with
MS_EBUSY while anything from the allocator lives, and writes to read-only
views raise ValueError without ever crashing."""
import gc
import textwrap

import msutil
import numpy as np

import modelshare


class Lifetime(msutil.NamespaceTest):
    def test_array_outlives_release(self):
        with modelshare.Shm(dir=self.ns) as shm:
            t = shm.alloc((3, 1000), np.int64)
            t.numpy()[:] = np.arange(3000).reshape(3, 1000)
            a = t.numpy()
            desc = t.descriptor
            t.release()
            t.release()  # idempotent
            self.assertTrue(t.released)
            with self.assertRaises(modelshare.InvalidArgument):
                t.numpy()
            del t
            gc.collect()
            # Still held through the array: the descriptor still opens and
            # the data is intact.
            with shm.open(desc) as again:
                self.assertTrue(np.array_equal(again.numpy(), a))
            self.assertEqual(int(a.sum()), 3000 * 2999 // 2)
            self.assertEqual(shm.stats()["regions_active"], 1)
            view = a[1:, ::2]  # views of views keep it too
            del a
            gc.collect()
            self.assertEqual(shm.stats()["regions_active"], 1)
            self.assertEqual(int(view[0, 0]), 1000)
            del view
            gc.collect()
            self.assertEqual(shm.stats()["regions_active"], 0)
            with self.assertRaises((modelshare.NotFound,
                                    modelshare.StaleDescriptor)):
                shm.open(desc)

    def test_close_refuses_while_alive(self):
        shm = modelshare.Shm(dir=self.ns)

        def array_of_released_tensor():
            t = shm.alloc(10, np.float32)
            a = t.numpy()
            t.release()
            return a

        holders = {
            "array": array_of_released_tensor,
            "tensor": lambda: shm.alloc(4, np.uint8),
            "dlpack array": lambda: np.from_dlpack(shm.alloc(4, np.uint8)),
            "capsule": lambda: shm.alloc(4, np.uint8).__dlpack__(),
            "opened tensor": lambda: shm.open(keep.descriptor),
        }
        keep = None
        for what, make in holders.items():
            held = make()
            keep = keep or shm.alloc(8, np.uint8)
            if what == "opened tensor":
                keep.release()
            with self.assertRaises(modelshare.Busy, msg=what) as cm:
                shm.close()
            self.assertEqual(cm.exception.code, -5)
            self.assertEqual(cm.exception.name, "MS_EBUSY")
            self.assertIn("held", cm.exception.message)
            self.assertFalse(shm.closed)
            shm.stats()  # refused: still usable
            del held
            gc.collect()
        del keep
        gc.collect()
        shm.close()
        self.assertTrue(shm.closed)
        shm.close()  # idempotent

    def test_read_only_views_in_a_child(self):
        p = self.helper("produce", 4096, 5)
        desc = p.stdout.readline().strip()
        child = textwrap.dedent("""
            import ctypes, sys
            import numpy as np
            import modelshare
            shm = modelshare.Shm(dir=sys.argv[1])
            t = shm.open(sys.argv[2])
            assert not t.writable
            a, d = t.numpy(), np.from_dlpack(t)
            before = bytes(a)
            attempts = [
                lambda: a.__setitem__(0, 1),
                lambda: a.fill(0),
                lambda: np.copyto(a, 3),
                lambda: a.setflags(write=True),
                lambda: a[10:20].__setitem__(slice(None), 9),
                lambda: a.view(np.uint32).__setitem__(0, 7),
                lambda: a.reshape(64, 64).__setitem__((1, 1), 2),
                lambda: d.__setitem__(0, 1),
                lambda: d.setflags(write=True),
                lambda: np.add(a, 1, out=a),
            ]
            for i, f in enumerate(attempts):
                try:
                    f()
                except ValueError:
                    continue
                sys.exit(f"attempt {i} did not raise ValueError")
            # A buffer export is read-only too.
            assert memoryview(a).readonly
            try:
                (ctypes.c_char * 4096).from_buffer(a)
                sys.exit("ctypes got a writable buffer")
            except TypeError:
                pass
            assert bytes(a) == before
            # A writable handle on the same region is writable.
            w = shm.open(sys.argv[2], writable=True)
            assert w.writable and w.numpy().flags.writeable
            w.numpy()[0] = before[0] ^ 0xff
            assert a[0] == before[0] ^ 0xff  # the same memory
            w.numpy()[0] = before[0]
            del a, d, w, t
            shm.close()
            print("read-only: ok")
        """)
        r = msutil.run_python(child, self.ns, desc)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stdout.strip(), "read-only: ok")
        self.assertEqual(self.finish(p), 0)

    def test_child_crash_is_detected(self):
        """The isolation is real: a write through the raw address of a
        read-only mapping kills the child, and the test sees it."""
        p = self.helper("produce", 4096, 5)
        desc = p.stdout.readline().strip()
        child = textwrap.dedent("""
            import ctypes, sys
            import modelshare
            t = modelshare.Shm(dir=sys.argv[1]).open(sys.argv[2])
            ctypes.memset(t.data_ptr, 0, 1)
        """)
        r = msutil.run_python(child, self.ns, desc)
        # SIGSEGV, or AddressSanitizer's report of it in an ASan build.
        self.assertTrue(r.returncode == -11 or "AddressSanitizer: SEGV" in
                        r.stderr, (r.returncode, r.stderr[-1000:]))
        self.assertEqual(self.finish(p), 0)
        # The dead child's hold is reclaimed by a sweep.
        with modelshare.Shm(dir=self.ns) as shm:
            shm.sweep()


if __name__ == "__main__":
    msutil.main()
