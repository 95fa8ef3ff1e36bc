/* shmd._fast: psend's and precv's common cases, compiled.
 *
 * Optional: built by ./dev when a C compiler and Python's headers are there (setup.py,
 * optional=True); without it, or with PVM_SHMD_PURE=1, the same protocol runs in
 * Python (sending.py, receiving.py, pages.py, trace.py), and the tests run both. Nothing
 * here knows the layout: the geometry of a descriptor, the ring and the page maps comes
 * from shmd.layout through configure(), the word offsets from each Peer and Task
 * (fastpath.py); each object checks them against the segment when it is made.
 *
 * Route(buf, ...): psend to one local peer, as sending.py's _post does it (wake early,
 * take the inbox lock without waiting, post, release, wake if asleep): post() a message
 * carried in the inbox, post_pages() one in a run of pages.
 * Segments(buf, ...): our runs of pages, as pages.py and pagemap.py: alloc_copy(),
 * free() (with the frees put off before in that segment).
 * Inbox(buf, ...).take(source, tag, spin, into): precv's common case: spin up to *spin*
 * seconds for the ring to fill, then take the next descriptor if it is a whole message
 * (inline, or in one run of pages) that matches and fits *into*, if given.
 * TraceRing: a traced task's events (trace.py), recorded by the three above when they
 * are given one (their *trace*).
 *
 * Anything these do not do (a busy lock, no room, nothing came, a plan a killed task
 * left, damage): False or None, with nothing done; the Python path then waits, sleeps,
 * finishes or names it. Every method runs holding the GIL and never blocks: each semop
 * is IPC_NOWAIT or a release, a futex call is a wake.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/sem.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>
#include <pthread.h>

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* the geometry (configure) */
static Py_ssize_t g_ring, g_desc, g_inl, g_inline, g_medium, g_medium_fill;
static Py_ssize_t o_src, o_tag, o_nbytes, o_seg, o_page, o_npages, o_flags, o_total;
static uint32_t g_first, g_skip;
static Py_ssize_t g_maxpages, g_intent_max, g_s_free, g_s_allocated, g_s_freed;
static PyTypeObject *g_message; /* shmd.message.Message: a tuple subclass */
static int g_ready;

#define LOAD32(p) __atomic_load_n((volatile int32_t *)(p), __ATOMIC_ACQUIRE)
#define LOAD64(p) __atomic_load_n((volatile int64_t *)(p), __ATOMIC_ACQUIRE)
#define STORE32(p, v) __atomic_store_n((volatile int32_t *)(p), (v), __ATOMIC_RELEASE)
#define STORE64(p, v) __atomic_store_n((volatile int64_t *)(p), (v), __ATOMIC_RELEASE)

static PyObject *
configure(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"ring", "desc", "d_inline", "inline", "medium", "medium_fill",
                            "f_first", "f_skip", "src", "tag", "nbytes", "seg", "page",
                            "npages", "flags", "total", "maxpages", "intent_max", "s_free",
                            "s_allocated", "s_freed", "message", NULL};
    PyObject *message;
    unsigned int first, skip;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "nnnnnnIInnnnnnnnnnnnnO!", names, &g_ring,
                                     &g_desc, &g_inl, &g_inline, &g_medium, &g_medium_fill,
                                     &first, &skip, &o_src, &o_tag, &o_nbytes, &o_seg, &o_page,
                                     &o_npages, &o_flags, &o_total, &g_maxpages, &g_intent_max,
                                     &g_s_free, &g_s_allocated, &g_s_freed, &PyType_Type,
                                     &message))
        return NULL;
    if (g_intent_max < 8) {
        PyErr_SetString(PyExc_ValueError, "an intent record holds a plan of 8 writes");
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)message, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "message must be a tuple subclass");
        return NULL;
    }
    if (g_ring <= 0 || g_desc <= g_inl || g_inline > g_desc - g_inl || g_medium < g_inline
        || g_medium_fill > g_ring || (g_medium + g_inl + g_desc - 1) / g_desc > g_medium_fill) {
        PyErr_SetString(PyExc_ValueError, "inconsistent ring geometry");
        return NULL;
    }
    Py_XSETREF(g_message, (PyTypeObject *)Py_NewRef(message));
    g_first = first;
    g_skip = skip;
    g_ready = 1;
    Py_RETURN_NONE;
}

/* A buffer held while an object lives (or until close()), and the checks that every
 * word an object reads or writes lies inside it. */
static int
hold(PyObject *obj, Py_buffer *view, int writable)
{
    if (!g_ready) {
        PyErr_SetString(PyExc_RuntimeError, "shmd._fast.configure() was not called");
        return -1;
    }
    return PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE);
}

static int
inside(Py_buffer *view, Py_ssize_t off, Py_ssize_t size, const char *what)
{
    if (off < 0 || size < 0 || off > view->len - size) {
        PyErr_Format(PyExc_ValueError, "%s at byte %zd is outside the %zd-byte segment", what,
                     off, view->len);
        return -1;
    }
    return 0;
}

/* ---- TraceRing: a traced task's events ------------------------------------------------ */

/* A task's trace ring (trace.py: its count, the count pvm_shmd drained, then the
 * events; one writer, the task) and the events kept until they are moved in (BATCH
 * below) or while it has no room: up to *backlog*; past that *on_full* is called
 * (trace.py has pvm_shmd drain the rings now, and the task waits for it), and only if
 * there is still no room are undrained events written over, which pvm_shmd counts
 * lost, as trace.py does. pvm_shmd orders what it drains
 * by time, so trace.py's own writes may come in between.
 *
 * The events are recorded where they happen, inside Route's posts and Inbox's take
 * (their *trace*; set by trace.switch), and by trace.py's wrappers of the general
 * paths through this ring's stamp/sent/begin/finish: no wrapper on the fast path, a
 * call of plain Python from C costing more than the rest of the event (docs/view.md).
 * A stamp is a raw reading: the TSC where the kernel keeps time by it (*tsc*: the
 * clocksource is "tsc", so it is steady and the same on every CPU; about 11 ns
 * against 29 for clock_gettime on a 2-vCPU EPYC), else CLOCK_MONOTONIC in ns. Kept
 * events are turned into CLOCK_MONOTONIC seconds (trace.py's time) when moved into
 * the ring: TSC readings by the straight line through two pairs (TSC, monotonic) read
 * together, one when the ring was made and the latest (read again at a move once the
 * events are further past it than it is from the first). */

#pragma pack(push, 1)
typedef struct {
    double time;
    int32_t kind, src, dst, tag;
    uint64_t length;
} Event; /* trace.py's EVENT */
#pragma pack(pop)

typedef struct {
    int64_t raw; /* a stamp: see above */
    int32_t kind, src, dst, tag;
    uint64_t length;
} Kept;

enum { K_PSEND, K_START, K_END }; /* the kinds a TraceRing is given, in this order */
/* Events are kept here and moved into the ring this many at a time, when a receive
 * starts (and at flush: trace.py's, when the task publishes its counters): one store
 * of the count, which pvm_shmd polls, per batch, and none on a message's way. */
#define BATCH 16

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    char *base;               /* NULL once closed: events are then dropped */
    Py_ssize_t count, events; /* byte offsets: the count (then the drained count), events */
    int64_t nevents;
    Kept *kept;
    Py_ssize_t nkept, cap;
    int32_t tid;              /* the task's */
    int kinds[3];             /* trace.py's PSEND, PRECV_START, PRECV_END */
    int tsc;                  /* stamps are TSC readings */
    int64_t tsc0, tsc1;       /* the pair read when it was made, and the latest (tsc) */
    double mono0, mono1;
    int64_t started;          /* the stamp of a receive begun and not finished, or 0 */
    int32_t want_src, want_tag; /* what that receive asked for */
    int start_kept;           /* its start is kept already (flush: the task goes to sleep) */
    PyObject *on_full;        /* called when all it may keep is kept: pvm_shmd drains, or None */
    int in_full;              /* on_full is running (a thread's event meanwhile: no call) */
} TraceRing;

