"""Build the Cython extensions. Metadata lives in pyproject.toml.

Environment switches for development builds (PEP 517 frontends pass them through):
  FASTWS_CYTHON_TRACE=1  line tracing for coverage (Cython.Coverage)
  FASTWS_ANNOTATE=1      write the cython -a HTML next to each .pyx
  FASTWS_DEBUG=1         compile with -O0 -g and the FASTWS_DEBUG macro
"""

import os
import sys

from setuptools import Extension, setup

TRACE = os.environ.get("FASTWS_CYTHON_TRACE") == "1"
ANNOTATE = os.environ.get("FASTWS_ANNOTATE") == "1"
DEBUG = os.environ.get("FASTWS_DEBUG") == "1"

macros = []
cflags = ["-O0", "-g"] if DEBUG else ["-O3", "-g0"]
if DEBUG:
    macros.append(("FASTWS_DEBUG", "1"))
if TRACE:
    macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
if sys.platform == "win32":
    cflags = []


def ext(name):
    return Extension(
        f"fastws.{name}",
        [f"fastws/{name}.pyx"],
        include_dirs=["fastws"],
        define_macros=macros,
        extra_compile_args=cflags,
    )


directives = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "embedsignature": True,
    "initializedcheck": False,
}
if TRACE:
    directives["linetrace"] = True

from Cython.Build import cythonize  # noqa: E402  (a build requirement in pyproject.toml)

# fastws bench's per-message listeners (fastws/bench/_listeners.pyx)
bench_listeners = Extension("fastws.bench._listeners", ["fastws/bench/_listeners.pyx"], define_macros=macros,
                            extra_compile_args=cflags)

setup(
    ext_modules=cythonize(
        [ext("_frames"), ext("_stats"), ext("_message"), ext("_transport"), ext("_endpoint"), ext("_output"),
         ext("_input"), ext("_fanout"), ext("_protocol"), ext("_limits"), ext("_batch"), bench_listeners],
        compiler_directives=directives,
        annotate=ANNOTATE,
    ),
)
