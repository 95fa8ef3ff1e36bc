#!/usr/bin/env python3
"""hello_other: spawned by hello.py; sends "hello, world from <host>" to its parent."""
import socket

from shmd.pvm import *

ptid = pvm_parent()
pvm_initsend(PvmDataDefault)
pvm_pkstr("hello, world from " + socket.gethostname())
pvm_send(ptid, 1)
pvm_exit()
