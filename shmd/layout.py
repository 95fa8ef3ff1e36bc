"""The control structure at the head of segment 0, shared by the daemon and every task.

Segment 0 holds, in order (all offsets relative to the segment's start, so every
process may map it anywhere)::

    0        header (4 KiB): magic, layout version, uid, VM id, daemon pid and start
             time, geometry, counters, the segment table (one 64-byte entry per segment)
    4096     task table: MAX_TASKS slots; each slot is a small header plus a ring of
             RING message descriptors (the task's inbox)
    maps_off one page map per segment (three int32 arrays of MAXPAGES entries)
    trace_off one trace ring per task slot (TRACE_RING bytes each: see trace.py)
    data0    message pages of segment 0 (other segments are all message pages)

Everything here is plain offsets and struct formats. The hot paths read the same
words through an int32 and an int64 view of segment 0, by index; the indexes are
named here once, derived from the field tables at import (no cost at run time):

- ``<TABLE>_<FIELD>_I`` is a field's index in int32 words, ``<TABLE>_<FIELD>_Q`` in
  int64 words, counted from the start of its region (``T_``: a task slot, ``S_``: a
  segment-table entry); add the region's own index
  (``slot_i(i)``, ``slot_q(i)``, ``segent_i(s)``, ``segent_q(s)``), e.g. the tail of
  slot *i* is ``m64[slot_q(i) + T_TAIL_Q]``.
- ``MAP_HDR``, ``MAP_FTR``, ``MAP_OWNER``: the three int32 arrays of a page map, as
  indexes from the map's own (``map_i(s)``).
- ``RV_*``: int64 words of a slot's direct-delivery record from ``slot_q(i) + T_RV_Q``;
  a pair of int32 in one word (``RV_MATCH``, ``RV_FROM``) is at ``2 * word`` and
  ``2 * word + 1`` of the int32 view.
- ``D_*``: byte offsets within a descriptor (its fields are read with ``DESC_FMT``).
"""
from __future__ import annotations

import os
import struct
from typing import NamedTuple

MAGIC = b"pvmshmd\x00"
VERSION = 7  # 5: the wake word and the page maps' intent records; 6: a slot's conn word;
# 7: a slot's inbox lock is a mutex in it (mutex.py), its semaphore gone; its serial word

MAXSEG = 8  # the man page's MAXSEG: segments at most
MAXPAGES = 4096  # the man page's MAXPAGES: pages per segment at most
MAX_TASKS = 128  # task slots (tids joined at once)
RING = 256  # descriptors in a task's inbox
DESC = 128  # bytes per descriptor
INLINE = DESC - 40  # payload bytes carried in the descriptor itself (no pages)
MEDIUM = 4096  # up to this, a message's bytes may fill the descriptors after its own ...
MEDIUM_FILL = RING - 128  # ... while the ring is filled no further: 128 messages always fit

HEADER_SIZE = 4096
SEGTAB_OFF = 512
SEGENT = 64
SLOT_HDR = 384  # the fields below, the direct-delivery record at RV_OFF, the counters
# at 256 (a multiple of DESC: the ring after it stays aligned)
SLOT_SIZE = SLOT_HDR + RING * DESC
TASKS_OFF = HEADER_SIZE
MAP_STRIDE = 3 * 4 * MAXPAGES  # hdr, ftr, owner (int32 each)

