"""The subprocess of ``test_faults.py::test_sigkill_during_a_save_*``: saves a pipeline over an earlier save and
SIGKILLs itself at a chosen filesystem event of that save.

Events are the starts and ends of every call the save makes to ``os.rename``, ``os.replace``, ``os.mkdir``,
``os.fsync``, ``shutil.rmtree`` and ``io.open`` / ``open`` for writing, counted from 1. The script imports torch
and the project once, then forks one child per kill point (one torch thread, so forking is safe): each child
installs the counter, saves, and kills itself (``kill -9``: no clean-up, no ``finally``) when the count reaches
its point.

    python tests/save_killer.py count SRC WORK            # prints the number of events and the rename events
    python tests/save_killer.py kill SRC WORK P1 P2 ...   # WORK/<P>/pipe is a copy of SRC, killed at event P

``SRC`` is the old save. The new one is the old pipeline with every weight of its image model and SCM shifted by
``DELTA`` (see :func:`new_pipeline`).
"""
from __future__ import annotations

import builtins
import io
import json
import os
import shutil
import signal
import sys
from pathlib import Path

DELTA = 0.25


def new_pipeline(old_path: Path):
    """The pipeline saved at ``old_path`` with its image model's and SCM's weights shifted by :data:`DELTA`."""
    import torch

    from pipeline.core import CounterfactualPipeline

    pipe = CounterfactualPipeline.load(old_path)
    with torch.no_grad():
        for p in list(pipe.image_model.parameters()) + list(pipe.scm.parameters()):
            p.add_(DELTA)
    return pipe


def _install(kill_at: int | None, log: list[str]) -> None:
    count = [0]

    def tick(what: str) -> None:
        count[0] += 1
        log.append(what)
        if kill_at is not None and count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(owner, name, writes_only=False):
        real = getattr(owner, name)

        def f(*args, **kwargs):
            mode = kwargs.get("mode", args[1] if len(args) > 1 else "r")
            if writes_only and not any(c in str(mode) for c in "wax+"):
                return real(*args, **kwargs)
            where = os.fspath(args[0]) if args and isinstance(args[0], (str, os.PathLike)) else ""
            tick(f"{name}:start {where}")
            out = real(*args, **kwargs)
            tick(f"{name}:end {where}")
            return out
        setattr(owner, name, f)

    for name in ("rename", "replace", "mkdir", "fsync"):
        wrap(os, name)
    wrap(shutil, "rmtree")
    wrap(io, "open", writes_only=True)
    wrap(builtins, "open", writes_only=True)


def _save_in_child(pipe, target: Path, kill_at: int | None) -> list[str]:
    """Fork; the child saves ``pipe`` to ``target`` with the killer armed and reports its event log on a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(r)
        log: list[str] = []
        try:
            _install(kill_at, log)
            pipe.save(target)
            status = 0
        except BaseException:  # noqa: BLE001 - report and leave without clean-up
            status = 1
        with os.fdopen(w, "w") as fh:
            fh.write(json.dumps(log))
        os._exit(status)
    os.close(w)
    with os.fdopen(r) as fh:
        text = fh.read()
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    if not killed and os.WEXITSTATUS(status) != 0:
        raise SystemExit(f"the save failed in the child (exit {os.WEXITSTATUS(status)})")
    return json.loads(text) if text else []


def main(argv: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    mode, src, work = argv[0], Path(argv[1]), Path(argv[2])
    pipe = new_pipeline(src)
    if mode == "count":
        target = work / "count" / "pipe"
        shutil.copytree(src, target)
        log = _save_in_child(pipe, target, None)
        renames = [i + 1 for i, e in enumerate(log) if e.startswith(("rename", "replace"))]
        print(json.dumps({"events": len(log), "renames": renames, "log": log}))
        return
    for point in argv[3:]:
        target = work / point / "pipe"
        shutil.copytree(src, target)
        _save_in_child(pipe, target, int(point))
    print("done")


if __name__ == "__main__":
    main(sys.argv[1:])
