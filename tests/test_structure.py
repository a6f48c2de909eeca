"""Repository rules from design.md: milestones import only from shared/ and never re-define what shared/ has."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MILESTONES = sorted(p.name for p in ROOT.glob("m[0-9]_*") if p.is_dir())
TOP_LEVEL = {"m0_init", "m1_basic", "m2_batching", "m3_paged", "m4_flash", "m5_chunked", "m6_prefix",
             "m7_gptq", "shared", "docs", "notebooks", "tests", "mkdocs.yml", "README.md", "pyproject.toml",
             ".ci", ".gitignore"}


def _defs(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef) and not n.name.startswith("_")}


def _py_files(pkg: str):
    return [p for p in (ROOT / pkg).rglob("*.py") if "tests" not in p.relative_to(ROOT).parts]


def test_top_level_layout():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    assert {t.split("/")[0] for t in tracked} <= TOP_LEVEL


def test_no_milestone_redefines_shared():
    # `main` is every entry point's conventional name, not a shared helper
    shared_names = set().union(*(_defs(p) for p in _py_files("shared") if p.name != "testing.py")) - {"main"}
    for m in MILESTONES:
        for f in _py_files(m):
            clash = _defs(f) & shared_names
            assert not clash, f"{f.relative_to(ROOT)} re-defines {sorted(clash)} from shared/: import it instead"


def test_milestones_import_only_shared():
    for m in MILESTONES:
        for f in (ROOT / m).rglob("*.py"):
            for mod in re.findall(r"^\s*(?:from|import)\s+(m\d_\w+)", f.read_text(), re.M):
                assert mod == m, f"{f.relative_to(ROOT)} imports {mod}: a milestone imports only from shared/"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set "))]
    assert len(ci) == 1 and f"\n{ci[0]}\n" in readme


def test_ruff_is_clean():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_docs_build_strict(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stdout + r.stderr


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_runtime_does_not_import_the_tooling():
    """An engine depends on shared/ without shared/tools/ (benchmark, HF reference, training, test helpers)."""
    runtime = [p for p in (ROOT / "shared").rglob("*.py") if "tools" not in p.relative_to(ROOT).parts]
    for m in MILESTONES:
        runtime += _py_files(m)
    for f in runtime:
        tooling = {n for n in _imports(f) if n.startswith(("shared.tools", "tests"))}
        assert not tooling, f"{f.relative_to(ROOT)} imports {sorted(tooling)}: the runtime must not depend on the tooling"


def test_every_engine_runs_the_kept_suite_for_itself():
    """`pytest mN_name` verifies the whole stage: each engine milestone has tests/test_kept.py naming itself,
    and the cross-milestone list of engines is exactly the milestones that have an engine."""
    from shared.tools.milestones import ENGINES

    engines = [m for m in MILESTONES if (ROOT / m / "engine.py").exists()]
    assert engines == ENGINES
    for m in engines:
        entry = ROOT / m / "tests" / "test_kept.py"
        assert entry.exists(), f"{m} has no tests/test_kept.py"
        assert f'ENGINE = "{m}"' in entry.read_text(), f"{entry.relative_to(ROOT)} must set ENGINE = {m!r}"
        assert "from tests.kept.every import *" in entry.read_text()
