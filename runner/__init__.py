"""runner: batch job runner for PyTorch training on cloud GPUs.

Importing this package must stay cheap (no torch): `runner --help` and
`runner validate` depend on it.
"""

__version__ = "0.1.0"