static inline int64_t
clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline int64_t
read_tsc(void)
{
#if defined(__x86_64__) || defined(__i386__)
    return (int64_t)__builtin_ia32_rdtsc();
#else
    return clock_ns(); /* (tsc is refused at init off x86) */
#endif
}

static inline int64_t
stamp(TraceRing *r)
{
    int64_t s = r->tsc ? read_tsc() : clock_ns();
    return s ? s : 1; /* (0 means none in *started*) */
}

/* a TSC reading and the monotonic time in seconds at it (between two readings) */
static void
tsc_pair(int64_t *tsc, double *mono)
{
    int64_t a = read_tsc();
    int64_t ns = clock_ns();
    int64_t b = read_tsc();
    *tsc = a + (b - a) / 2;
    *mono = ns * 1e-9;
}

static void
ring_move(TraceRing *r, int force)
{
    if (!r->nkept || !r->base)
        return;
    int64_t k = LOAD64(r->base + r->count), drained = LOAD64(r->base + r->count + 8);
    int64_t room = force ? r->nkept : r->nevents - (k - drained);
    if (room > r->nkept)
        room = r->nkept;
    if (room <= 0 || (!force && k < drained))
        return;
    double scale = 1e-9, at0 = 0.0; /* time = at0 + (raw - tsc0) * scale */
    int64_t raw0 = 0;
    if (r->tsc) {
        /* the latest pair read again once the events are further past it than it is
         * from the first (so a few dozen times in a day's trace, not at every move:
         * the clock costs three TSC readings); the TSC's rate is steady, so the line
         * through the two holds past the second */
        if (read_tsc() - r->tsc1 > r->tsc1 - r->tsc0)
            tsc_pair(&r->tsc1, &r->mono1);
        scale = r->tsc1 > r->tsc0 ? (r->mono1 - r->mono0) / (double)(r->tsc1 - r->tsc0) : 0.0;
        at0 = r->mono0;
        raw0 = r->tsc0;
    }
    for (int64_t j = 0; j < room; j++) { /* (a count scribbled below 0 still lands inside) */
        Kept *e = &r->kept[j];
        Event out = {at0 + (double)(e->raw - raw0) * scale, e->kind, e->src, e->dst, e->tag,
                     e->length};
        memcpy(r->base + r->events
                   + (((k + j) % r->nevents + r->nevents) % r->nevents) * (Py_ssize_t)sizeof(Event),
               &out, sizeof(Event));
    }
    STORE64(r->base + r->count, k + room); /* after the events: never read half-written */
    r->nkept -= room;
    memmove(r->kept, r->kept + room, r->nkept * sizeof(Kept));
}

static void
ring_note(TraceRing *r, int64_t raw, int which, int64_t src, int64_t dst, int64_t tag,
          uint64_t length)
{
    if (!r->base)
        return;
    if (r->nkept == r->cap) {
        ring_move(r, 0);
        if (r->nkept == r->cap && r->on_full && !r->in_full) {
            /* pvm_shmd is behind (a task tracing at full speed while it waits for a
             * CPU): asked to drain now (trace.py), so the task waits, not the events */
            PyObject *et, *ev, *tb, *got;
            PyErr_Fetch(&et, &ev, &tb); /* (none is set on the paths that note events) */
            r->in_full = 1;
            got = PyObject_CallNoArgs(r->on_full);
            r->in_full = 0;
            if (!got) {
                /* (nowhere to raise it from here: a ^C comes again, at the next step) */
                int interrupted = PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
                PyErr_Clear();
                if (interrupted)
                    PyErr_SetInterrupt();
            }
            Py_XDECREF(got);
            PyErr_Restore(et, ev, tb);
            ring_move(r, 0);
        }
        if (r->nkept == r->cap)
            ring_move(r, 1); /* kept all it may: over undrained events (counted lost) */
    }
    Kept e = {raw, r->kinds[which], (int32_t)src, (int32_t)dst, (int32_t)tag, length};
    r->kept[r->nkept++] = e;
}

/* A receive starts (asking for *src*, *tag*): stamped unless one begun is still open
 * (Inbox.take found nothing and the general path goes on with it). A receive's start
 * is when its task waits for the other side: kept events are moved into the ring then. */
static void
ring_begin(TraceRing *r, int64_t src, int64_t tag)
{
    if (r->nkept >= BATCH)
        ring_move(r, 0);
    if (!r->started) {
        r->started = stamp(r);
        r->want_src = (int32_t)src;
        r->want_tag = (int32_t)tag;
    }
}

/* The receive begun ends with a message (*src*, *tag*, *n* bytes): its start and end */
static void
ring_keep_start(TraceRing *r)
{
    if (r->started && !r->start_kept)
        ring_note(r, r->started, K_START, r->want_src, r->tid, r->want_tag, 0);
    r->start_kept = r->started != 0;
}

static void
ring_finish(TraceRing *r, int64_t src, int64_t tag, uint64_t n)
{
    int64_t end = stamp(r);
    ring_keep_start(r);
    ring_note(r, end, K_END, src, r->tid, tag, n);
    r->started = r->start_kept = 0;
}

static int
tracering_init(TraceRing *r, PyObject *args, PyObject *kw)
{
    static char *names[] = {"buf", "ring", "events", "nevents", "backlog", "tid", "kinds", "tsc",
                            "on_full", NULL};
    PyObject *buf, *on_full = Py_None;
    Py_ssize_t ring, events, nevents, backlog;
    int tid = 0, tsc = 0;
    r->kinds[K_PSEND] = 3; /* (trace.py's, unless given) */
    r->kinds[K_START] = 4;
    r->kinds[K_END] = 5;
    if (r->base || r->kept) {
        PyErr_SetString(PyExc_RuntimeError, "TraceRing is already set up");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Onnnn|i(iii)pO", names, &buf, &ring, &events,
                                     &nevents, &backlog, &tid, &r->kinds[K_PSEND],
                                     &r->kinds[K_START], &r->kinds[K_END], &tsc, &on_full))
        return -1;
    if (on_full != Py_None && !PyCallable_Check(on_full)) {
        PyErr_SetString(PyExc_TypeError, "on_full must be callable or None");
        return -1;
    }
    if (nevents <= 0 || backlog <= 0) {
        PyErr_SetString(PyExc_ValueError, "nevents and backlog must be > 0");
        return -1;
    }
#if !defined(__x86_64__) && !defined(__i386__)
    tsc = 0; /* no TSC to read: the clock */
#endif
    if (hold(buf, &r->view, 1) < 0)
        return -1;
    if (inside(&r->view, ring, 16, "the trace ring's count") < 0
        || inside(&r->view, ring + events, nevents * (Py_ssize_t)sizeof(Event), "the events") < 0
        || ring % 8) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "a word is not aligned");
        PyBuffer_Release(&r->view);
        return -1;
    }
    r->kept = PyMem_Malloc(backlog * sizeof(Kept));
    if (!r->kept) {
        PyBuffer_Release(&r->view);
        PyErr_NoMemory();
        return -1;
    }
    r->base = r->view.buf;
    r->count = ring;
    r->events = ring + events;
    r->nevents = nevents;
    r->cap = backlog;
    r->nkept = 0;
    r->tid = tid;
    r->tsc = tsc;
    r->on_full = on_full == Py_None ? NULL : Py_NewRef(on_full);
    r->started = r->start_kept = 0;
    if (tsc) {
        tsc_pair(&r->tsc0, &r->mono0);
        r->tsc1 = r->tsc0;
        r->mono1 = r->mono0;
    }
    return 0;
}

