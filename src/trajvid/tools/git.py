"""Reading a repository's git revisions and DVC experiments, for the tools (report, status,
revisions): nothing here checks anything out."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

EXPERIMENT_REF = re.compile(r"refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/[^/]+")  # refs/exps/<baseline sha>/<name>


def git(root: Path, *args: str) -> str | None:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else None


def default_revisions(root: Path) -> list[tuple[str, str]]:
    """(name, ref) of every branch and every DVC experiment (refs/exps/...)."""
    out = git(root, "for-each-ref", "--format=%(refname)", "refs/heads", "refs/exps") or ""
    revisions = []
    for ref in out.split():
        if ref.startswith("refs/exps/") and not EXPERIMENT_REF.fullmatch(ref):
            continue  # DVC's own bookkeeping refs (stash, celery, exec), not experiments
        revisions.append((ref.rsplit("/", 1)[-1] if ref.startswith("refs/exps/") else ref[len("refs/heads/"):], ref))
    return revisions


def resolve(root: Path, name: str) -> str | None:
    """A branch, tag, commit or DVC experiment name -> a ref git can read."""
    if git(root, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"):
        return name
    for _, ref in default_revisions(root):
        if ref.startswith("refs/exps/") and ref.rsplit("/", 1)[-1] == name:
            return ref
    return None


def experiment_commits(root: Path) -> set[str]:
    """The commits DVC experiment refs point at (refs/exps/..., not DVC's bookkeeping refs)."""
    out = git(root, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps") or ""
    return {commit for commit, ref in (line.split(" ", 1) for line in out.splitlines())
            if EXPERIMENT_REF.fullmatch(ref)}


def show(root: Path, rev: str, path: str) -> str | None:
    """The text of `path` at `rev`, or None where it is absent."""
    return git(root, "show", f"{rev}:{path}")
