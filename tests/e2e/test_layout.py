"""The house keeps its shape: two layers, one direction, no import circle, small modules and functions, one name
per class, a README that is the way in (with working links) and a CI that runs the README's test command."""

import ast
import os
import re

from tests.support import REPO

PACKAGES = ("npzfix_core", "npzfix_dagster", "npzfix_tools")
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_README_LINES = 300, 60, 150


def _modules() -> dict[str, str]:
    """Dotted module name -> path, for every module of the three packages."""
    out = {}
    for pkg in PACKAGES:
        for d, _, names in os.walk(os.path.join(REPO, pkg)):
            for n in names:
                if n.endswith(".py"):
                    rel = os.path.relpath(os.path.join(d, n), REPO)[:-3].replace(os.sep, ".")
                    out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(d, n)
    return out


def _imports(path: str, modules: dict[str, str]) -> set[str]:
    """Modules of ours that ``path`` imports anywhere (at the top or inside a function), TYPE_CHECKING aside."""
    tree = ast.parse(open(path).read())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in modules:
                out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
    return out


def test_two_layers_one_direction_and_no_import_circle():
    modules = _modules()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
    upward = [(m, i) for m, deps in graph.items() if m.startswith("npzfix_core") for i in deps if not i.startswith("npzfix_core")]
    assert not upward, f"the core imports another layer: {upward}"
    for m, p in modules.items():
        if m.startswith("npzfix_core"):
            assert not re.search(r"^\s*(import|from) dagster", open(p).read(), re.M), f"{m} imports dagster"

    # Tarjan: any strongly connected component of more than one module is a circle
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
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
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_modules_and_functions_stay_small_and_classes_have_one_name():
    too_long, classes = [], {}
    scripts = {}
    for folder in ("benchmarks", "scripts"):  # run by hand, held to the same sizes (their classes aside)
        for n in sorted(os.listdir(os.path.join(REPO, folder))):
            if n.endswith(".py"):
                scripts[f"{folder}/{n}"] = os.path.join(REPO, folder, n)
    for m, p in {**_modules(), **scripts}.items():
        src = open(p).read()
        if src.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{m}: {src.count(chr(10))} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{m}.{node.name}: {n} lines")
            elif isinstance(node, ast.ClassDef) and m not in scripts:
                classes.setdefault(node.name, []).append(m)
    assert not too_long, too_long
    assert not {k: v for k, v in classes.items() if len(v) > 1}, "two classes of one name"


def test_the_readme_is_the_way_in_and_its_links_hold():
    readme = open(os.path.join(REPO, "README.md")).read()
    lines = readme.splitlines()
    assert len(lines) <= MAX_README_LINES, len(lines)
    assert lines[0] == "# npzfix"
    first = "\n".join(lines[1:6])
    assert "make demo" in first and "make test" in first  # the two commands for a fresh machine, first
    assert "make test" in open(os.path.join(REPO, ".ci", "run")).read()  # CI runs the README's test command
    docs = [os.path.join(REPO, "README.md"), os.path.join(REPO, "CHANGELOG.md")]
    docs += [os.path.join(REPO, "docs", n) for n in os.listdir(os.path.join(REPO, "docs")) if n.endswith(".md")]
    broken = []
    for path in docs:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", open(path).read()):
            if "://" in target:
                continue
            if not os.path.exists(os.path.normpath(os.path.join(os.path.dirname(path), target))):
                broken.append(f"{os.path.relpath(path, REPO)} -> {target}")
    assert not broken, broken
    for name in ("cli", "configuration", "dagster", "operations", "deploy", "benchmarks", "architecture"):
        assert f"docs/{name}.md" in readme, name


def test_every_package_is_shipped():
    """A regular install (a Kubernetes image, a wheel) gets every package: pyproject lists them explicitly."""
    import tomllib

    listed = set(tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))["tool"]["setuptools"]["packages"])
    found = {m for m, p in _modules().items() if p.endswith("__init__.py")}
    assert found == listed, found ^ listed
