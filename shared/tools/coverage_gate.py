"""A pytest plugin (`-p shared.tools.coverage_gate` in pyproject's addopts): coverage per package, gated.

pytest-cov measures the engine runtime (`[tool.coverage.run]` in pyproject: `shared` without its tooling,
and every milestone package). Its own `--cov-fail-under` gates only the total, which a well-tested package
could carry for a poorly tested one. This plugin reports each package's share on its own line and fails
the run if any is below `GATE` percent. It applies to a run of the whole suite (no paths given): `pytest
m3_paged` exercises only one engine, so shared code is not expected to be covered by it.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

GATE = 80.0
ROOT = Path(__file__).resolve().parents[2]


def packages() -> dict[str, list[str]]:
    """Package name -> the file patterns it covers (the shared runtime is shared/ without shared/tools)."""
    milestones = sorted(p.name for p in ROOT.glob("m[0-9]_*") if p.is_dir())
    return {"shared (runtime)": [str(ROOT / "shared" / "*")], **{m: [str(ROOT / m / "*")] for m in milestones}}


OMIT = [str(ROOT / "shared" / "tools" / "*"), "*/tests/*"]  # tooling and tests are not the engine runtime


class CoverageGate:
    def __init__(self) -> None:
        self.rows: list[tuple[str, float]] = []

    @pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: runs after pytest-cov has stopped measuring
    def pytest_runtestloop(self, session):
        result = yield
        cov_plugin = session.config.pluginmanager.getplugin("_cov")
        controller = getattr(cov_plugin, "cov_controller", None)
        if controller is None or session.config.option.file_or_dir or session.config.option.collectonly:
            return result
        for name, include in packages().items():
            try:
                pct = controller.cov.report(include=include, omit=OMIT, file=io.StringIO())
            except Exception:  # coverage says "no data to report" for a package no test imported
                pct = 0.0
            self.rows.append((name, pct))
        if any(pct < GATE for _, pct in self.rows):
            session.testsfailed += 1
        return result

    def pytest_terminal_summary(self, terminalreporter):
        if not self.rows:
            return
        terminalreporter.write_sep("=", f"coverage per package (gate: {GATE:.0f}% each)")
        for name, pct in self.rows:
            ok = pct >= GATE
            terminalreporter.write_line(f"{name:<20} {pct:6.1f}%  {'ok' if ok else 'BELOW THE GATE'}",
                                        green=ok, red=not ok, bold=not ok)


def pytest_configure(config):
    config.pluginmanager.register(CoverageGate(), "coverage_gate")
