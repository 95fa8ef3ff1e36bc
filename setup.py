"""The one compiled part, optional: psend/precv's small-message fast path (shmd/_fast.c).

Everything else is in pyproject.toml. Without a C compiler or Python's headers the build
of the extension fails quietly (optional) and the same protocol runs in Python.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("shmd._fast", ["shmd/_fast.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                                                 "-Wno-cast-function-type", "-Wno-unused-parameter"])])
