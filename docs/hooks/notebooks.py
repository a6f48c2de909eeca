"""mkdocs hook: publish the notebooks in ../notebooks as site pages under notebooks/.

mkdocs only reads files inside docs_dir, and a symlink would not survive every checkout, so the notebooks
are added as files whose source directory is the repository root: `notebooks/00_init.ipynb` is read from
../notebooks and published at notebooks/00_init/. (`File.generated` would not do: mkdocs-jupyter wraps each
notebook and recomputes its path from `src_dir`, which a generated file lacks.) mkdocs-jupyter then renders
them from their stored outputs, because this hook runs before the plugin's own on_files.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]


@event_priority(100)  # before mkdocs-jupyter (priority 0) wraps the .ipynb files as pages
def on_files(files: Files, config: MkDocsConfig) -> Files:
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        files.append(File(f"notebooks/{path.name}", str(ROOT), config.site_dir, config.use_directory_urls))
    return files
