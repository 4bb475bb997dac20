"""The import rules of DESIGN.md, read from the source with `ast` (nothing is imported).

Every `import` and `from ... import` counts, also one inside a function, and a relative import
is resolved against the module that makes it. A rule names the modules it applies to and the
modules they must not import; a violation is reported as `path:line: a imports b`.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "facade", "cdc", "cutover", "scripts", "monolith", "extracted")
SCANNED = (*PACKAGES, "bench", "tests")

# The façade modules outside facade/shadow/ that may import it: the one that builds the app (the
# core runs without shadowing; the addon is plugged in where the app is composed, which may also
# be outside facade/, e.g. in the command that starts it, where no rule limits it).
SHADOW_COMPOSERS = frozenset({"facade.app"})


@dataclass(frozen=True)
class Import:
    """One imported module, with the module that imports it and where."""

    importer: str
    target: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.target}"


@dataclass(frozen=True)
class Rule:
    """Modules for which `applies` holds import nothing of `forbidden` (a package or a module)."""

    text: str
    applies: Callable[[str], bool]
    forbidden: tuple[str, ...]

    def violations(self, imports: list[Import]) -> list[Import]:
        return [imp for imp in imports
                if self.applies(imp.importer) and any(within(imp.target, f) for f in self.forbidden)]


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def is_test_of_scripts(module: str) -> bool:
    """A test module (`test_*.py`) anywhere in tests/, or any module of tests/scripts/."""
    return within(module, "tests.scripts") or (within(module, "tests") and module.rsplit(".", 1)[-1].startswith("test_"))


def rules(root: Path) -> tuple[Rule, ...]:
    # The shadow rule holds once facade/shadow/ is a package; while shadowing is still the flat
    # modules facade/shadow*.py (which import each other), there is no package to keep out.
    shadow = ("facade.shadow",) if (root / "facade" / "shadow").is_dir() else ()
    return (
        Rule("common imports nothing of the other packages", lambda m: within(m, "common"),
             ("facade", "cdc", "cutover", "scripts", "monolith", "extracted")),
        Rule("facade imports nothing of cdc, cutover, scripts", lambda m: within(m, "facade"),
             ("cdc", "cutover", "scripts")),
        Rule("cdc imports nothing of facade, cutover, scripts", lambda m: within(m, "cdc"),
             ("facade", "cutover", "scripts")),
        Rule(f"the façade core imports nothing of facade/shadow/ (allowed: {', '.join(sorted(SHADOW_COMPOSERS))})",
             lambda m: within(m, "facade") and not within(m, "facade.shadow") and m not in SHADOW_COMPOSERS,
             shadow),
        Rule("nothing imports scripts but tests of scripts",
             lambda m: not within(m, "scripts") and not is_test_of_scripts(m), ("scripts",)),
    )


RULES = rules(ROOT)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(root: Path, path: Path) -> Iterator[Import]:
    """The modules `path` imports: `from a import b` yields `a` and `a.b` (b may be a submodule)."""
    importer = module_name(root, path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    where = path.relative_to(root).as_posix()
    tree = ast.parse(path.read_bytes(), filename=where)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(importer, alias.name, where, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            yield Import(importer, source, where, node.lineno)
            for alias in node.names:
                yield Import(importer, f"{source}.{alias.name}", where, node.lineno)


def scan(root: Path, top_levels: tuple[str, ...] = SCANNED) -> list[Import]:
    found: list[Import] = []
    for top in top_levels:
        for path in sorted((root / top).rglob("*.py")):
            found.extend(imports_of(root, path))
    return found


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return scan(ROOT)


@pytest.mark.parametrize("rule", RULES, ids=[rule.text for rule in RULES])
def test_the_tree_keeps_the_import_rule(rule: Rule, imports: list[Import]) -> None:
    broken = rule.violations(imports)

    assert not broken, f"{rule.text}; move the code or invert the dependency:\n" + "\n".join(map(str, broken))


def test_the_scan_reads_every_package(imports: list[Import]) -> None:
    importers = {imp.importer.split(".")[0] for imp in imports}

    present = {top for top in SCANNED if (ROOT / top).is_dir()}
    assert importers == present


def test_the_rules_catch_every_form_of_a_forbidden_import(tmp_path: Path) -> None:
    files = {
        "facade/__init__.py": "",
        "facade/proxy.py": "def lazy():\n    from cdc.events import ChangeEvent\n",
        "facade/shadow/__init__.py": "from ..routing import RouteTable\n",
        "facade/shadow/addon.py": "from facade import proxy\n",
        "facade/routing.py": "from . import shadow\nimport facade.shadow.addon as addon\n",
        "facade/app.py": "from facade.shadow.addon import ShadowAddon\n",
        "common/waiting.py": "from extracted import catalog\n",
        "cdc/__init__.py": "from .. scripts import cli\n",
        "bench/proxy.py": "import scripts.cli\n",
        "tests/support.py": "from scripts import demo\n",
        "tests/facade/test_cli.py": "from scripts import cli\n",
        "tests/scripts/helpers.py": "from scripts import cli\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)

    found = scan(tmp_path, ("common", "facade", "cdc", "bench", "tests"))
    reported = {str(imp) for rule in rules(tmp_path) for imp in rule.violations(found)}

    assert reported == {
        "facade/proxy.py:2: facade.proxy imports cdc.events",
        "facade/proxy.py:2: facade.proxy imports cdc.events.ChangeEvent",
        "facade/routing.py:1: facade.routing imports facade.shadow",
        "facade/routing.py:2: facade.routing imports facade.shadow.addon",
        "common/waiting.py:1: common.waiting imports extracted",
        "common/waiting.py:1: common.waiting imports extracted.catalog",
        "cdc/__init__.py:1: cdc imports scripts",
        "cdc/__init__.py:1: cdc imports scripts.cli",
        "bench/proxy.py:1: bench.proxy imports scripts.cli",
        "tests/support.py:1: tests.support imports scripts",
        "tests/support.py:1: tests.support imports scripts.demo",
    }
