#!/usr/bin/env python3
"""An independent implementation of the load file data block, written from the JCVM
specification (chapter 6) with nothing but the standard library, for kagi-cap's tests.

Usage: independent_lfdb.py FILE.cap  -> one JSON object on stdout:
  block      hex of Header, Directory, Import, Applet, Class, Method, StaticField, Export,
             ConstantPool, RefLocation, Descriptor (those present), Debug never
  block_nodesc  the same without Descriptor
  package, version, applets, imports  read from Header / Applet / Import by this script
Exits 1 with a message when a component's tag or u2 size disagrees with its bytes."""
import json, sys, zipfile

TAGS = {"Header": 1, "Directory": 2, "Applet": 3, "Import": 4, "ConstantPool": 5,
        "Class": 6, "Method": 7, "StaticField": 8, "RefLocation": 9, "Export": 10,
        "Descriptor": 11, "Debug": 12}
ORDER = ["Header", "Directory", "Import", "Applet", "Class", "Method", "StaticField",
         "Export", "ConstantPool", "RefLocation", "Descriptor"]

z = zipfile.ZipFile(sys.argv[1])
comps = {}
for name in z.namelist():
    parts = name.split("/")
    if len(parts) >= 2 and parts[-2] == "javacard" and parts[-1].endswith(".cap"):
        comp = parts[-1][:-4]
        if comp in TAGS:
            comps[comp] = z.read(name)
for comp, data in comps.items():
    if data[0] != TAGS[comp]:
        sys.exit(f"{comp}: tag {data[0]} != {TAGS[comp]}")
    size = (data[1] << 8) | data[2]
    if size != len(data) - 3:
        sys.exit(f"{comp}: u2 size {size} != {len(data) - 3}")

def pkg_info(b, i):
    minor, major, n = b[i], b[i + 1], b[i + 2]
    return {"aid": b[i + 3:i + 3 + n].hex().upper(), "version": f"{major}.{minor}"}, i + 3 + n

h = comps["Header"][3:]
assert h[:4] == bytes.fromhex("DECAFFED")
package, _ = pkg_info(h, 7)
applets = []
if "Applet" in comps:
    a = comps["Applet"][3:]
    i = 1
    for _ in range(a[0]):
        n = a[i]
        applets.append(a[i + 1:i + 1 + n].hex().upper())
        i += 1 + n + 2
imports = []
m = comps["Import"][3:]
i = 1
for _ in range(m[0]):
    p, i = pkg_info(m, i)
    imports.append(p)
block = b"".join(comps[c] for c in ORDER if c in comps)
nodesc = b"".join(comps[c] for c in ORDER if c in comps and c != "Descriptor")
print(json.dumps({"block": block.hex().upper(), "block_nodesc": nodesc.hex().upper(),
                  "package": package["aid"], "version": package["version"],
                  "applets": applets, "imports": imports,
                  "sizes": {c: len(d) for c, d in comps.items()}}))
