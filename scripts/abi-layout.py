#!/usr/bin/env python3
"""Checks the struct_size contract between two abidw dumps.

For every struct whose first member is `struct_size` in the baseline
(abi/libmodelshare.abi), each of its 1.0 members must still exist in the new
library with the same name, offset and type, and the struct must not shrink:
fields are only appended.  abidiff's insertion suppressions
(abi/suppressions.ini) cannot say this on their own: libabigail 2.2 also
hides a same-size retype of a member of a suppressed struct.
Usage: abi-layout.py BASELINE.abi NEW.abi; exit status 1 on a violation.
"""
import sys
import xml.etree.ElementTree as ET


def load(path):
    root = ET.parse(path).getroot()
    by_id = {el.get("id"): el for el in root.iter() if el.get("id")}
    return root, by_id


def type_name(by_id, tid, depth=0):
    el = by_id.get(tid)
    if el is None or depth > 20:
        return "?" + str(tid)
    tag = el.tag
    if tag in ("type-decl", "typedef-decl", "class-decl", "enum-decl",
               "union-decl"):
        return el.get("name") or "anon-" + tag
    if tag == "pointer-type-def":
        return type_name(by_id, el.get("type-id"), depth + 1) + "*"
    if tag == "qualified-type-def":
        quals = " ".join(q for q in ("const", "volatile", "restrict")
                         if el.get(q) == "yes")
        return quals + " " + type_name(by_id, el.get("type-id"), depth + 1)
    if tag == "array-type-def":
        return (type_name(by_id, el.get("type-id"), depth + 1) + "[" +
                str(el.get("size-in-bits")) + "b]")
    if tag == "function-type":
        params = [type_name(by_id, p.get("type-id"), depth + 1)
                  for p in el.findall("parameter")]
        ret = el.find("return")
        rname = type_name(by_id, ret.get("type-id"), depth + 1) if ret is not None else "void"
        return rname + "(" + ",".join(params) + ")"
    return tag


def structs(root, by_id):
    out = {}
    for el in root.iter("class-decl"):
        if el.get("is-declaration-only") == "yes":
            continue
        members = []
        for dm in el.findall("data-member"):
            var = dm.find("var-decl")
            members.append((var.get("name"), int(dm.get("layout-offset-in-bits")),
                            type_name(by_id, var.get("type-id"))))
        if members and members[0][0] == "struct_size":
            out[el.get("name")] = (int(el.get("size-in-bits")), members)
    return out


def main():
    old = structs(*load(sys.argv[1]))
    new = structs(*load(sys.argv[2]))
    bad = 0
    for name, (size, members) in sorted(old.items()):
        if name not in new:
            print(f"abi-layout: struct {name} is gone")
            bad = 1
            continue
        nsize, nmembers = new[name]
        if nsize < size:
            print(f"abi-layout: struct {name} shrank from {size} to {nsize} bits")
            bad = 1
        if nmembers[:len(members)] != members:
            print(f"abi-layout: struct {name}: 1.0 members changed:")
            print("   was: " + "; ".join(f"{n}@{o}:{t}" for n, o, t in members))
            print("   now: " + "; ".join(f"{n}@{o}:{t}" for n, o, t in nmembers[:len(members)]))
            bad = 1
        for n, o, t in nmembers[len(members):]:
            if o < size and not n.startswith("reserved"):
                print(f"abi-layout: struct {name}: {n} placed in the 1.0 "
                      f"tail padding (only reserved* may be)")
                bad = 1
    print("abi-layout: %s (%d struct_size structs)" % ("FAILED" if bad else "ok", len(old)))
    return bad


sys.exit(main())