# Header fields: name -> (offset, struct format).
H = {
    "magic": (0, "8s"),
    "version": (8, "I"),
    "uid": (12, "I"),
    "pid": (16, "I"),
    "host": (20, "I"),
    "pagesize": (24, "I"),
    "nsegs": (28, "I"),
    "max_tasks": (32, "I"),
    "ring": (36, "I"),
    "state": (40, "I"),
    "start_ticks": (48, "Q"),
    "generation": (56, "Q"),
    "next_local": (64, "Q"),
    "maps_off": (80, "Q"),
    "vmid": (96, "32s"),
    "sock": (128, "108s"),
    "joined": (240, "Q"),
    "exited": (248, "Q"),
    "reaped": (256, "Q"),
    "hups": (264, "Q"),
    "started": (272, "d"),
    "trace": (280, "I"),  # a mask: the events tasks record (trace.py); they look now and then
    # the message counters of the tasks that left or were reaped (the daemon adds them)
    "gone_sent": (288, "Q"),
    "gone_sent_bytes": (296, "Q"),
    "gone_recvd": (304, "Q"),
    "gone_recvd_bytes": (312, "Q"),
    # how every task of this daemon sleeps and is woken (wake.py: its index in wake.KINDS),
    # set by pvm_shmd at start, before READY
    "wake": (320, "I"),
}
# Segment table entry fields (offset within the entry).
S = {
    "shmid": (0, "i"),
    "key": (4, "i"),
    "semid": (8, "i"),
    "semkey": (12, "i"),
    "npages": (16, "I"),
    "free": (20, "I"),
    "data_off": (24, "Q"),
    "map_off": (32, "Q"),
    "allocated": (40, "Q"),
    "freed": (48, "Q"),
    "rover": (56, "I"),  # where the next allocation's search starts (pagemap.py)
}
# Task slot header fields (offset within the slot).
T = {
    "tid": (0, "I"),
    "pid": (4, "I"),
    "state": (8, "I"),
    "waiting": (112, "I"),  # apart from head and tail: senders read it on every send
    "head": (16, "Q"),
    "tail": (24, "Q"),
    # which join of this slot the task is: a sender's cached Peer of a tid that left
    # and joined again is stale (its ring restarted)
    "serial": (36, "i"),
    "wake_key": (40, "i"),
    "wake_id": (44, "i"),
    "pending": (48, "I"),
    "start_ticks": (56, "Q"),
    "name": (64, "32s"),
    "posted": (96, "Q"),  # bytes of paged messages senders put in the ring
    "consumed": (104, "Q"),  # bytes of paged messages the receiver took off it
    "sending": (120, "I"),  # the tid this task sends a message in pieces to (0: none)
    # The task's message counters: kept in its own attributes (a shared word costs more
    # per message than the 8 B path can spare) and stored here when it is idle (before
    # a receive sleeps; before one spins, every 32 messages), every PUBLISH_EVERY sends
    # and when it leaves (taskbase.py, _publish).
    "sent": (256, "Q"),
    "sent_bytes": (264, "Q"),
    "recvd": (272, "Q"),
    "recvd_bytes": (280, "Q"),
    "blocked": (288, "I"),  # BLOCKED_PAGES while psend waits for free pages, else 0
    # pvm_netd's: 1 while what it holds for other hosts is over netd.HOLD bytes (a peer
    # receives slowly): senders to other hosts wait (remote.py) instead of filling the
    # pages its in thread needs to deliver what comes from those hosts
    "held": (292, "I"),
    # pvm_shmd's: 1 while the task's own connection holds its slot (it joined itself,
    # or adopted the slot its spawner enrolled it in): ps's "c" flag. Kept here so the
    # task table can be read from segment 0 alone (spawner.tasks), without asking
    # pvm_shmd, which knows its connections.
    "conn": (296, "I"),
    # the inbox lock: a robust, process-shared pthread mutex (mutex.py), made with the
    # segment; senders take it to post into the ring. 64 bytes kept for glibc's
    # pthread_mutex_t: 40 on x86-64, 48 on aarch64 (_fast.c asserts it fits)
    "lock": (304, "64s"),
}
COUNTERS = ("sent", "sent_bytes", "recvd", "recvd_bytes")  # a slot's, in this order
PUBLISH_EVERY = 256  # sends between two stores of the counters (a power of two)
BLOCKED_PAGES = 1


def index(field: tuple[int, str], size: int) -> int:
    """The index of *field* (offset, format) in words of *size* bytes (4: int32, 8:
    int64), from its region's start; the field must be aligned to its word."""
    off, fmt = field
    if off % size or struct.calcsize("<" + fmt) % size:
        raise ValueError(f"field at {off} ({fmt}) is not a whole {size}-byte word")
    return off // size


S_FREE_I = index(S["free"], 4)  # pages free
S_ALLOCATED_Q = index(S["allocated"], 8)  # allocations so far
S_FREED_Q = index(S["freed"], 8)  # frees so far
S_ROVER_I = index(S["rover"], 4)
T_TID_I = index(T["tid"], 4)
T_PID_I = index(T["pid"], 4)
T_STATE_I = index(T["state"], 4)
T_WAITING_I = index(T["waiting"], 4)
T_HEAD_Q = index(T["head"], 8)
T_TAIL_Q = index(T["tail"], 8)
T_SERIAL_I = index(T["serial"], 4)
T_LOCK_OFF = T["lock"][0]
T_PENDING_I = index(T["pending"], 4)
T_START_TICKS_Q = index(T["start_ticks"], 8)
T_POSTED_Q = index(T["posted"], 8)
T_CONSUMED_Q = index(T["consumed"], 8)
T_SENDING_I = index(T["sending"], 4)
T_SENT_Q = index(T["sent"], 8)  # then sent_bytes, recvd, recvd_bytes (COUNTERS)
T_BLOCKED_I = index(T["blocked"], 4)
T_HELD_I = index(T["held"], 4)
H_TRACE_I = index(H["trace"], 4)
H_WAKE_I = index(H["wake"], 4)