static int
tracering_check(TraceRing *r, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want,
                const char *usage)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s", usage);
        return -1;
    }
    for (Py_ssize_t k = 0; k < nargs; k++)
        if (!PyLong_Check(args[k])) {
            PyErr_Format(PyExc_TypeError, "%s: integers", usage);
            return -1;
        }
    return 0;
}

static PyObject *
tracering_flush(TraceRing *r, PyObject *const *args, Py_ssize_t nargs)
{
    int force = nargs > 0 ? PyObject_IsTrue(args[0]) : 0;
    if (force < 0)
        return NULL;
    ring_keep_start(r); /* a receive going to sleep: its start shows while it waits */
    ring_move(r, force);
    return PyLong_FromSsize_t(r->nkept);
}

static PyObject *
tracering_stamp(TraceRing *r, PyObject *unused)
{
    return PyLong_FromLongLong(stamp(r));
}

/* sent(stamp, dest, tag, nbytes): a psend that began at *stamp* posted its message */
static PyObject *
tracering_sent(TraceRing *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (tracering_check(r, args, nargs, 4, "sent(stamp, dest, tag, nbytes)") < 0)
        return NULL;
    long long v[4];
    for (int k = 0; k < 4; k++)
        v[k] = PyLong_AsLongLong(args[k]);
    if (PyErr_Occurred())
        return NULL;
    ring_note(r, v[0], K_PSEND, r->tid, v[1], v[2], (uint64_t)v[3]);
    Py_RETURN_NONE;
}

/* begin(source, tag): a receive starts (unless one begun is open: see ring_begin) */
static PyObject *
tracering_begin(TraceRing *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (tracering_check(r, args, nargs, 2, "begin(source, tag)") < 0)
        return NULL;
    long long src = PyLong_AsLongLong(args[0]), tag = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    ring_begin(r, src, tag);
    Py_RETURN_NONE;
}

/* finish(src, tag, nbytes): the receive begun took a message; finish(): it did not
 * (a timeout, an error: its start alone is recorded) */
static PyObject *
tracering_finish(TraceRing *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs == 0) {
        ring_keep_start(r);
        r->started = r->start_kept = 0;
        Py_RETURN_NONE;
    }
    if (tracering_check(r, args, nargs, 3, "finish(src, tag, nbytes) or finish()") < 0)
        return NULL;
    long long src = PyLong_AsLongLong(args[0]), tag = PyLong_AsLongLong(args[1]);
    long long n = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    ring_finish(r, src, tag, (uint64_t)n);
    Py_RETURN_NONE;
}

/* forget(): a receive begun is no longer recorded (tracing stopped meanwhile) */
static PyObject *
tracering_forget(TraceRing *r, PyObject *unused)
{
    r->started = r->start_kept = 0;
    Py_RETURN_NONE;
}

static PyObject *
tracering_close(TraceRing *r, PyObject *unused)
{
    if (r->base) {
        r->base = NULL;
        PyBuffer_Release(&r->view);
    }
    Py_RETURN_NONE;
}

static void
tracering_dealloc(TraceRing *r)
{
    tracering_close(r, NULL);
    Py_CLEAR(r->on_full);
    PyMem_Free(r->kept);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyMethodDef tracering_methods[] = {
    {"flush", (PyCFunction)(void (*)(void))tracering_flush, METH_FASTCALL,
     "flush(force=False) -> events still kept: move kept events (and the start of a "
     "receive begun) into the ring (force: over undrained ones)"},
    {"stamp", (PyCFunction)tracering_stamp, METH_NOARGS, "stamp() -> a raw clock reading"},
    {"sent", (PyCFunction)(void (*)(void))tracering_sent, METH_FASTCALL,
     "sent(stamp, dest, tag, nbytes): record a psend begun at stamp"},
    {"begin", (PyCFunction)(void (*)(void))tracering_begin, METH_FASTCALL,
     "begin(source, tag): a receive starts (one begun and not finished goes on)"},
    {"finish", (PyCFunction)(void (*)(void))tracering_finish, METH_FASTCALL,
     "finish(src, tag, nbytes): the receive begun ended with a message; finish(): without"},
    {"forget", (PyCFunction)tracering_forget, METH_NOARGS, "drop a receive begun"},
    {"close", (PyCFunction)tracering_close, METH_NOARGS, "release the segment"},
    {NULL},
};

static PyTypeObject TraceRingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmd._fast.TraceRing",
    .tp_basicsize = sizeof(TraceRing),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "a traced task's trace ring, and the events it has no room for yet",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)tracering_init,
    .tp_dealloc = (destructor)tracering_dealloc,
    .tp_methods = tracering_methods,
};

/* the *trace* attribute of a Route or an Inbox: a TraceRing, or None (not traced) */
static int
set_trace(TraceRing **slot, PyObject *value)
{
    if (value == NULL || value == Py_None) {
        Py_CLEAR(*slot);
        return 0;
    }
    if (!PyObject_TypeCheck(value, &TraceRingType)) {
        PyErr_SetString(PyExc_TypeError, "trace must be a TraceRing or None");
        return -1;
    }
    Py_XSETREF(*slot, (TraceRing *)Py_NewRef(value));
    return 0;
}

static PyObject *
get_trace(TraceRing *t)
{
    return Py_NewRef(t ? (PyObject *)t : Py_None);
}

/* ---- Route: one peer we send to ------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    char *base;
    Py_ssize_t ring, tid, waiting, head, tail, posted; /* byte offsets */
    int64_t seen;   /* its head as last read (see taskbase.Peer.seen) */
    uint32_t dest;
    Py_ssize_t serial; /* its slot's serial word (byte offset), and the value it had: */
    int32_t join;      /* a task that left and joined again with the same tid is not ours */
    Py_ssize_t lock; /* the inbox lock (a robust pthread mutex: shmd/mutex.py), byte offset */
    int wake;       /* the wake semaphore's semid; -1: futex on the waiting word */
    short wake_flg; /* SEM_UNDO if the wake semaphore is released with it */
    int first;      /* wake before posting (taskbase.Peer.first) */
    TraceRing *trace; /* our events when psend is traced, else NULL */
} Route;

static void
route_wake(Route *r)
{
    if (r->wake < 0) {
        STORE32(r->base + r->waiting, 0);
        syscall(SYS_futex, (int32_t *)(r->base + r->waiting), FUTEX_WAKE, 1, NULL, NULL, 0);
    } else {
        struct sembuf op = {0, 1, r->wake_flg};
        semop(r->wake, &op, 1); /* a removed semaphore: its task is gone, as in Python */
    }
}

