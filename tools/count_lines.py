#!/usr/bin/env python3
"""Print the sizes that issue 23 tracks, measured from this repository's files.

Rows: the recipe's ``train.py`` lines, its Brain's methods and lines, per YAML
of its ``hparams/`` the lines, % comment lines and ``!apply`` lines, the
plugin's lines and modules, and the plugin modules the recipe reaches (its
imports and YAML tags, followed through the plugin's imports with ``ast``).
Sizes with a target end in PASS or FAIL; the exit status is always 0.

Example
-------
    python tools/count_lines.py [ROOT]   # ROOT: another checkout

Authors
 * sb-urbansound contributors 2026
"""

import ast
import re
import sys
from pathlib import Path

RECIPE = Path("recipes/UrbanSound8k/SoundClassification")
PLUGIN = "sb_urbansound"
TARGETS = {  # row name: the most it may be
    "recipe train.py lines": 450,
    "Brain methods": 8,
    "hparams/cnn.yaml lines": 180,
    "hparams/cnn_large.yaml lines": 180,
    f"plugin {PLUGIN} lines": 11000,
}


def read(path):
    """Return the lines of a text file."""
    return Path(path).read_text(encoding="utf-8").splitlines()


def parse(path):
    """Return the AST of a Python file."""
    return ast.parse(Path(path).read_text(encoding="utf-8"))


def brain_size(tree):
    """Return (methods, lines) of the first class whose base ends in Brain."""
    for node in ast.walk(tree):
        bases = getattr(node, "bases", [])
        if "Brain" in [ast.unparse(b).split(".")[-1] for b in bases]:
            defs = (ast.FunctionDef, ast.AsyncFunctionDef)
            methods = [n for n in node.body if isinstance(n, defs)]
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            return len(methods), node.end_lineno - first + 1
    return 0, 0


def imported_names(tree, package):
    """Return the dotted names an AST imports (``from m import x`` gives ``m``
    and ``m.x``: x may be a submodule), relative ones resolved in
    ``package``."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            level = node.level
            base = package.rsplit(".", level - 1)[0] if level else ""
            mod = ".".join(p for p in (base, node.module) if p)
            names += [mod] + [f"{mod}.{a.name}" for a in node.names]
    return names


def reached_modules(root, names):
    """Return the plugin files that importing the dotted ``names`` runs,
    following the plugin's own imports; a.b.c also runs a and a.b."""
    seen, todo = set(), list(names)
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1) if parts[0] == PLUGIN else ():
            base = root.joinpath(*parts[:i])
            for path in (base.with_suffix(".py"), base / "__init__.py"):
                if path.is_file() and path not in seen:
                    seen.add(path)
                    is_pkg = path.name == "__init__.py"
                    package = ".".join(parts[: i if is_pkg else i - 1])
                    todo += imported_names(parse(path), package)
    return sorted(seen)


def recipe_imports(recipe):
    """Return the dotted names the recipe's Python files import and its YAMLs
    name (in ``!new:``, ``!name:`` and ``!apply:`` tags)."""
    names = []
    for path in recipe.glob("*.py"):
        names += imported_names(parse(path), "")
    for path in (recipe / "hparams").glob("*.yaml"):
        tags = rf"!(?:new|name|apply):({PLUGIN}(?:\.\w+)+)"
        names += re.findall(tags, "\n".join(read(path)))
    return names


def rows(root):
    """Yield (name, value) for every size, in print order."""
    recipe = root / RECIPE
    train = recipe / "train.py"
    yield "recipe train.py lines", len(read(train))
    methods, lines = brain_size(parse(train))
    yield "Brain methods", methods
    yield "Brain lines", lines
    for yaml in sorted((recipe / "hparams").glob("*.yaml")):
        text = read(yaml)
        comments = sum(line.lstrip().startswith("#") for line in text)
        name = f"hparams/{yaml.name}"
        yield f"{name} lines", len(text)
        yield f"{name} comment %", round(100 * comments / max(len(text), 1), 1)
        yield f"{name} !apply lines", sum("!apply" in line for line in text)
    files = sorted((root / PLUGIN).rglob("*.py"))
    yield f"plugin {PLUGIN} lines", sum(len(read(f)) for f in files)
    yield f"plugin {PLUGIN} modules", len(files)
    reached = reached_modules(root, recipe_imports(recipe))
    for path in reached:
        yield f"reached {path.relative_to(root).as_posix()}", len(read(path))
    yield "reached modules", len(reached)
    yield "reached lines", sum(len(read(p)) for p in reached)


def main(argv):
    """Print the rows of the repository at ``argv[0]`` (default: this one)."""
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    print(f"{'size':<56} {'value':>8}  target  result")
    for name, value in rows(root):
        line = f"{name:<56} {value:>8}"
        if name in TARGETS:
            ok = value <= TARGETS[name]
            line += f"  <={TARGETS[name]:<5} {'PASS' if ok else 'FAIL'}"
        print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