# The trace rings (trace.py): per task slot, a count of events written (int64, by the
# slot's task), a count of events drained (int64, by pvm_shmd), then at 64 TRACE_EVENTS
# events of TRACE_EVENT bytes, written by the slot's task alone.
TRACE_EVENT = 32
TRACE_EVENTS = 1024
TRACE_RING = 64 + TRACE_EVENT * TRACE_EVENTS
MAP_HDR, MAP_FTR, MAP_OWNER = 0, MAXPAGES, 2 * MAXPAGES  # int32 arrays of a page map

# Each segment's intent record (pagemap.py), in the header after the segment table: the
# int32 writes of a page-map operation under way, so that whoever next holds the segment's
# lock finishes an operation whose process was killed in the middle (its lock is given
# back by SEM_UNDO, its map half written). A count of pairs (0: none), then up to
# INTENT_MAX (int32 index in segment 0, value) pairs.
INTENT_OFF = SEGTAB_OFF + MAXSEG * SEGENT
INTENT_MAX = 12
INTENT_SIZE = 4 * (1 + 2 * INTENT_MAX) + 28  # (to 128 bytes)


def intent_i(seg: int) -> int:
    """Index of segment *seg*'s intent record in an int32 view of segment 0."""
    return (INTENT_OFF + seg * INTENT_SIZE) // 4


assert INTENT_OFF + MAXSEG * INTENT_SIZE <= HEADER_SIZE

# The direct-delivery record of a slot (see direct.py): 16 int64 words at RV_OFF, as
# word indexes. The receiver posts its buffer (RV_STATE OPEN, with address, size and
# the source and tag it takes); a sender claims it under the inbox lock (CLAIMED,
# with its own pid, address and size); both then copy chunks of the message, the
# sender from the front (FA, DA), the receiver from the back (BB, DB). ACTIVE and
# SPINS tell a sender that a receiver not posted now will be soon.
RV_OFF = 128
RV_STATE, RV_ADDR, RV_CAP, RV_MATCH, RV_FROM, RV_PID, RV_SRC, RV_N, RV_CHUNK = range(9)
RV_FA, RV_DA, RV_BB, RV_DB, RV_BFAIL = range(9, 14)
RV_ACTIVE = 14  # 1 while the receiver is in a receive that posts (taking earlier messages)
RV_SPINS = 15  # 1: the receiver spins before it sleeps (it is back soon after a message)
RV_NONE, RV_OPEN, RV_CLAIMED = 0, 1, 2
T_RV_Q = RV_OFF // 8  # the record's first word, in int64s from the slot's start
RV_PAGES = 1 << 63  # ADDR of a claim into pages: this bit | segment << 32 | page


def rv_run_word(seg: int, page: int) -> int:
    """The record's ADDR word for a claim into the run at *page* of segment *seg*."""
    return RV_PAGES | seg << 32 | page


def rv_run(word: int) -> tuple[int, int]:
    """(segment, page) of the run an ADDR word with RV_PAGES names."""
    return (word >> 32) & 0x7FFFFFFF, word & 0xFFFFFFFF
# Descriptor fields (offset within a descriptor).
D_SRC, D_TAG, D_NBYTES, D_SEG, D_PAGE, D_NPAGES, D_FLAGS, D_TOTAL, D_INLINE = (
    0, 4, 8, 16, 20, 24, 28, 32, 40)
DESC_FMT = "<IiQiIIIQ"  # src tag nbytes seg page npages flags total

# Daemon states in the header.
STARTING, READY, STOPPING = 0, 1, 2
# Task slot states.
FREE, ACTIVE = 0, 1
# Descriptor flags.
F_FIRST, F_MORE, F_ABORT, F_SKIP = 1, 2, 4, 8  # F_SKIP: a filler up to the ring's end