static int
route_init(Route *r, PyObject *args, PyObject *kw)
{
    static char *names[] = {"buf", "ring", "tid", "waiting", "head", "tail", "posted", "dest",
                            "lock", "wake", "wake_undo", "first", "serial", "join", NULL};
    PyObject *buf;
    unsigned int dest;
    int undo, first;
    if (r->base) {
        PyErr_SetString(PyExc_RuntimeError, "Route is already set up");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OnnnnnnInippni", names, &buf, &r->ring, &r->tid,
                                     &r->waiting, &r->head, &r->tail, &r->posted, &dest, &r->lock,
                                     &r->wake, &undo, &first, &r->serial, &r->join))
        return -1;
    if (hold(buf, &r->view, 1) < 0)
        return -1;
    if (inside(&r->view, r->ring, g_ring * g_desc, "the ring") < 0
        || inside(&r->view, r->tid, 4, "the tid word") < 0
        || inside(&r->view, r->waiting, 4, "the waiting word") < 0
        || inside(&r->view, r->head, 8, "the head") < 0
        || inside(&r->view, r->tail, 8, "the tail") < 0
        || inside(&r->view, r->posted, 8, "the posted count") < 0
        || inside(&r->view, r->lock, sizeof(pthread_mutex_t), "the inbox lock") < 0
        || inside(&r->view, r->serial, 4, "the serial word") < 0
        || (r->waiting | r->tid | r->serial) % 4 || (r->head | r->tail | r->posted | r->lock) % 8) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "a word is not aligned");
        PyBuffer_Release(&r->view);
        return -1;
    }
    r->base = r->view.buf;
    r->dest = dest;
    r->wake_flg = undo ? SEM_UNDO : 0;
    r->first = first;
    r->seen = 0;
    return 0;
}

_Static_assert(sizeof(pthread_mutex_t) <= 64, "layout.T's lock keeps 64 bytes for the mutex");

/* An inbox lock's release, and the full barrier the protocol needs after it (between
 * storing a tail and reading the waiting word: inbox.py's Dekker handshake) */
static inline void
unlock(pthread_mutex_t *lock)
{
    pthread_mutex_unlock(lock);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* A descriptor: the header's fields, then the inline bytes (*data*: none in pages) */
static void
put_desc(char *d, uint32_t src, int32_t tag, uint64_t n, uint32_t flags, const void *data,
         int32_t seg, uint32_t page, uint32_t npages)
{
    uint64_t total = flags == g_skip ? 0 : n;
    memcpy(d + o_src, &src, 4);
    memcpy(d + o_tag, &tag, 4);
    memcpy(d + o_nbytes, &n, 8);
    memcpy(d + o_seg, &seg, 4);
    memcpy(d + o_page, &page, 4);
    memcpy(d + o_npages, &npages, 4);
    memcpy(d + o_flags, &flags, 4);
    memcpy(d + o_total, &total, 8);
    if (data)
        memcpy(d + g_inl, data, n);
}

/* Post one message's descriptor as sending.py's _post does (a message that would not
 * fit in the ring's rest is preceded by an F_SKIP filler; one carried in the inbox
 * past INLINE only while the ring is filled no further than MEDIUM_FILL): carried in
 * it (*data*, *n* bytes) or in pages (*seg* >= 0). 1 if posted, 0 if not (the lock
 * busy, no room, the task gone): the Python path decides. */
static int
route_put(Route *r, uint32_t src, int32_t tag, Py_ssize_t n, const void *data, int32_t seg,
          uint32_t page, uint32_t npages)
{
    char *base = r->base;
    int64_t need = seg >= 0 ? 1 : (n + g_inl + g_desc - 1) / g_desc; /* layout.span */
    int64_t limit = seg >= 0 || n <= g_inline ? g_ring : g_medium_fill;
    int32_t early = LOAD32(base + r->waiting);
    if (early && (uint32_t)LOAD32(base + r->tid) == r->dest) {
        if (r->first)
            route_wake(r);
        else
            early = 0;
    }
    pthread_mutex_t *lock = (pthread_mutex_t *)(base + r->lock);
    int taken = pthread_mutex_trylock(lock);
    if (taken == EOWNERDEAD) /* its holder died: ours now (a tail is stored whole) */
        pthread_mutex_consistent(lock);
    else if (taken)
        return 0;
    int64_t tail = LOAD64(base + r->tail);
    if (tail < 0) { /* scribbled: the Python path names it */
        unlock(lock);
        return 0;
    }
    int64_t k = tail % g_ring, fill = k + need > g_ring ? g_ring - k : 0;
    /* the head as last read first (it only grows: a stale one looks fuller; a message
     * in pages reads it anyway, and so sees a head scribbled past the tail) */
    if (seg >= 0 || !(tail - r->seen >= 0 && tail - r->seen + fill + need <= limit))
        r->seen = LOAD64(base + r->head);
    int64_t used = tail - r->seen;
    if ((uint32_t)LOAD32(base + r->tid) != r->dest || LOAD32(base + r->serial) != r->join
        || used < 0 || used + fill + need > limit) {
        unlock(lock);
        return 0;
    }
    char *ring = base + r->ring;
    if (fill) {
        put_desc(ring + k * g_desc, src, 0, fill * g_desc - g_inl, g_skip, NULL, -1, 0, 0);
        tail += fill;
    }
    put_desc(ring + (tail % g_ring) * g_desc, src, tag, n, g_first, data, seg, page, npages);
    if (seg >= 0) /* paged bytes waiting in its inbox (sending.py paces on them) */
        STORE64(base + r->posted, (int64_t)((uint64_t)LOAD64(base + r->posted) + n));
    STORE64(base + r->tail, tail + need);
    unlock(lock);
    int32_t w = LOAD32(base + r->waiting);
    if (w && w != early)
        route_wake(r);
    return 1;
}

/* post(src, tag, data) -> bool: psend of up to MEDIUM bytes carried in the inbox.
 * False: nothing posted (see route_put; a tag out of range): the Python path decides. */
static PyObject *
route_post(Route *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "post(src, tag, data)");
        return NULL;
    }
    if (!r->base) {
        PyErr_SetString(PyExc_ValueError, "post on a closed Route");
        return NULL;
    }
    unsigned long src = PyLong_AsUnsignedLong(args[0]);
    long tag = PyLong_AsLong(args[1]);
    if (PyErr_Occurred()) {
        PyErr_Clear(); /* not ours to name: the Python path does */
        Py_RETURN_FALSE;
    }
    Py_buffer data;
    if (PyObject_GetBuffer(args[2], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *res = Py_False;
    int64_t t = r->trace ? stamp(r->trace) : 0; /* before the post: a receiver may end at once */
    if (tag >= 0 && tag <= 0x7FFFFFFF && src <= 0xFFFFFFFFUL && data.len <= g_medium
        && route_put(r, (uint32_t)src, (int32_t)tag, data.len, data.buf, -1, 0, 0)) {
        res = Py_True;
        if (r->trace)
            ring_note(r->trace, t, K_PSEND, r->trace->tid, r->dest, tag, data.len);
    }
    PyBuffer_Release(&data);
    return Py_NewRef(res);
}

/* post_pages(src, tag, nbytes, segment, page, pages) -> bool: a message in a run of pages */
static PyObject *
route_post_pages(Route *r, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "post_pages(src, tag, nbytes, segment, page, pages)");
        return NULL;
    }
    if (!r->base) {
        PyErr_SetString(PyExc_ValueError, "post_pages on a closed Route");
        return NULL;
    }
    long long v[6];
    for (int k = 0; k < 6; k++) {
        v[k] = PyLong_AsLongLong(args[k]);
        if (v[k] == -1 && PyErr_Occurred())
            return NULL;
    }
    if (v[0] < 0 || v[0] > 0xFFFFFFFFLL || v[1] < 0 || v[1] > 0x7FFFFFFF || v[2] < 0 || v[3] < 0
        || v[3] > 0x7FFFFFFF || v[4] < 0 || v[4] > 0xFFFFFFFFLL || v[5] < 1 || v[5] > 0xFFFFFFFFLL)
        Py_RETURN_FALSE;
    int64_t t = r->trace ? stamp(r->trace) : 0;
    if (!route_put(r, (uint32_t)v[0], (int32_t)v[1], (Py_ssize_t)v[2], NULL, (int32_t)v[3],
                   (uint32_t)v[4], (uint32_t)v[5]))
        Py_RETURN_FALSE;
    if (r->trace)
        ring_note(r->trace, t, K_PSEND, r->trace->tid, r->dest, v[1], (uint64_t)v[2]);
    Py_RETURN_TRUE;
}

