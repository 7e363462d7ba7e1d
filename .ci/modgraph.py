#!/usr/bin/env python3
"""Prints brood's module graph (one module per file) and its cycles; exits 1 if there is one.

`--skip PREFIX` leaves out the cycles inside a part (named in .ci/run with the reason).

An edge A -> B means the file of module A names module B: a `crate::` or `super::` path
(through re-exports to the module that defines the item: `crate::Child` is `process`), or,
in a `mod.rs`, a path into one of its own submodules. Re-export lines themselves, `pub(super)`
and `#[cfg(test)] mod tests` are not edges.
"""
import os, re, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def strip(text):
    text = re.sub(r"#\[cfg\(test\)\]\s*mod tests\s*\{.*", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"pub\((super|crate|in [\w:]+)\)", "pub", text)


files = {"crate": os.path.join(ROOT, "lib.rs")}


def load(mod, path):
    """Finds the submodules `mod` declares (honouring `#[path]`) and their files."""
    here = os.path.dirname(path)
    sub = here if path.endswith(("mod.rs", "lib.rs")) else path[:-3]
    for attr, name in re.findall(r'(#\[path = "[^"]+"\]\s*(?:#\[[^\]]*\]\s*)*)?(?:pub(?:\([^)]*\))? )?mod (\w+);',
                                 strip(open(path).read())):
        m = re.search(r'#\[path = "([^"]+)"\]', attr or "")
        if m:
            p = os.path.join(sub, m.group(1))
        elif os.path.exists(os.path.join(sub, name + ".rs")):
            p = os.path.join(sub, name + ".rs")
        else:
            p = os.path.join(sub, name, "mod.rs")
        full = name if mod == "crate" else mod + "::" + name
        files[full] = p
        load(full, p)


load("crate", files["crate"])
mods = set(files)
text = {m: strip(open(p).read()) for m, p in files.items()}
REEXPORT = r"pub use (\w+)::(?:\{([\w, ]+)\}|(\w+)(?: as (\w+))?);"


def children(m):
    pre = "" if m == "crate" else m + "::"
    return {c[len(pre):] for c in mods if c.startswith(pre) and c != m and "::" not in c[len(pre):]}


def join(m, kid):
    return kid if m == "crate" else m + "::" + kid


reexports = {m: {} for m in mods}
for m in mods:
    for src, group, one, alias in re.findall(REEXPORT, text[m]):
        if src in children(m):
            for n in (group.split(",") if group else [alias or one]):
                reexports[m][n.strip().split(" as ")[-1].strip()] = join(m, src)


def resolve(cur, parts):
    """The module that the path from module `cur` through `parts` names (or None)."""
    for p in parts:
        if p == "super":
            cur = "::".join(cur.split("::")[:-1]) or "crate"
        elif p == "crate":
            cur = "crate"
        elif p == "self":
            pass
        elif join(cur, p) in mods:
            cur = join(cur, p)
        elif p in reexports[cur]:
            return reexports[cur][p]
        else:
            break
    return None if cur == "crate" else cur


def paths(body):
    """Every path starting with crate:: or super::, with `{a, b}` groups expanded."""
    for m in re.finditer(r"\b(crate|super)\b((?:::\w+)*)(::\{([^}]*)\})?", body):
        head = [m.group(1)] + [p for p in m.group(2).split("::") if p]
        if m.group(4):
            for item in m.group(4).split(","):
                item = item.strip().split(" as ")[0].split("::")
                if item[0]:
                    yield head + item
        else:
            yield head


edges = {m: set() for m in mods}
for m in mods:
    for path in paths(text[m]):
        t = resolve(m, path)
        if t and t != m:
            edges[m].add(t)
    body = re.sub(REEXPORT, "", text[m])
    for kid in children(m):
        if re.search(r"(?<![:\w])" + kid + r"::", body):
            edges[m].add(join(m, kid))

# cycles: strongly connected components (Tarjan)
index, low, stack, on, sccs = {}, {}, [], set(), []


def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in sorted(edges[v]):
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
            sccs.append(sorted(comp))


for v in sorted(mods):
    if v not in index:
        visit(v)
for m in sorted(mods - {"crate"}):
    print(f"{m:24} -> {', '.join(sorted(edges[m])) or '-'}")
skip = [a for i, a in enumerate(sys.argv) if i > 0 and sys.argv[i - 1] == "--skip"]
sccs = [c for c in sccs if not all(any(m == p or m.startswith(p + "::") for p in skip) for m in c)]
if sccs:
    print("\ncycles:")
    for c in sccs:
        print("  " + " <-> ".join(c))
    sys.exit(1)
print("\nno cycles")
