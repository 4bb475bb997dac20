"""What pyproject.toml declares against what the code imports (read with `ast`), what a plain
`pip install strangler` can import with no extra, and the error that names a missing extra."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import packages_distributions, requires
from pathlib import Path

import pytest

from scripts.cli import COMMANDS
from tests.test_layout import PACKAGES, ROOT, module_name, scan

LOCAL = {*PACKAGES, "bench", "tests"}
# Declared but never imported by name: what they do is reached another way.
INDIRECT = {
    "pgserver": "located with importlib.util.find_spec, never imported (common/postgres.py)",
    "python-multipart": "Starlette's form parser imports it (the monolith's HTML forms)",
    "pytest-timeout": "a pytest plugin ([tool.pytest.ini_options] timeout)",
    "pytest-xdist": "a pytest plugin (`make test` runs pytest -n 2)",
    "strangler": "the extras' own references to other extras",
}
# The modules that need an extra, the package each imports from it, and that extra.
OPTIONAL = (
    ("cdc.kafka", "confluent_kafka", "kafka"),
    ("extracted.catalog.migrate", "alembic", "service"),
)


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str | None, set[str]]:
    """The distributions strangler requires, by extra (None: a plain install)."""
    by_extra: dict[str | None, set[str]] = {}
    for requirement in requires("strangler") or []:
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        extra = re.search(r"""extra\s*==\s*["']([\w-]+)["']""", requirement)
        assert name, requirement
        by_extra.setdefault(extra.group(1) if extra else None, set()).add(normalized(name.group(0)))
    return by_extra


def distributions(top_levels: tuple[str, ...]) -> dict[str, set[str]]:
    """The third-party distributions imported by the modules of `top_levels`, with their importers."""
    owners = packages_distributions()
    found: dict[str, set[str]] = {}
    for imp in scan(ROOT, top_levels):
        top = imp.target.split(".")[0]
        if top in LOCAL or top in sys.stdlib_module_names or top == "__future__":
            continue
        for dist in owners.get(top, [f"<no installed distribution provides {top!r}>"]):
            found.setdefault(normalized(dist), set()).add(imp.path)
    return found


def unguarded_imports(path: Path) -> Iterator[tuple[int, str]]:
    """Imports run when the module is imported: module level, not inside `try` or a function."""
    for node in ast.parse(path.read_bytes()).body:
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def packaged_modules() -> list[str]:
    return sorted(
        module_name(ROOT, path)
        for top in PACKAGES if (ROOT / top).is_dir()
        for path in (ROOT / top).rglob("*.py")
        if path.name != "__main__.py" and "migrations" not in path.parts
    )


def run_blocked(blocked: list[str], code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter in which importing any of `blocked` fails, as it does
    where the distribution is not installed."""
    prelude = f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_every_imported_distribution_is_declared() -> None:
    requirements = declared()
    everything = set().union(*requirements.values())
    shipped = set().union(*(deps for extra, deps in requirements.items() if extra != "test"))

    used_by_code = distributions((*PACKAGES, "bench"))
    used_by_tests = distributions(("tests",))

    undeclared = {dist: sorted(paths) for dist, paths in used_by_code.items() if dist not in shipped}
    assert not undeclared, f"imported by the code but not in pyproject.toml's dependencies or extras: {undeclared}"
    untested = {dist: sorted(paths) for dist, paths in used_by_tests.items() if dist not in everything}
    assert not untested, f"imported by the tests but not declared (add them to the 'test' extra): {untested}"
    unused = everything - set(used_by_code) - set(used_by_tests) - set(INDIRECT)
    assert not unused, f"declared but imported nowhere: {sorted(unused)}; drop them or say in INDIRECT why"
    only_tests = (requirements[None] & set(used_by_tests)) - set(used_by_code)
    assert not only_tests, f"only the tests import {sorted(only_tests)}: declare them in the 'test' extra"


def test_a_module_imports_an_extra_only_behind_missing_extra() -> None:
    core = declared()[None]
    owners = packages_distributions()
    loose = [
        f"{path.relative_to(ROOT)}:{line}: import of {name}"
        for top in PACKAGES if (ROOT / top).is_dir()
        for path in sorted((ROOT / top).rglob("*.py")) if "migrations" not in path.parts
        for line, name in unguarded_imports(path)
        if name.split(".")[0] not in LOCAL | set(sys.stdlib_module_names) | {"__future__"}
        and not {normalized(d) for d in owners.get(name.split(".")[0], [])} & core
    ]
    assert not loose, "these need an extra; import them in `try` and raise common.extras.missing_extra:\n" + "\n".join(loose)


def test_a_plain_install_imports_every_module_but_the_optional_ones() -> None:
    optional = {module for module, _, _ in OPTIONAL}
    modules = [m for m in packaged_modules() if m not in optional]
    # What only the extras bring: the plain install has none of it.
    blocked = ["confluent_kafka", "alembic", "pgserver", "multipart", "python_multipart", "pytest", "hypothesis",
               "jsonschema"]

    result = run_blocked(blocked, f"import importlib\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
                                  "from scripts.cli import COMMANDS, load_command\n"
                                  "print(sum(load_command(name).name == name for name in COMMANDS))\n")

    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout) == len(COMMANDS)  # every command of the CLI builds without the extras


@pytest.mark.parametrize(("module", "blocked", "extra"), OPTIONAL)
def test_a_module_that_needs_an_extra_names_it(module: str, blocked: str, extra: str) -> None:
    result = run_blocked([blocked], f"""
from common.extras import MissingExtraError
try:
    import {module}
except MissingExtraError as exc:
    print(exc.extra)
    print(exc)
""")

    assert result.returncode == 0, result.stderr[-3000:]
    said_extra, message = result.stdout.splitlines()
    assert said_extra == extra
    assert f"needs the Python package {blocked!r}" in message
    assert f"pip install 'strangler[{extra}]'" in message
    # The extra the message names really brings the package.
    assert {normalized(d) for d in packages_distributions()[blocked]} & declared()[extra]


def test_the_catalog_migrate_command_fails_in_one_line_without_its_extra() -> None:
    result = run_blocked(["alembic"], """
import runpy
sys.argv = ["extracted.catalog", "migrate", "--database-url", "postgresql://postgres@127.0.0.1:1/catalog"]
runpy.run_module("extracted.catalog", run_name="__main__")
""")

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("FAILED: the catalog store's migrations (extracted.catalog.migrate) needs "
                                    "the Python package 'alembic', which is not installed; install the 'service' "
                                    "extra: pip install 'strangler[service]'")


def test_the_test_extra_brings_every_other_extra() -> None:
    test_requirements = [r for r in requires("strangler") or [] if re.search(r"""extra\s*==\s*["']test["']""", r)]
    pulled = {extra for r in test_requirements if r.startswith("strangler[")
              for extra in r[len("strangler["):r.index("]")].split(",")}

    assert pulled == set(declared()) - {None, "test"}


def test_the_image_copies_every_package_and_installs_the_extras_its_services_use() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile, re.M))
    install = re.search(r"^RUN pip install '\.\[([\w,]+)\]'$", dockerfile, re.M)

    assert {top for top in PACKAGES if (ROOT / top).is_dir()} <= copied
    # The applier runs `cdc run --transport kafka`; the seed step runs the catalog migrations.
    assert install and {"kafka", "service"} <= set(install.group(1).split(","))
