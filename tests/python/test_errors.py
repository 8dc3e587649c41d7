"""Bad input raises the right exception classes, never a raw int: bad
descriptors, bad dtypes and shapes, a closed Shm, a released tensor,
hostile safetensors bytes; the hierarchy covers every library code."""
import gc
import textwrap

import msutil
import numpy as np

import modelshare
from modelshare import errors


class Errors(msutil.NamespaceTest):
    def test_hierarchy_covers_every_code(self):
        lib = modelshare._lib.lib
        code = -1
        while lib.ms_err_name(code) != b"MS_UNKNOWN":
            cls = errors.by_code[code]
            self.assertTrue(issubclass(cls, modelshare.ModelshareError))
            self.assertEqual(cls.code, code)
            e = cls(code, "detail")
            self.assertEqual(e.name, lib.ms_err_name(code).decode())
            self.assertEqual(e.message, "detail")
            self.assertEqual(str(e), f"{e.name}: detail")
            self.assertIs(errors.by_name[e.name], cls)
            self.assertIs(getattr(modelshare, cls.__name__), cls)
            code -= 1
        self.assertEqual(len(errors.by_code), -code - 1)
        self.assertGreaterEqual(len(errors.by_code), 15)
        self.assertTrue(issubclass(modelshare.InvalidArgument, ValueError))
        self.assertTrue(issubclass(modelshare.OutOfMemory, MemoryError))
        self.assertEqual(len(set(errors.by_code.values())),
                         len(errors.by_code))  # one class per code
        e = errors.error(-999, "from a loader")  # not a library code
        self.assertIs(type(e), modelshare.ModelshareError)
        self.assertEqual(e.name, "MS_UNKNOWN")

    def test_bad_descriptors(self):
        p = self.helper("produce", 64, 1)
        desc = p.stdout.readline().strip()
        name, gen = desc.split(":")[1], desc.split(":")[2]
        with modelshare.Shm(dir=self.ns) as shm:
            malformed = ["", "garbage", "ms1:", "ms1:../etc/passwd:1",
                         "ms1:" + name, desc + "x" * 200, "ms1:a/b:1",
                         desc.replace(":" + gen, ":-1"), "ms1:" + name + ":",
                         "\x00", desc + "\n", desc + "\x00junk"]
            for d in malformed:
                with self.assertRaises(modelshare.InvalidArgument, msg=d) as c:
                    shm.open(d)
                self.assertEqual(c.exception.code, -1)
                self.assertTrue(c.exception.message)
            # Well-formed, but no such region.
            with self.assertRaises(modelshare.NotFound):
                shm.open(desc.replace(name[-4:], "0000" if name[-4:] !=
                                      "0000" else "1111"))
            with self.assertRaises(modelshare.StaleDescriptor):
                shm.open(desc.replace(":" + gen, ":" + str(int(gen) + 1)))
            for bad in (None, 7, ["x"]):
                with self.assertRaises(TypeError):
                    shm.open(bad)
            with shm.open(desc) as t:
                self.assertEqual(t.nbytes, 64)
        self.assertEqual(self.finish(p), 0)
        # Released everywhere: the descriptor no longer opens.
        with modelshare.Shm(dir=self.ns) as shm:
            with self.assertRaises((modelshare.NotFound,
                                    modelshare.StaleDescriptor)):
                shm.open(desc)

    def test_bad_dtypes_and_shapes(self):
        with modelshare.Shm(dir=self.ns, max_bytes=1 << 20) as shm:
            for dt in (np.complex64, object, "U4", ">i4", "V3", "M8[s]",
                       np.dtype([("a", "i4")]), "not a dtype", 3.5):
                with self.assertRaises(modelshare.InvalidArgument, msg=dt):
                    shm.alloc(4, dt)
            for shape in ((-1,), (2, -3), (1,) * 17, ("a",), (1.5,)):
                with self.assertRaises(modelshare.InvalidArgument,
                                       msg=shape):
                    shm.alloc(shape, np.uint8)
            with self.assertRaises(modelshare.OutOfRange):
                shm.alloc((1 << 62, 1 << 62), np.float64)
            with self.assertRaises(modelshare.QuotaExceeded):
                shm.alloc(2 << 20, np.uint8)
            with self.assertRaises(modelshare.InvalidArgument):
                shm.alloc(1, np.uint8, session="s" * 64)
            # bfloat16: allocatable, exported by DLPack, not by numpy.
            with shm.alloc((2, 2), "bfloat16") as t:
                self.assertEqual(t.dtype, "bfloat16")
                self.assertEqual(t.nbytes, 8)
                with self.assertRaises(modelshare.NotSupported):
                    t.numpy()
            # Every supported dtype round-trips.
            for dt in ("i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2",
                       "f4", "f8", "?"):
                with shm.alloc((3, 2), dt) as t:
                    self.assertEqual(t.dtype, np.dtype(dt))
                    self.assertEqual(t.numpy().dtype, np.dtype(dt))
                    self.assertEqual(t.nbytes, 6 * np.dtype(dt).itemsize)
            with shm.alloc((), np.float64) as t:  # 0-d
                t.numpy()[()] = 2.5
                self.assertEqual(t.shape, ())
                self.assertEqual(float(t.numpy()), 2.5)
            with shm.alloc((0, 5), np.int16) as t:  # empty
                self.assertEqual(t.numpy().shape, (0, 5))

    def test_closed_shm_and_released_tensor(self):
        shm = modelshare.Shm(dir=self.ns)
        t = shm.alloc(4, np.uint8)
        desc = t.descriptor
        self.assertEqual(t.shape, (4,))  # cached, yet refused below
        t.release()
        for call in (t.numpy, t.__dlpack__, lambda: t.shape,
                     lambda: t.descriptor, lambda: modelshare.serialize(t)):
            with self.assertRaises(modelshare.InvalidArgument):
                call()
        shm.close()
        for call in (lambda: shm.alloc(4, np.uint8), lambda: shm.open(desc),
                     shm.stats, shm.sweep,
                     lambda: modelshare.deserialize(b"", shm)):
            with self.assertRaises(modelshare.InvalidArgument) as c:
                call()
            self.assertIn("closed", str(c.exception))

    def test_bad_options(self):
        for kw in ({"prefix": "bad/prefix"}, {"prefix": ""},
                   {"prefix": "x" * 17}, {"dir": "/nonexistent-dir"},
                   {"prefix": "ok\x00"}):
            with self.assertRaises(modelshare.ModelshareError, msg=kw) as c:
                modelshare.Shm(**kw)
            self.assertIn(c.exception.code, (-1, -6, -8, -14))
            self.assertTrue(c.exception.message)

    def test_serialization(self):
        with modelshare.Shm(dir=self.ns) as shm:
            with shm.alloc((2, 3), np.float32) as t:
                t.numpy()[:] = [[1, 2, 3], [4, 5, 6]]
                blob = modelshare.serialize(t, "w", {"k": "v"})
                with self.assertRaises(modelshare.InvalidArgument):
                    modelshare.serialize(t, "__metadata__")
            for data in (blob, bytearray(blob), memoryview(blob)):
                with modelshare.deserialize(data) as h:  # heap
                    self.assertTrue(np.array_equal(h.numpy(),
                                                   [[1, 2, 3], [4, 5, 6]]))
                    with self.assertRaises(modelshare.InvalidArgument):
                        h.descriptor
            with modelshare.deserialize(blob, shm) as s:
                self.assertTrue(s.descriptor.startswith("ms1:"))
            for bad in (b"", b"\x00" * 7, blob[:-1], b"\xff" * 64,
                        blob[:8] + b"[" + blob[9:]):
                with self.assertRaises(modelshare.BadRegion, msg=bad[:16]):
                    modelshare.deserialize(bad)
            caps = modelshare.capabilities(self.ns)
            self.assertTrue(caps["shm_available"])
            self.assertGreater(caps["page_size"], 0)
            gc.collect()

    def test_no_raw_negative_ints(self):
        # Every public call either returns a value or raises; scan the
        # package for functions returning a library rc unchecked.
        child = textwrap.dedent("""
            import ast, pathlib, sys
            import modelshare
            root = pathlib.Path(modelshare.__file__).parent
            rc_calls = {"ms_shm_create", "ms_shm_destroy", "ms_shm_stats",
                        "ms_shm_sweep", "ms_capabilities", "ms_tensor_alloc",
                        "ms_tensor_open", "ms_tensor_descriptor",
                        "ms_tensor_serialize", "ms_tensor_deserialize",
                        "ms_tensor_to_dlpack"}
            for f in root.glob("*.py"):
                for node in ast.walk(ast.parse(f.read_text())):
                    if isinstance(node, ast.Return) and isinstance(
                            node.value, ast.Call) and isinstance(
                            node.value.func, ast.Attribute) and \\
                            node.value.func.attr in rc_calls:
                        sys.exit(f"{f.name}:{node.lineno} returns an rc")
            print("ok")
        """)
        r = msutil.run_python(child)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    msutil.main()
