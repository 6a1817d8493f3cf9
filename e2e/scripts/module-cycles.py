#!/usr/bin/env python3
"""Fails when modules of a crate import each other in a cycle.

Each source file is one module. An edge A -> B is any path in A (outside `#[cfg(test)]`
blocks and test files) that names module B: `crate::b::…`, `super::b`, `self::b`, or a child
`b::…` of A. A path to an item that a module re-exports from one of its children
(`pub(crate) use child::Item;`) leads to that child, so a parent's re-export list is a
facade, not a hub through which everything would depend on everything.
Usage: module-cycles.py CRATE_SRC_DIR [...]
"""
import os
import re
import sys


def modules(src):
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            if "tests" in rel or rel[-1:] == ["fixtures"] or any(p.endswith("_tests") for p in rel):
                continue
            mods[tuple(rel)] = path
    return mods


def strip_tests(text):
    # Drop `#[cfg(test)] mod x { … }` blocks and `#[cfg(test)]`-gated items (one item).
    out, i = [], 0
    while True:
        j = text.find("#[cfg(test)]", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        k = j + len("#[cfg(test)]")
        depth, started = 0, False
        while k < len(text):
            c = text[k]
            if c == "{":
                depth += 1
                started = True
            elif c == "}":
                depth -= 1
                if started and depth == 0:
                    k += 1
                    break
            elif c == ";" and not started:
                k += 1
                break
            k += 1
        i = k
    return "".join(out)


def reexports(mods):
    """(module, item) -> child module that defines it, from `pub… use child::…` lines."""
    out = {}
    for m, path in mods.items():
        text = strip_tests(open(path).read())
        for head, body in re.findall(r"pub(?:\([a-z]+\))?\s+use\s+([a-z_][a-z0-9_]*)::(\{[^;]*\}|[A-Za-z_][A-Za-z0-9_:]*(?:\s+as\s+\w+)?);", text):
            child = m + (head,)
            if child not in mods:
                continue
            items = re.split(r",\s*", body.strip("{}")) if body.startswith("{") else [body]
            for item in items:
                item = item.strip()
                if not item:
                    continue
                alias = item.split(" as ")[-1].strip().split("::")[-1]
                if alias == "self":
                    alias = head
                out[(m, alias)] = child
    return out


REEXPORTS = {}


def resolve(mods, here, path):
    """The module that defines what `path` (a list of segments) names, seen from `here`."""
    if path[0] not in ("crate", "super", "self") and (here + (path[0],)) in mods:
        path = ["self"] + path
    if path[0] == "crate":
        base, rest = (), path[1:]
    elif path[0] == "super":
        base, rest = here[:-1], path[1:]
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
    elif path[0] == "self":
        base, rest = here, path[1:]
    else:
        return None
    best, used = None, 0
    for n in range(len(rest) + 1):
        cand = base + tuple(rest[:n])
        if cand in mods:
            best, used = cand, n
    seen = 0
    while best is not None and used < len(rest) and (best, rest[used]) in REEXPORTS and seen < 16:
        best = REEXPORTS[(best, rest[used])]
        seen += 1
    return best


PATH = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)++)(?!::\{)")


def use_paths(tree):
    """Every full path a `use` tree names: `a::{b, c::{d, e}}` -> a::b, a::c::d, a::c::e."""
    tree = re.sub(r"\s+", " ", tree).strip()
    depth, top = 0, []
    start = 0
    for i, c in enumerate(tree):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "," and depth == 0:
            top.append(tree[start:i])
            start = i + 1
    top.append(tree[start:])
    out = []
    for part in (t.strip() for t in top):
        if not part:
            continue
        brace = part.find("{")
        if brace >= 0:
            prefix = part[:brace].rstrip(":").strip()
            inner = part[brace + 1 : part.rindex("}")]
            for sub in use_paths(inner):
                out.append(f"{prefix}::{sub}" if prefix else sub)
        else:
            out.append(part.split(" as ")[0].strip())
    return out


USE = re.compile(r"\buse\s+([^;]*);", re.S)


def edges(mods):
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        text = strip_tests(open(path).read())
        text = re.sub(r"//[^\n]*", "", text)
        refs = [p.split("::") for p in PATH.findall(text)]
        for tree in USE.findall(text):
            for path in use_paths(tree):
                segs = [x for x in path.split("::") if x]
                if segs and segs[-1] != "self" and segs[-1] != "*":
                    refs.append(segs)
                elif len(segs) > 1:
                    refs.append(segs[:-1])
        for r in refs:
            t = resolve(mods, m, r)
            if t is None or t == m:
                continue
            if t and r[-1] == t[-1]:
                # A module imported by name (`use crate::{edge, …}`): what counts is what the
                # file then uses through it, `edge::bind(…)`.
                for item in re.findall(r"(?<![A-Za-z0-9_:])" + re.escape(r[-1]) + r"::([A-Za-z_][A-Za-z0-9_]*)", text):
                    u = resolve(mods, m, r + [item])
                    if u is not None and u != m:
                        graph[m].add(u)
                continue
            graph[m].add(t)
    return graph


def cycles(graph):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def name(m):
    return "::".join(("crate",) + m)


def main():
    bad = False
    for src in sys.argv[1:]:
        mods = modules(src)
        REEXPORTS.clear()
        REEXPORTS.update(reexports(mods))
        graph = edges(mods)
        found = cycles(graph)
        n_edges = sum(len(v) for v in graph.values())
        if found:
            bad = True
            for comp in found:
                print(f"{src}: import cycle between " + ", ".join(sorted(name(m) for m in comp)))
        else:
            print(f"{src}: {len(mods)} modules, {n_edges} imports, no cycles")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