static PyObject *
route_close(Route *r, PyObject *unused)
{
    if (r->base) {
        r->base = NULL;
        PyBuffer_Release(&r->view);
    }
    Py_RETURN_NONE;
}

static void
route_dealloc(Route *r)
{
    route_close(r, NULL);
    Py_CLEAR(r->trace);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyObject *
route_get_trace(Route *r, void *unused)
{
    return get_trace(r->trace);
}

static int
route_set_trace(Route *r, PyObject *value, void *unused)
{
    return set_trace(&r->trace, value);
}

static PyGetSetDef route_getset[] = {
    {"trace", (getter)route_get_trace, (setter)route_set_trace,
     "the TraceRing its posts are recorded in (None: not traced)", NULL},
    {NULL},
};

static PyMethodDef route_methods[] = {
    {"post", (PyCFunction)(void (*)(void))route_post, METH_FASTCALL,
     "post(src, tag, data) -> bool: post a message without pages (False: the Python path must)"},
    {"post_pages", (PyCFunction)(void (*)(void))route_post_pages, METH_FASTCALL,
     "post_pages(src, tag, nbytes, segment, page, pages) -> bool: post a message in pages"},
    {"close", (PyCFunction)route_close, METH_NOARGS, "release the segment"},
    {NULL},
};

static PyTypeObject RouteType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmd._fast.Route",
    .tp_basicsize = sizeof(Route),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "psend's fast path to one local peer",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)route_init,
    .tp_dealloc = (destructor)route_dealloc,
    .tp_methods = route_methods,
    .tp_getset = route_getset,
};

/* ---- Segments: runs of pages, as pages.py and pagemap.py do it ------------------------- */

/* A task's view of the segments: the page maps (next fit with boundary tags, each
 * change a plan committed through the segment's intent record: pagemap.py says why),
 * the segment table's counters, the pages themselves. Only what never waits: each
 * segment lock is tried once (IPC_NOWAIT); a busy lock, an intent record a killed
 * task left, a map that cannot be right: the call declines and pages.py (waiting,
 * finishing the record, naming the damage) takes over. */

typedef struct {
    PyObject_HEAD
    Py_buffer view;     /* segment 0 */
    char *base;         /* NULL once closed */
    Py_buffer *data;    /* each segment's pages */
    int nsegs, home;
    Py_ssize_t ps;
    int32_t tid;
    int32_t *npages, *mapb, *intent, *segi, *rover, *lock;
    Py_ssize_t *segq;
    PyObject *deferred; /* pages.py's frees put off: (segment, page, only_if) */
} Segments;

#define M32(s, k) (((volatile int32_t *)(s)->base)[k])
#define M64(s, k) (((volatile int64_t *)(s)->base)[k])
#define ADD(k, v) (plan[np++] = (k), plan[np++] = (v))
enum { DAMAGED = -2, NONE = -1 };

/* pagemap._fit */
static int32_t
map_fit(Segments *g, int32_t b, int32_t p, int32_t stop, int32_t npages, int32_t want,
        int32_t *plan, int *npp)
{
    int np = *npp;
    int32_t f = b + (int32_t)g_maxpages;
    while (p < stop) {
        int64_t v = M32(g, b + p), n = v > 0 ? v : -v;
        if (n == 0 || n > npages - p)
            return DAMAGED;
        if (v >= want) {
            if (M32(g, f + p + v - 1) != v)
                return DAMAGED;
            ADD(b + p, -want);
            ADD(f + p + want - 1, -want);
            if (v > want) {
                ADD(b + p + want, (int32_t)(v - want));
                ADD(f + p + v - 1, (int32_t)(v - want));
            }
            ADD(b + 2 * (int32_t)g_maxpages + p, g->tid);
            *npp = np;
            return p;
        }
        p += (int32_t)n;
    }
    return NONE;
}

/* pagemap.alloc, with its plan */
static int32_t
map_alloc(Segments *g, int s, int32_t want, int32_t *plan, int *npp)
{
    int32_t b = g->mapb[s], npages = g->npages[s], r = g->rover[s];
    int32_t f = b + (int32_t)g_maxpages;
    int32_t start = M32(g, r);
    if (!(0 < start && start < npages)) {
        start = 0;
    } else {
        int64_t k = M32(g, f + start - 1);
        k = k > 0 ? k : -k;
        if (!(0 < k && k <= start) || M32(g, b + start - k) != M32(g, f + start - 1))
            start = 0;
    }
    int32_t p = map_fit(g, b, start, npages, npages, want, plan, npp);
    if (p == NONE && start)
        p = map_fit(g, b, 0, start, npages, want, plan, npp);
    if (p >= 0) {
        int np = *npp;
        ADD(r, p + want < npages ? p + want : 0);
        *npp = np;
    }
    return p;
}

/* pagemap.free, with its plan: pages freed (0: *p* starts no allocated run) */
static int32_t
map_free(Segments *g, int s, int32_t p, int32_t *plan, int *npp)
{
    int32_t b = g->mapb[s], npages = g->npages[s], r = g->rover[s];
    int32_t f = b + (int32_t)g_maxpages;
    if (!(0 <= p && p < npages))
        return 0;
    int64_t n = -(int64_t)M32(g, b + p);
    if (n <= 0 || p + n > npages || M32(g, f + p + n - 1) != -n)
        return 0;
    int64_t start = p, length = n, q = p + n;
    int64_t after = q < npages ? M32(g, b + q) : 0;
    if (after > 0) {
        if (after > npages - q || M32(g, f + q + after - 1) != after)
            return DAMAGED;
        length += after;
    }
    int64_t before = p > 0 ? M32(g, f + p - 1) : 0;
    if (before > 0) {
        if (before > p || M32(g, b + p - before) != before)
            return DAMAGED;
        start -= before;
        length += before;
    }
    int np = *npp;
    ADD(b + 2 * (int32_t)g_maxpages + p, 0);
    if (start != p)
        ADD(b + p, 0); /* no stale -n inside the merged run: a second free must fail */
    ADD(b + (int32_t)start, (int32_t)length);
    ADD(f + (int32_t)(start + length - 1), (int32_t)length);
    int32_t rv = M32(g, r);
    if (start < rv && rv < start + length)
        ADD(r, (int32_t)start);
    *npp = np;
    return (int32_t)n;
}

/* pagemap.commit: the plan into the intent record, its count last; applied; cleared */
static void
map_commit(Segments *g, int s, int32_t *plan, int np)
{
    int32_t rec = g->intent[s];
    for (int k = 0; k < np; k++)
        M32(g, rec + 1 + k) = plan[k];
    __atomic_store_n((int32_t *)g->base + rec, np / 2, __ATOMIC_RELEASE);
    for (int k = 0; k < np; k += 2)
        M32(g, plan[k]) = plan[k + 1];
    __atomic_store_n((int32_t *)g->base + rec, 0, __ATOMIC_RELEASE);
}

/* pages.plus32: a u32 counter in an int32 word, wrapping */
static int32_t
plus32(int32_t v, int64_t n)
{
    return (int32_t)(uint32_t)((uint32_t)v + (uint32_t)(int32_t)n);
}

static int
seg_lock(Segments *g, int s, int op)
{
    struct sembuf b = {0, (short)op, (short)(op < 0 ? IPC_NOWAIT | SEM_UNDO : SEM_UNDO)};
    return semop(g->lock[s], &b, 1);
}

