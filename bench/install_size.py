"""Wheel size and installed size of the core install and of each extra.

``python bench/install_size.py`` builds sslspeaker's wheel (``pip wheel --no-deps``) and sums, for
the core requirements and for each extra as ``pyproject.toml`` declares them, the files on disk
of every distribution they pull in (the transitive closure of ``Requires-Dist``, read from the
installed distributions' metadata and RECORD files of this environment). An extra's figure is what it adds to the core install.
Distributions not installed here are named, not guessed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from _record import record, table

ROOT = Path(__file__).resolve().parents[1]
MB = 1e6


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    return canonical(Requirement(req).name)


def applies(req: str) -> bool:
    """Whether a Requires-Dist line is pulled in here without extras (its marker true on this machine)."""
    marker = Requirement(req).marker
    return marker is None or marker.evaluate({"extra": ""})


def installed_size(dist: metadata.Distribution) -> int:
    """Bytes on disk of a distribution's installed files (its RECORD)."""
    total = 0
    for f in dist.files or []:
        p = Path(dist.locate_file(f))
        if p.is_file():
            total += p.stat().st_size
    return total


def closure(names: set[str], dists: dict[str, metadata.Distribution], missing: set[str]) -> set[str]:
    """Every installed distribution ``names`` pull in (their unconditional requirements, recursively)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        if n not in dists:
            missing.add(n)
            continue
        seen.add(n)
        todo += [requirement_name(r) for r in dists[n].requires or [] if applies(r)]
    return seen


def wheel_size() -> tuple[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp,
                        str(ROOT)], check=True)
        wheel = next(Path(tmp).glob("sslspeaker-*.whl"))
        return wheel.name, wheel.stat().st_size


def main() -> None:
    dists = {canonical(d.metadata["Name"]): d for d in metadata.distributions()}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core_names = {requirement_name(r) for r in project["dependencies"]}
    extras = {extra: {requirement_name(r) for r in reqs} for extra, reqs in project["optional-dependencies"].items()}
    missing: set[str] = set()
    core = closure(core_names, dists, missing)
    rows = [{"install": "core (" + ", ".join(sorted(core_names)) + ")", "distributions": len(core),
             "installed MB": round(sum(installed_size(dists[n]) for n in core) / MB, 1),
             "of which torch MB": round(installed_size(dists["torch"]) / MB, 1) if "torch" in core else "",
             "not installed here": ", ".join(sorted(missing)) or "-"}]
    for extra, names in sorted(extras.items()):
        gone: set[str] = set()
        added = closure(names, dists, gone) - core
        rows.append({"install": f"+ [{extra}]", "distributions": len(added),
                     "installed MB": round(sum(installed_size(dists[n]) for n in added) / MB, 1),
                     "not installed here": ", ".join(sorted(gone)) or "-"})
    name, size = wheel_size()
    body = (f"Wheel `{name}`: {size / MB:.2f} MB (code, packaged recipes and the default model). Installed sizes "
            "are the files on disk of the distributions each install pulls in, in this environment (Python "
            f"{sys.version.split()[0]}, the CPU torch build); an extra's row is what it adds to the core.\n\n"
            + table(rows, ["install", "distributions", "installed MB", "of which torch MB", "not installed here"]))
    print(body)
    if "--no-record" not in sys.argv:
        record("install_size", "Install: wheel size and installed size of the core and each extra (issue 21)", body)


if __name__ == "__main__":
    main()
