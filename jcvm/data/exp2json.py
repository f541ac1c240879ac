#!/usr/bin/env python3
"""Turns the text dump of a Java Card export file (the kit's `exp2text` output, `*_exp.tex`)
into kagi-jcvm's token-table JSON (the format of api-tokens-3.0.5.json): package name, AID,
version, and each exported class with its token, flags, supers, interfaces, fields (token,
constant value) and methods (name, descriptor, token, flags).

Usage: exp2json.py SOURCE-TEXT FILE_exp.tex... > table.json
"""
import json
import re
import sys


def parse(path):
    """The dump as nested (name, [items]) blocks and (key, value, comment) lines."""
    root = []
    stack = [root]
    for raw in open(path, encoding="utf-8", errors="replace"):
        line = raw.strip()
        if not line:
            continue
        comment = None
        if "//" in line:
            line, comment = line.split("//", 1)
            line, comment = line.strip(), comment.strip()
        if line.endswith("{"):
            block = (line[:-1].strip(), [], comment)
            stack[-1].append(block)
            stack.append(block[1])
        elif line == "}":
            stack.pop()
        else:
            key, _, value = line.partition("\t")
            stack[-1].append((key.strip(), value.strip(), comment))
    return root


def lines(block):
    return [i for i in block if isinstance(i[1], str)]


def blocks(block, name=None):
    return [i for i in block if isinstance(i[1], list) and (name is None or i[0] == name)]


def field(block, key):
    for k, v, c in lines(block):
        if k == key:
            return v, c
    raise KeyError(key)


def dotted(name):
    return name.replace("/", ".")


def package(path):
    (top,) = blocks(parse(path))
    body = top[1]
    (pool,) = blocks(body, "constant_pool")
    (info,) = [b for b in blocks(pool[1]) if b[0].lower() == "constant_package_info"]
    pname = field(info[1], "name_index")[1]
    major = field(info[1], "major_version")[0]
    minor = field(info[1], "minor_version")[0]
    aid = "".join(
        "%02X" % int(b, 16) for b in field(info[1], "aid")[0].split(":")
    )
    classes = []
    (exported,) = blocks(body, "export_classes")
    for c in blocks(exported[1], "class_info"):
        b = c[1]
        supers = [dotted(x[2]) for x in lines(blocks(b, "supers")[0][1])]
        interfaces = [dotted(x[2]) for x in lines(blocks(b, "interfaces")[0][1])]
        fields = []
        for f in blocks(blocks(b, "fields")[0][1], "field_info"):
            entry = {
                "name": field(f[1], "name_index")[1],
                "descriptor": field(f[1], "Descriptor_Index")[1],
                "token": int(field(f[1], "token")[0]),
                "flags": field(f[1], "access_flags")[0],
            }
            for attrs in blocks(f[1], "attributes"):
                for a in blocks(attrs[1]):
                    comment = field(a[1], "constantvalue_index")[1]
                    m = re.match(r"value = (-?\d+)", comment or "")
                    if m:
                        entry["value"] = int(m.group(1))
            fields.append(entry)
        methods = [
            {
                "name": field(m[1], "name_index")[1],
                "descriptor": field(m[1], "Descriptor_Index")[1],
                "token": int(field(m[1], "token")[0]),
                "flags": field(m[1], "access_flags")[0],
            }
            for m in blocks(blocks(b, "methods")[0][1], "method_info")
        ]
        classes.append(
            {
                "name": dotted(field(b, "name_index")[1]),
                "token": int(field(b, "token")[0]),
                "flags": field(b, "access_flags")[0],
                "supers": supers,
                "interfaces": interfaces,
                "fields": fields,
                "methods": methods,
            }
        )
    classes.sort(key=lambda c: c["token"])
    return {
        "name": dotted(pname),
        "aid": aid,
        "version": "%s.%s" % (major, minor),
        "classes": classes,
    }


if __name__ == "__main__":
    source, files = sys.argv[1], sys.argv[2:]
    table = {"source": source, "packages": [package(p) for p in files]}
    json.dump(table, sys.stdout, ensure_ascii=False, indent=None)
    sys.stdout.write("\n")