def round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


class Geometry(NamedTuple):
    """Sizes of one daemon's segments."""

    pagesize: int
    npages: int  # message pages per segment
    nsegs: int

    @property
    def maps_off(self) -> int:
        return TASKS_OFF + MAX_TASKS * SLOT_SIZE

    @property
    def trace_off(self) -> int:
        return self.maps_off + MAXSEG * MAP_STRIDE

    @property
    def data0_off(self) -> int:
        return round_up(self.trace_off + MAX_TASKS * TRACE_RING, self.pagesize)

    def seg_size(self, seg: int) -> int:
        return (self.data0_off if seg == 0 else 0) + self.npages * self.pagesize


def pagesize() -> int:
    return os.sysconf("SC_PAGESIZE")


class Struct:
    """Typed access to the fields of one region (header, segment entry, task slot)."""

    __slots__ = ("buf", "base", "fields")

    def __init__(self, buf: memoryview, base: int, fields: dict[str, tuple[int, str]]):
        self.buf, self.base, self.fields = buf, base, fields

    def __getitem__(self, name: str):
        off, fmt = self.fields[name]
        v = struct.unpack_from("<" + fmt, self.buf, self.base + off)[0]
        # a scribbled name must not raise where it is read: damage shows as U+FFFD
        return (v.split(b"\0", 1)[0].decode(errors="replace") if fmt.endswith("s")
                and fmt != "8s" else v)

    def __setitem__(self, name: str, value) -> None:
        off, fmt = self.fields[name]
        if isinstance(value, str):
            value = value.encode()
        struct.pack_into("<" + fmt, self.buf, self.base + off, value)


def header(buf: memoryview) -> Struct:
    return Struct(buf, 0, H)


def segent(buf: memoryview, seg: int) -> Struct:
    return Struct(buf, SEGTAB_OFF + seg * SEGENT, S)


def segent_i(seg: int) -> int:
    """Index of segment *seg*'s table entry in an int32 view of segment 0."""
    return (SEGTAB_OFF + seg * SEGENT) // 4


def segent_q(seg: int) -> int:
    """Index of segment *seg*'s table entry in an int64 view of segment 0."""
    return (SEGTAB_OFF + seg * SEGENT) // 8


def rover_index(seg: int) -> int:
    """Index of segment *seg*'s rover in an int32 view of segment 0."""
    return segent_i(seg) + S_ROVER_I


def slot_off(i: int) -> int:
    return TASKS_OFF + i * SLOT_SIZE


def slot_i(i: int) -> int:
    """Index of slot *i*'s first word in an int32 view of segment 0."""
    return slot_off(i) // 4


def slot_q(i: int) -> int:
    """Index of slot *i*'s first word in an int64 view of segment 0."""
    return slot_off(i) // 8


def map_i(seg: int) -> int:
    """Index of segment *seg*'s page map in an int32 view of segment 0."""
    return map_off(seg) // 4


def tids_in(m32: memoryview) -> set[int]:
    """The tids in the task table (slots whose tid word is set), from an int32 view of
    segment 0."""
    return {m32[slot_i(s) + T_TID_I] & 0xFFFFFFFF for s in used_slots(m32)}


def used_slots(m32: memoryview) -> list[int]:
    """The slots whose tid word is set, from an int32 view of segment 0: every slot's
    tid word in one strided slice (a loop over the MAX_TASKS slots' Structs cost pvm_shmd
    half of a stat's 0.9 ms here)."""
    first, stride = slot_i(0) + T_TID_I, slot_i(1) - slot_i(0)
    return [i for i, t in enumerate(m32[first:first + stride * MAX_TASKS:stride].tolist()) if t]


def slot(buf: memoryview, i: int) -> Struct:
    return Struct(buf, slot_off(i), T)


def task_row(t: Struct) -> dict:
    """A slot's task as stat and ps show it: tid, pid, name, its state (running, waiting
    in precv: asleep in it, its waiting word; waiting for pages: the blocked word),
    whether its own connection holds the slot (the conn word), its counters."""
    state = "pages" if t["blocked"] == BLOCKED_PAGES else "precv" if t["waiting"] else "running"
    return {"tid": t["tid"], "pid": t["pid"], "name": t["name"], "state": state,
            "connected": bool(t["conn"]), **{k: t[k] for k in COUNTERS}}