/* alloc_copy(data) -> (segment, page, pages) | None: a run for *data*, copied in */
static PyObject *
segments_alloc_copy(Segments *g, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "alloc_copy(data)");
        return NULL;
    }
    if (!g->base) {
        PyErr_SetString(PyExc_ValueError, "alloc_copy on closed Segments");
        return NULL;
    }
    Py_buffer data;
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *res = NULL;
    int64_t want64 = (data.len + g->ps - 1) / g->ps;
    for (int k = 0; k < g->nsegs && want64 > 0; k++) {
        int s = (g->home + k) % g->nsegs;
        if (want64 > g->npages[s])
            continue;
        int32_t want = (int32_t)want64, plan[2 * 16];
        int np = 0;
        if (seg_lock(g, s, -1) < 0)
            continue; /* busy (or gone): another segment, else pages.py */
        if (M32(g, g->intent[s])) {
            seg_lock(g, s, 1);
            break; /* a killed task's plan to finish: pages.py */
        }
        int32_t p = map_alloc(g, s, want, plan, &np);
        if (p == DAMAGED) {
            seg_lock(g, s, 1);
            break; /* pages.py names it */
        }
        if (p >= 0) {
            int32_t fk = g->segi[s] + (int32_t)g_s_free;
            ADD(fk, plus32(M32(g, fk), -want));
            map_commit(g, s, plan, np);
            Py_ssize_t w = g->segq[s] + g_s_allocated;
            M64(g, w) = (int64_t)((uint64_t)M64(g, w) + 1);
            seg_lock(g, s, 1);
            memcpy((char *)g->data[s].buf + p * g->ps, data.buf, data.len);
            res = Py_BuildValue("(iii)", s, p, want);
            goto out;
        }
        seg_lock(g, s, 1);
    }
    res = Py_NewRef(Py_None);
out:
    PyBuffer_Release(&data);
    return res;
}

/* pagemap.free and its commit, under segment *s*'s lock: pages freed (0: none) */
static int32_t
seg_free_held(Segments *g, int s, int32_t p)
{
    int32_t plan[2 * 16];
    int np = 0;
    int32_t n = map_free(g, s, p, plan, &np);
    if (n > 0) {
        int32_t fk = g->segi[s] + (int32_t)g_s_free;
        ADD(fk, plus32(M32(g, fk), n));
        map_commit(g, s, plan, np);
        Py_ssize_t w = g->segq[s] + g_s_freed;
        M64(g, w) = (int64_t)((uint64_t)M64(g, w) + 1);
    }
    return n;
}

/* Free the run at page *p* of segment *s* if its lock is free at the first try and no
 * plan is left to finish, with the frees put off before in that segment (under the
 * same hold, as pages.py's _free_soon): 1; else 0, nothing done. -1: an error set */
static int
seg_free(Segments *g, int s, int32_t p)
{
    if (s < 0 || s >= g->nsegs || p < 0 || p >= g->npages[s] || seg_lock(g, s, -1) < 0)
        return 0;
    if (M32(g, g->intent[s]) || seg_free_held(g, s, p) == DAMAGED) {
        seg_lock(g, s, 1);
        return 0; /* pages.py finishes the plan, or names the damage */
    }
    int rc = 1;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(g->deferred);) {
        PyObject *run = PyList_GET_ITEM(g->deferred, k);
        long rs, rp, only;
        if (!PyTuple_Check(run) || !PyArg_ParseTuple(run, "lll", &rs, &rp, &only)) {
            rc = -1;
            break;
        }
        if (rs != s) {
            k++;
            continue;
        }
        if (PySequence_DelItem(g->deferred, k) < 0) {
            rc = -1;
            break;
        }
        if (rp < 0 || rp >= g->npages[s]
            || (only && M32(g, g->mapb[s] + 2 * (int32_t)g_maxpages + rp) != only))
            continue; /* (as pages.py's _free_held: no longer that task's) */
        seg_free_held(g, s, (int32_t)rp);
    }
    seg_lock(g, s, 1);
    return rc;
}

/* free(segment, page) -> bool: the run freed; False: nothing done (pages.py then) */
static PyObject *
segments_free(Segments *g, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "free(segment, page)");
        return NULL;
    }
    if (!g->base) {
        PyErr_SetString(PyExc_ValueError, "free on closed Segments");
        return NULL;
    }
    long s = PyLong_AsLong(args[0]), p = PyLong_AsLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (s < 0 || s >= g->nsegs || p < 0 || p >= g->npages[s])
        Py_RETURN_FALSE;
    int rc = seg_free(g, (int)s, (int32_t)p);
    return rc < 0 ? NULL : Py_NewRef(rc ? Py_True : Py_False);
}

static PyObject *
segments_close(Segments *g, PyObject *unused)
{
    if (g->base) {
        g->base = NULL;
        for (int s = 0; s < g->nsegs; s++)
            PyBuffer_Release(&g->data[s]);
        PyBuffer_Release(&g->view);
    }
    Py_RETURN_NONE;
}

static void
segments_dealloc(Segments *g)
{
    segments_close(g, NULL);
    Py_XDECREF(g->deferred);
    PyMem_Free(g->data);
    PyMem_Free(g->npages);
    PyMem_Free(g->segq);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

/* a list of *n* ints from the sequence *o* into *out* */
static int
ints(PyObject *o, int n, int32_t *out, const char *what)
{
    PyObject *f = PySequence_Fast(o, what);
    if (!f)
        return -1;
    if (PySequence_Fast_GET_SIZE(f) != n) {
        PyErr_Format(PyExc_ValueError, "%s: %d values wanted", what, n);
        Py_DECREF(f);
        return -1;
    }
    for (int k = 0; k < n; k++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(f, k));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(f);
            return -1;
        }
        out[k] = (int32_t)v;
    }
    Py_DECREF(f);
    return 0;
}

static int
segments_init(Segments *g, PyObject *args, PyObject *kw)
{
    static char *names[] = {"buf", "data", "ps", "npages", "mapb", "intent", "segi", "segq",
                            "rover", "locks", "tid", "home", "deferred", NULL};
    PyObject *buf, *data, *npages, *mapb, *intent, *segi, *segq, *rover, *locks, *deferred;
    Py_ssize_t ps;
    int tid, home;
    if (g->npages) {
        PyErr_SetString(PyExc_RuntimeError, "Segments is already set up");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO!nOOOOOOOiiO!", names, &buf, &PyList_Type,
                                     &data, &ps, &npages, &mapb, &intent, &segi, &segq, &rover,
                                     &locks, &tid, &home, &PyList_Type, &deferred))
        return -1;
    int n = (int)PyList_GET_SIZE(data);
    if (n < 1 || n > 64 || ps <= 0 || home < 0) {
        PyErr_SetString(PyExc_ValueError, "1 to 64 segments, a page size and a home wanted");
        return -1;
    }
    g->npages = PyMem_Calloc(6 * n, sizeof(int32_t));
    g->segq = PyMem_Calloc(n, sizeof(Py_ssize_t));
    g->data = PyMem_Calloc(n, sizeof(Py_buffer));
    if (!g->npages || !g->segq || !g->data) {
        PyErr_NoMemory();
        return -1;
    }
    g->mapb = g->npages + n;
    g->intent = g->npages + 2 * n;
    g->segi = g->npages + 3 * n;
    g->rover = g->npages + 4 * n;
    g->lock = g->npages + 5 * n;
    int32_t q[64];
    if (ints(npages, n, g->npages, "npages") < 0 || ints(mapb, n, g->mapb, "mapb") < 0
        || ints(intent, n, g->intent, "intent") < 0 || ints(segi, n, g->segi, "segi") < 0
        || ints(segq, n, q, "segq") < 0 || ints(rover, n, g->rover, "rover") < 0
        || ints(locks, n, g->lock, "locks") < 0)
        return -1;
    if (hold(buf, &g->view, 1) < 0)
        return -1;
    int got = 0;
    for (int s = 0; s < n; s++) {
        g->segq[s] = q[s];
        Py_ssize_t np_ = g->npages[s];
        if (np_ < 1 || np_ > g_maxpages
            || inside(&g->view, 4 * (Py_ssize_t)g->mapb[s], 12 * g_maxpages, "a page map") < 0
            || inside(&g->view, 4 * (Py_ssize_t)g->intent[s], 4 * (1 + 2 * g_intent_max),
                      "an intent record") < 0
            || inside(&g->view, 4 * (Py_ssize_t)g->segi[s] + 4 * g_s_free, 4, "a free count") < 0
            || inside(&g->view, 8 * (q[s] + g_s_allocated), 8, "a count") < 0
            || inside(&g->view, 8 * (q[s] + g_s_freed), 8, "a count") < 0
            || inside(&g->view, 4 * (Py_ssize_t)g->rover[s], 4, "a rover") < 0) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "segment %d: %zd pages", s, np_);
            goto fail;
        }
        if (PyObject_GetBuffer(PyList_GET_ITEM(data, s), &g->data[s], PyBUF_WRITABLE) < 0)
            goto fail;
        got++;
        if (g->data[s].len < np_ * ps) {
            PyErr_Format(PyExc_ValueError, "segment %d: %zd bytes for %zd pages", s,
                         g->data[s].len, np_);
            goto fail;
        }
    }
    g->nsegs = n;
    g->ps = ps;
    g->tid = tid;
    g->home = home % n;
    g->deferred = Py_NewRef(deferred);
    g->base = g->view.buf;
    return 0;
