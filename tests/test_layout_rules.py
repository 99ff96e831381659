"""The layout's rules that layout_check does not check (ARCHITECTURE.md, "Rules the layout keeps").

* no private (underscore) name is imported from another module of mlxtune;
* the verbs (convert, fuse, generate, chat, evaluate, report, training/train) are imported by cli/ only;
* no module outside backends/ decides by comparing with a backend's name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mlxtune

PACKAGE = Path(mlxtune.__file__).parent
VERBS = {"mlxtune.convert", "mlxtune.fuse", "mlxtune.generate", "mlxtune.chat", "mlxtune.evaluate", "mlxtune.report", "mlxtune.training.train"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        yield path, name, package, ast.parse(path.read_text(), str(path))


def _imports(package: str, tree: ast.AST):
    """(module imported from, names, line) for every ``from X import ...``, relative ones made absolute."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module, [a.name for a in node.names], node.lineno


def test_no_private_name_is_imported_across_modules():
    found = []
    for path, name, package, tree in _modules():
        for module, names, line in _imports(package, tree):
            if module.startswith("mlxtune") and module != name:
                found += [f"{path.relative_to(PACKAGE)}:{line} {module}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert not found, "private names imported from another module:\n" + "\n".join(found)


def test_verbs_are_imported_by_the_cli_only():
    found = []
    for path, name, package, tree in _modules():
        if name.startswith("mlxtune.cli"):
            continue
        for module, names, line in _imports(package, tree):
            targets = {module} | {f"{module}.{n}" for n in names}
            used = sorted(t for t in targets & VERBS if t != name)
            found += [f"{path.relative_to(PACKAGE)}:{line} imports {t}" for t in used]
    assert not found, "verb modules used as libraries outside cli/:\n" + "\n".join(found)


def test_no_module_outside_backends_decides_by_a_backend_name():
    found = []
    for path, name, package, tree in _modules():
        if name.startswith("mlxtune.backends"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                constants = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                constants += [e.value for c in node.comparators if isinstance(c, (ast.Tuple, ast.List, ast.Set)) for e in c.elts if isinstance(e, ast.Constant)]
                if {"mlx", "numpy"} & set(constants):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not found, "comparisons with a backend name outside backends/:\n" + "\n".join(found)