def desc_off(i: int, n: int) -> int:
    """Offset of descriptor number *n* (any counter value) in slot *i*'s ring."""
    return slot_off(i) + SLOT_HDR + (n % RING) * DESC


def span(nbytes: int) -> int:
    """Descriptors taken by a descriptor without pages carrying *nbytes* inline: its
    bytes run on through the descriptors after it (1 up to INLINE bytes). A message
    never wraps round the ring's end: an F_SKIP filler takes the rest of the ring
    first, its nbytes saying how much."""
    return (nbytes + D_INLINE + DESC - 1) // DESC


def ring_entries(m32: memoryview, i: int, head: int, tail: int):
    """Yield (counter, offset) of each descriptor queued in slot *i*'s ring between
    *head* and *tail*, stepping over the descriptors inline bytes fill and over
    fillers. *m32* is an int32 view of segment 0. LayoutError if the counters are
    damaged (a ring never holds more than RING descriptors)."""
    if not 0 <= tail - head <= RING:
        raise LayoutError(f"damaged inbox of slot {i}: head {head}, tail {tail}")
    n = head
    while n < tail:
        d = desc_off(i, n)
        at = n
        if m32[(d + D_SEG) // 4] >= 0:
            n += 1
        else:
            n += max(1, span(m32[(d + D_NBYTES) // 4]))  # a bad length must not stall us
            if m32[(d + D_FLAGS) // 4] & F_SKIP:
                continue
        yield at, d


def trace_ring_off(i: int) -> int:
    """Offset of slot *i*'s trace ring (its event count; the events follow 64 bytes on)."""
    return TASKS_OFF + MAX_TASKS * SLOT_SIZE + MAXSEG * MAP_STRIDE + i * TRACE_RING


def map_off(seg: int) -> int:
    return TASKS_OFF + MAX_TASKS * SLOT_SIZE + seg * MAP_STRIDE


class LayoutError(Exception):
    """Segment 0 is not (or not this version of) a pvm_shmd control structure."""


def check(buf: memoryview, uid: int, vmid: str) -> None:
    """Refuse a segment that is not ours (wrong magic, version, owner or VM id) or whose
    geometry is damaged (every count and offset the readers index with, bounded)."""
    if len(buf) < HEADER_SIZE:
        raise LayoutError(f"segment of {len(buf)} bytes is too small for a control structure")
    h = header(buf)
    if bytes(buf[:8]) != MAGIC:
        raise LayoutError("segment is not a pvm_shmd control structure (bad magic)")
    if h["version"] != VERSION:
        raise LayoutError(f"control structure layout version {h['version']}, expected {VERSION}")
    if h["uid"] != uid:
        raise LayoutError(f"control structure belongs to uid {h['uid']}, not {uid}")
    if h["vmid"] != vmid:
        raise LayoutError(f"control structure is VM id {h['vmid']!r}, not {vmid!r}")
    check_geometry(buf)


def check_geometry(buf: memoryview) -> None:
    """Raise LayoutError naming the first damaged header or segment-table word."""
    h = header(buf)
    ps, nsegs = h["pagesize"], h["nsegs"]
    if ps < 512 or ps > 1 << 30 or ps & (ps - 1):
        raise LayoutError(f"damaged control structure: page size {ps}")
    if not 1 <= nsegs <= MAXSEG:
        raise LayoutError(f"damaged control structure: {nsegs} segments (1 to {MAXSEG})")
    for name, want in (("max_tasks", MAX_TASKS), ("ring", RING)):
        if h[name] != want:
            raise LayoutError(f"damaged control structure: {name} {h[name]}, not {want}")
    geo = Geometry(ps, 1, nsegs)
    if h["maps_off"] != geo.maps_off:
        raise LayoutError(f"damaged control structure: maps_off {h['maps_off']}")
    for i in range(nsegs):
        e = segent(buf, i)
        n = e["npages"]
        if not 1 <= n <= MAXPAGES or e["map_off"] != map_off(i):
            raise LayoutError(f"damaged segment table entry {i}: {n} pages, map at "
                              f"{e['map_off']}")
        data_off = geo.data0_off if i == 0 else 0
        if e["data_off"] != data_off:
            raise LayoutError(f"damaged segment table entry {i}: data at {e['data_off']}")
        if i == 0 and len(buf) < data_off + n * ps:
            raise LayoutError(f"damaged segment table entry 0: {n} pages of {ps} do not fit "
                              f"a segment of {len(buf)} bytes")
