"""File safety shared by every package of dcfg: atomic writes, crash-safe saved folders, checked reads; and the
number checks of every package's arguments, configs and files.

A small leaf package: it imports nothing from ``scm``, ``diffusion`` or ``pipeline``, so that each of them can
use it without importing another.

=============================  ==================================================================================
module                         what it holds
=============================  ==================================================================================
:mod:`dcfg_io.atomic`          atomic file writes (temporary file, fsync, ``os.replace``, clean-up on failure)
:mod:`dcfg_io.folders`         saved folders: safe save targets, the crash-safe swap, recovery of an interrupted one
:mod:`dcfg_io.reads`           checked reads of untrusted folders: regular files inside the folder, bounded JSON
:mod:`dcfg_io.tensors`         safetensors files: canonical headers with a data sha256, bounded header reads
:mod:`dcfg_io.rollback`        :func:`~dcfg_io.rollback.restored_on_error`: a fit that fails leaves its modules as
                               they were
:mod:`dcfg_io.checks`          number checks: an integer, a finite number, within bounds (a bool is neither)
=============================  ==================================================================================
"""
