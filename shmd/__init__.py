"""pvm-shmd: PVM's shared-memory message passing, re-created in Python.

    import shmd
    with shmd.join() as me:                 # enroll with this host's pvm_shmd
        me.psend(other_tid, 1, b"hello")
        msg = me.precv(tag=1, timeout=5)    # msg.src, msg.tag, msg.data

PVM-shaped names (pvm_mytid, pvm_psend, pvm_precv, PVM_DOUBLE, ...) are in shmd.pvm;
the reference is docs/library.md.
"""
from .errors import PvmError, PvmTimeout

__all__ = ["ANY", "Message", "MessageView", "PvmError", "PvmTimeout", "Task", "current", "join"]
_FROM_TASK = {"ANY", "Message", "MessageView", "Task", "current", "join"}


def __getattr__(name: str):
    # The library is imported on first use, so that the daemon's small tools
    # (pvm_shmd_stat, which the console runs on every host for every status) start fast.
    if name in _FROM_TASK:
        from . import task

        return getattr(task, name)
    raise AttributeError(f"module 'shmd' has no attribute {name!r}")