fail:
    for (int s = 0; s < got; s++)
        PyBuffer_Release(&g->data[s]);
    PyBuffer_Release(&g->view);
    return -1;
}

static PyMethodDef segments_methods[] = {
    {"alloc_copy", (PyCFunction)(void (*)(void))segments_alloc_copy, METH_FASTCALL,
     "alloc_copy(data) -> (segment, page, pages) | None: a run of pages holding data"},
    {"free", (PyCFunction)(void (*)(void))segments_free, METH_FASTCALL,
     "free(segment, page) -> bool: free the run (False: nothing done)"},
    {"close", (PyCFunction)segments_close, METH_NOARGS, "release the segments"},
    {NULL},
};

static PyTypeObject SegmentsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmd._fast.Segments",
    .tp_basicsize = sizeof(Segments),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "a task's runs of pages: allocate and copy in, free",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)segments_init,
    .tp_dealloc = (destructor)segments_dealloc,
    .tp_methods = segments_methods,
};

/* ---- Inbox: our own ring ------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    char *base;
    Py_ssize_t ring, head, tail, consumed; /* byte offsets */
    Segments *segs;      /* our runs of pages (a message in pages: None without) */
    Py_ssize_t defer_max; /* how many frees pages.py may put off */
    TraceRing *trace;     /* our events when precv is traced, else NULL */
} Inbox;

static int
inbox_init(Inbox *b, PyObject *args, PyObject *kw)
{
    static char *names[] = {"buf", "ring", "head", "tail", "consumed", "segments", "defer_max",
                            NULL};
    PyObject *buf, *segs = Py_None;
    b->consumed = -1;
    b->defer_max = 0;
    if (b->base) {
        PyErr_SetString(PyExc_RuntimeError, "Inbox is already set up");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Onnn|nOn", names, &buf, &b->ring, &b->head,
                                     &b->tail, &b->consumed, &segs, &b->defer_max))
        return -1;
    int paged = segs != Py_None;
    if (paged && (!PyObject_TypeCheck(segs, &SegmentsType) || b->defer_max < 1
                  || b->consumed < 0)) {
        PyErr_SetString(PyExc_TypeError, "segments wants a Segments, defer_max and consumed");
        return -1;
    }
    if (hold(buf, &b->view, 1) < 0)
        return -1;
    if (inside(&b->view, b->ring, g_ring * g_desc, "the ring") < 0
        || inside(&b->view, b->head, 8, "the head") < 0
        || inside(&b->view, b->tail, 8, "the tail") < 0
        || (paged && inside(&b->view, b->consumed, 8, "the consumed count") < 0)
        || (b->head | b->tail | (paged ? b->consumed : 0)) % 8) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "a word is not aligned");
        PyBuffer_Release(&b->view);
        return -1;
    }
    if (paged)
        b->segs = (Segments *)Py_NewRef(segs);
    b->base = b->view.buf;
    return 0;
}

static inline double
now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The descriptor at our ring's head, after the spin, if it is a whole message from
 * *source* with tag *want* (-1: any) that the compiled paths take: inline (at most the
 * medium size), or in one run of pages (if *freeing*, one whose free will not have to
 * wait). Fills *h*; NULL: none such (empty, another message, or damage: the Python
 * path names it). */
typedef struct {
    int64_t head, span;
    uint32_t src, page, npages;
    int32_t tag, seg;
    uint64_t n;
    const char *from;
} Head;

static const char *
inbox_head(Inbox *b, long source, long want, double spin, int freeing, Head *h)
{
    char *base = b->base;
    int64_t head = LOAD64(base + b->head);
    if (LOAD64(base + b->tail) == head && spin > 0) {
        double end = now() + spin;
        do {
            for (int k = 0; k < 16 && LOAD64(base + b->tail) == head; k++)
                CPU_RELAX();
        } while (LOAD64(base + b->tail) == head && now() < end);
    }
    int64_t tail = LOAD64(base + b->tail);
    if (head < 0 || !(tail - head > 0 && tail - head <= g_ring))
        return NULL;
    char *d = base + b->ring + (head % g_ring) * g_desc;
    uint32_t flags;
    memcpy(&h->src, d + o_src, 4);
    memcpy(&h->tag, d + o_tag, 4);
    memcpy(&h->n, d + o_nbytes, 8);
    memcpy(&h->seg, d + o_seg, 4);
    memcpy(&flags, d + o_flags, 4);
    if (flags != g_first || (source != -1 && (long)h->src != source)
        || (want != -1 && (long)h->tag != want))
        return NULL;
    h->head = head;
    h->span = 1;
    h->page = h->npages = 0;
    Segments *g = b->segs;
    if (h->seg < 0) {
        if (h->n > (uint64_t)g_medium)
            return NULL;
        h->span = ((int64_t)h->n + g_inl + g_desc - 1) / g_desc; /* layout.span */
        if (head % g_ring + h->span > g_ring || head + h->span > tail)
            return NULL;
        h->from = d + g_inl;
        return d;
    }
    /* a whole message in one run of pages (inbox.py's _take_paged) */
    uint64_t total;
    memcpy(&h->page, d + o_page, 4);
    memcpy(&h->npages, d + o_npages, 4);
    memcpy(&total, d + o_total, 8);
    if (!g || !g->base || total != h->n || h->seg >= g->nsegs || h->npages == 0
        || (uint64_t)h->npages != (h->n + g->ps - 1) / g->ps
        || (int64_t)h->page + h->npages > g->npages[h->seg])
        return NULL;
    /* a free that may have to wait (pages.py's _free_soon): the Python path */
    if (freeing && (PyList_GET_SIZE(g->deferred) >= b->defer_max
                    || (int64_t)h->npages * b->defer_max > g->npages[h->seg]))
        return NULL;
    h->from = (const char *)g->data[h->seg].buf + (Py_ssize_t)h->page * g->ps;
    return d;
}

/* The run of pages of the message at the head is ours now (pvm_shmd frees it with
 * ours if we die), and its bytes consumed */
