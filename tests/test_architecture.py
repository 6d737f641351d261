"""The package's shape: every module imports on its own, and the module graph has no cycle.

The graph is read from the source (every `import`/`from ... import` of a vi_jax module, at any
depth, so a lazy import inside a function counts as an edge too): a cycle hidden behind a lazy
import is still a cycle."""
import ast
import os
import subprocess
import sys

import vi_jax

PACKAGE_DIR = os.path.dirname(vi_jax.__file__)


def module_names() -> list[str]:
    names = []
    for root, _, files in os.walk(PACKAGE_DIR):
        for file in sorted(files):
            if file.endswith(".py"):
                relative = os.path.relpath(os.path.join(root, file), os.path.dirname(PACKAGE_DIR))[:-3]
                parts = relative.split(os.sep)
                names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


def source_path(module: str) -> str:
    base = os.path.join(os.path.dirname(PACKAGE_DIR), *module.split("."))
    return os.path.join(base, "__init__.py") if os.path.isdir(base) else base + ".py"


def imported_modules(module: str, known: set[str]) -> set[str]:
    """The vi_jax modules `module`'s source imports (relative imports resolved; `from pkg import
    name` counts as pkg.name when that is a module, else as pkg)."""
    is_package = source_path(module).endswith("__init__.py")
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(source_path(module)).read())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # import vi_jax.a.b.name -> the module vi_jax.a.b
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]):
    """One cycle of the directed graph as a list of nodes, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for successor in sorted(graph[node]):
            if state.get(successor) == "open":
                return stack[stack.index(successor):] + [successor]
            if successor not in state:
                cycle = visit(successor)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_a_cycle_and_accepts_a_dag():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_module_graph_is_acyclic():
    known = set(module_names())
    graph = {module: imported_modules(module, known) - {"vi_jax"} for module in known}
    # the package's own __init__ re-exports the public API, so it depends on modules, never the reverse
    assert not any("vi_jax" in imported_modules(module, known) for module in known if module != "vi_jax"), \
        "a module imports the package root, which imports every module"
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_every_module_imports_on_its_own():
    """Each module imported with no other vi_jax module loaded before it (third-party packages
    stay cached between modules, so this costs one interpreter, not one per module)."""
    script = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        f"for name in {module_names()!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'vi_jax' or m.startswith('vi_jax.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed.append(name + ': ' + traceback.format_exc(limit=3))\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=os.path.dirname(PACKAGE_DIR))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_public_api_resolves_lazily_to_each_names_defining_module():
    """Every name of vi_jax.__all__ is the object its module defines; `import vi_jax` alone
    imports none of them (checked in a fresh interpreter)."""
    import importlib
    for name in vi_jax.__all__:
        module = importlib.import_module(f"vi_jax.{vi_jax._PUBLIC[name]}")
        assert getattr(vi_jax, name) is getattr(module, name), name
    assert "train_vae" in dir(vi_jax)
    code = "import sys, vi_jax; print(sorted(m for m in sys.modules if m.startswith('vi_jax.') or m == 'jax'))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded
    try:
        vi_jax.no_such_name
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("an unknown name resolved")
