#!/usr/bin/env python3
"""hello: PVM's first example. The master spawns hello_other.py, which sends back a
greeting with its host name; the master prints it.

    pvm> spawn -> /path/to/examples/pvm3/hello.py
"""
import os
import sys

from shmd.pvm import *


def main() -> int:
    print(f"i'm t{pvm_mytid():x}")
    other = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hello_other.py")
    tids = pvm_spawn(other, None, PvmTaskDefault, "", 1)
    if tids[0] < 0:
        print(f"can't start hello_other: {strerror(tids[0])}")
        pvm_exit()
        return 1
    bufid = pvm_recv(-1, -1)
    nbytes, msgtag, tid = pvm_bufinfo(bufid)
    text = pvm_upkstr()
    print(f"from t{tid:x}: {text}")
    ok = tid == tids[0] and text.startswith("hello, world from ")
    print("OK" if ok else "WRONG")
    pvm_exit()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
