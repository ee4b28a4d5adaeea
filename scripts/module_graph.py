#!/usr/bin/env python3
"""The graph of pktcrypt-core's top-level modules, from their `crate::` paths; fails on a cycle.

Names the crate root re-exports (`crate::Engine`, ...) are resolved to the module they come from
(lib.rs's `pub use module::{...}` lines); `crate::Time` and other items of the root itself are
not edges. Submodules fold into their top-level module. Usage: module_graph.py [--dot]
"""
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "userspace/pktcrypt-core/src"


def top_modules():
    lib = (SRC / "lib.rs").read_text()
    return re.findall(r"^(?:pub )?mod (\w+);", lib, re.M)


def root_names(mods):
    lib = (SRC / "lib.rs").read_text()
    names = {}
    for m in re.finditer(r"pub use (\w+)::(\{[^}]*\}|\w+);", lib, re.S):
        mod, items = m.group(1), m.group(2).strip("{}")
        for item in re.split(r"[,\s]+", items):
            if item:
                names[item] = mod
    return names


def files_of(mod):
    single = SRC / f"{mod}.rs"
    folder = SRC / mod
    files = [single] if single.exists() else []
    if folder.is_dir():
        files += sorted(folder.rglob("*.rs"))
    return files


def strip_tests(text):
    # Test modules may use anything; the graph is of the code that ships.
    out, depth, skipping = [], 0, False
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not skipping and re.fullmatch(r"#\[cfg\((test|all\(test,.*\))\)\]", line.strip()) and i + 1 < len(lines) and lines[i + 1].lstrip().startswith("mod "):
            skipping, depth = True, 0
            i += 1
            continue
        if skipping:
            depth += line.count("{") - line.count("}")
            if depth <= 0 and "}" in line:
                skipping = False
            i += 1
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def edges(mods, names):
    graph = {m: set() for m in mods}
    for mod in mods:
        for f in files_of(mod):
            text = strip_tests(f.read_text())
            # Comments (and doc links in them) are not dependencies.
            text = re.sub(r"//.*", "", text)
            # crate::a::b, crate::Name, and crate::{A, b::C} groups.
            for m in re.finditer(r"crate::(\{[^}]*\}|\w+)", text):
                part = m.group(1)
                heads = re.findall(r"(?:^|[{,]\s*)(\w+)", part) if part.startswith("{") else [part]
                for head in heads:
                    target = head if head in graph else names.get(head)
                    if target and target != mod:
                        graph[mod].add(target)
    return graph


def cycles(graph):
    found, state, stack = [], {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return found


def main():
    mods = top_modules()
    graph = edges(mods, root_names(mods))
    if "--dot" in sys.argv:
        print("digraph core {")
        for a in sorted(graph):
            for b in sorted(graph[a]):
                print(f"  {a} -> {b};")
        print("}")
    else:
        for a in sorted(graph):
            print(f"{a:10} -> {', '.join(sorted(graph[a])) or '-'}")
    found = cycles(graph)
    for c in found:
        print("cycle: " + " -> ".join(c), file=sys.stderr)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
