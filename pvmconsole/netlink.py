"""The console's open channel to a host's pvm_netd: requests answered in milliseconds.

A host's ``stat``, task list, ``spawn`` or ``kill`` used to cost a program start on the
host (over SSH for a remote one); with a pvm_netd running there the console asks it
instead (shmd/netask.py: a ZeroMQ DEALER socket with the VM's CURVE keys, the same
authentication and encryption as the messages between hosts), kept open for the
console's life. Any failure (no answer within the timeout, an error) raises
PvmError(PvmHostFail); HostLink then falls back to running the program, so nothing
depends on the channel being there.
"""
from __future__ import annotations

from shmd.netask import ASK_TIMEOUT, NetLink, ask_all

__all__ = ["ASK_TIMEOUT", "NetLink", "ask_all"]
