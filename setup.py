"""Build the optional C fast path of the decode step (everything else is in pyproject.toml).

`optional=True`: without a C compiler or the Python headers the install still succeeds and every
record is decoded by the pure Python decoder (same results, slower); see connector/decode/native.py.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "connector.decode._speedups",
            ["connector/decode/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
