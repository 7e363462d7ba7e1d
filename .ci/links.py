#!/usr/bin/env python3
"""Checks that every relative link in README.md, ARCHITECTURE.md and docs/*.md resolves: the
file exists and, for `file.md#anchor`, the file has a heading with that GitHub anchor."""
import glob, os, re, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def anchors(path):
    out = set()
    for line in open(path, encoding="utf-8"):
        m = re.match(r"#+\s+(.*)", line)
        if m:
            a = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(a)
    return out


bad = 0
docs = ["README.md", "ARCHITECTURE.md"] + sorted(glob.glob("docs/*.md", root_dir=ROOT))
for doc in docs:
    path = os.path.join(ROOT, doc)
    text = re.sub(r"```.*?```", "", open(path, encoding="utf-8").read(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        file, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        if not os.path.exists(dest):
            print(f"{doc}: {target}: no such file")
            bad += 1
        elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
            print(f"{doc}: {target}: no heading #{anchor}")
            bad += 1
print(f"{len(docs)} files checked, {bad} broken links")
sys.exit(1 if bad else 0)