static inline void
inbox_own_run(Inbox *b, const Head *h)
{
    Segments *g = b->segs;
    M32(g, g->mapb[h->seg] + 2 * (int32_t)g_maxpages + (int32_t)h->page) = g->tid;
    STORE64(b->base + b->consumed, (int64_t)((uint64_t)LOAD64(b->base + b->consumed) + h->n));
}

/* take(source, tag, spin, into=None) -> Message | (src, tag, nbytes) | None */
/* The (source, tag, spin) a take begins with, from *args* (3 of them, or *most*); -1
 * with the error set if they are not, or the Inbox is closed. *usage*: the call. */
static int
take_args(Inbox *b, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t most, const char *usage,
          long *source, long *want, double *spin)
{
    if (nargs < 3 || nargs > most) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    if (!b->base) {
        PyErr_Format(PyExc_ValueError, "%s on a closed Inbox", usage);
        return -1;
    }
    *source = PyLong_AsLong(args[0]);
    *want = PyLong_AsLong(args[1]);
    *spin = PyFloat_AsDouble(args[2]);
    return PyErr_Occurred() ? -1 : 0;
}

static PyObject *
inbox_take(Inbox *b, PyObject *const *args, Py_ssize_t nargs)
{
    long source, want;
    double spin;
    if (take_args(b, args, nargs, 4, "take(source, tag, spin, into=None)", &source, &want, &spin) < 0)
        return NULL;
    PyObject *into = nargs == 4 && args[3] != Py_None ? args[3] : NULL;
    if (b->trace)
        ring_begin(b->trace, source, want); /* (left open when the Python path goes on) */
    Head h;
    if (!inbox_head(b, source, want, spin, 1, &h))
        Py_RETURN_NONE;
    Segments *g = b->segs;
    uint64_t n = h.n;
    PyObject *data, *res;
    Py_buffer out;
    if (into) {
        if (PyObject_GetBuffer(into, &out, PyBUF_WRITABLE) < 0)
            return NULL;
        if ((uint64_t)out.len < n) {
            PyBuffer_Release(&out);
            Py_RETURN_NONE; /* too small: the Python path raises and keeps it */
        }
        data = PyLong_FromUnsignedLongLong(n);
    } else {
        data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    }
    PyObject *s = data ? PyLong_FromUnsignedLong(h.src) : NULL;
    PyObject *t = s ? PyLong_FromLong(h.tag) : NULL;
    res = !t ? NULL : into ? PyTuple_New(3) : g_message->tp_alloc(g_message, 3);
    if (!res) {
        Py_XDECREF(s);
        Py_XDECREF(t);
        Py_XDECREF(data);
        if (into)
            PyBuffer_Release(&out);
        return NULL;
    }
    if (h.seg >= 0)
        inbox_own_run(b, &h);
    if (into) {
        memcpy(out.buf, h.from, n);
        PyBuffer_Release(&out);
    } else {
        memcpy(PyBytes_AS_STRING(data), h.from, n);
    }
    /* taken: its room is the senders' again. Only now: bytes carried in the ring are
     * copied out first, or a sender that finds the room (we were preempted between the
     * two: 256 messages later, in a test) writes over them as we copy. */
    STORE64(b->base + b->head, h.head + h.span);
    PyTuple_SET_ITEM(res, 0, s);
    PyTuple_SET_ITEM(res, 1, t);
    PyTuple_SET_ITEM(res, 2, data);
    if (b->trace)
        ring_finish(b->trace, h.src, h.tag, n);
    int freed = h.seg >= 0 ? seg_free(g, h.seg, (int32_t)h.page) : 1;
    if (freed < 0) {
        Py_DECREF(res);
        return NULL;
    }
    if (!freed) {
        /* its segment's lock busy: freed later by pages.py (the run stays ours) */
        PyObject *run = Py_BuildValue("(iii)", h.seg, (int)h.page, 0);
        if (!run || PyList_Append(g->deferred, run) < 0) {
            Py_XDECREF(run);
            Py_DECREF(res);
            return NULL;
        }
        Py_DECREF(run);
    }
    return res;
}

/* take_run(source, tag, spin) -> (src, tag, nbytes, segment, page, pages) | None: the
 * next message if it is in one run of pages, taken off the ring and left there, ours
 * (precv_view's fast path: the caller frees the run when the view is released) */
static PyObject *
inbox_take_run(Inbox *b, PyObject *const *args, Py_ssize_t nargs)
{
    long source, want;
    double spin;
    if (take_args(b, args, nargs, 3, "take_run(source, tag, spin)", &source, &want, &spin) < 0)
        return NULL;
    Head h; /* (not traced here: trace.py wraps the whole of a traced precv_view) */
    if (!inbox_head(b, source, want, spin, 0, &h) || h.seg < 0)
        Py_RETURN_NONE;
    PyObject *res = Py_BuildValue("(kiKiIk)", (unsigned long)h.src, (int)h.tag,
                                  (unsigned long long)h.n, (int)h.seg, (unsigned int)h.page,
                                  (unsigned long)h.npages);
    if (!res)
        return NULL;
    inbox_own_run(b, &h);
    STORE64(b->base + b->head, h.head + h.span);
    return res;
}

static PyObject *
inbox_close(Inbox *b, PyObject *unused)
{
    if (b->base) {
        b->base = NULL;
        PyBuffer_Release(&b->view);
    }
    Py_CLEAR(b->segs);
    Py_CLEAR(b->trace);
    Py_RETURN_NONE;
}

static void
inbox_dealloc(Inbox *b)
{
    inbox_close(b, NULL);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static PyObject *
inbox_get_trace(Inbox *b, void *unused)
{
    return get_trace(b->trace);
}

static int
inbox_set_trace(Inbox *b, PyObject *value, void *unused)
{
    return set_trace(&b->trace, value);
}

static PyGetSetDef inbox_getset[] = {
    {"trace", (getter)inbox_get_trace, (setter)inbox_set_trace,
     "the TraceRing its receives are recorded in (None: not traced)", NULL},
    {NULL},
};

static PyMethodDef inbox_methods[] = {
    {"take", (PyCFunction)(void (*)(void))inbox_take, METH_FASTCALL,
     "take(source, tag, spin, into=None): the next small message, or None"},
    {"take_run", (PyCFunction)(void (*)(void))inbox_take_run, METH_FASTCALL,
     "take_run(source, tag, spin): the next message's run of pages, left there, or None"},
    {"close", (PyCFunction)inbox_close, METH_NOARGS, "release the segment"},
    {NULL},
};

static PyTypeObject InboxType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmd._fast.Inbox",
    .tp_basicsize = sizeof(Inbox),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "precv's fast path on our own ring",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)inbox_init,
    .tp_dealloc = (destructor)inbox_dealloc,
    .tp_methods = inbox_methods,
    .tp_getset = inbox_getset,
};


static PyMethodDef module_methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS,
     "set the ring's geometry and the Message type (shmd.fastpath does)"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "shmd._fast", "psend/precv's small-message fast path, compiled", -1,
    module_methods,
};

PyMODINIT_FUNC
PyInit__fast(void)
{
    if (PyType_Ready(&RouteType) < 0 || PyType_Ready(&InboxType) < 0
        || PyType_Ready(&TraceRingType) < 0
        || PyType_Ready(&SegmentsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Route", (PyObject *)&RouteType) < 0
        || PyModule_AddObjectRef(m, "Inbox", (PyObject *)&InboxType) < 0
        || PyModule_AddObjectRef(m, "TraceRing", (PyObject *)&TraceRingType) < 0
        || PyModule_AddObjectRef(m, "Segments", (PyObject *)&SegmentsType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
