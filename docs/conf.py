"""Sphinx configuration for the fastws documentation (Markdown pages through MyST, furo theme).

Build (CI runs exactly this, after the extensions are built):

    python -m sphinx -W --keep-going -n -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))
sys.path.insert(0, os.path.dirname(HERE))  # the checkout: `import fastws` loads the built tree

import fastws  # noqa: E402

project = "fastws"
author = "the fastws developers"
copyright = "2026, the fastws developers"
release = fastws.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "fastws_cli_reference",
    "fastws_bars",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"fastws {release}"
html_static_path: list[str] = []

# API reference: from the docstrings (the Cython modules: their embedded signatures and the
# docstrings the extensions carry; the .pyi stubs type the same names).
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"
autodoc_inherit_docstrings = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = True
