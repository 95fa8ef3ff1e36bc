"""pvm-shmd: PVM's shared-memory message passing, re-created in Python.

    import shmd
    with shmd.join() as me:                 # enroll with this host's pvm_shmd
        me.psend(other_tid, 1, b"hello")
        msg = me.precv(tag=1, timeout=5)    # msg.src, msg.tag, msg.data
"""
from .errors import PvmError, PvmTimeout
from .task import ANY, Message, MessageView, Task, join

__all__ = ["ANY", "Message", "MessageView", "PvmError", "PvmTimeout", "Task", "join"]
