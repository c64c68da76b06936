"""Former home of the atomic writers and safetensors files, now in :mod:`dcfg_io`; re-exported here.

Import from :mod:`dcfg_io.atomic` and :mod:`dcfg_io.tensors` instead.
"""
from dcfg_io.atomic import atomic_write_bytes, atomic_write_json
from dcfg_io.tensors import load_tensors, save_tensors

__all__ = ["atomic_write_bytes", "atomic_write_json", "load_tensors", "save_tensors"]
