/* Python binding of the native core: `Machines`, N emulators stepped by one call.
 *
 * Every argument is checked here, before the emulator sees it, and raises ValueError or
 * TypeError with a one-line reason. Steps run without the GIL, split over native threads. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "nes.h"

typedef struct {
    PyObject_HEAD
    nes_cart *cart;
    nes *m;
    Py_ssize_t n;
    Py_ssize_t exports;
} Machines;

static void Machines_dealloc(Machines *self) {
    free(self->m);
    free(self->cart);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Machines_init(Machines *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"rom", "n", NULL};
    Py_buffer rom;
    Py_ssize_t n;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*n", kwlist, &rom, &n)) return -1;
    if (self->m) {
        PyBuffer_Release(&rom);
        PyErr_SetString(PyExc_RuntimeError, "Machines is already initialised");
        return -1;
    }
    if (n < 1 || n > 4096) {
        PyBuffer_Release(&rom);
        PyErr_Format(PyExc_ValueError, "n must be between 1 and 4096, got %zd", n);
        return -1;
    }
    self->cart = calloc(1, sizeof(nes_cart));
    self->m = calloc((size_t)n, sizeof(nes));
    if (!self->cart || !self->m) {
        PyBuffer_Release(&rom);
        PyErr_NoMemory();
        return -1;
    }
    const char *err = nes_cart_load(self->cart, rom.buf, (size_t)rom.len);
    PyBuffer_Release(&rom);
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        return -1;
    }
    self->n = n;
    for (Py_ssize_t i = 0; i < n; i++) nes_power_on(&self->m[i], self->cart);
    return 0;
}

static int check_ready(Machines *self) {
    if (!self->m || !self->n) {
        PyErr_SetString(PyExc_RuntimeError, "Machines was not initialised");
        return -1;
    }
    return 0;
}

static int check_index(Machines *self, Py_ssize_t i) {
    if (check_ready(self)) return -1;
    if (i < 0 || i >= self->n) {
        PyErr_Format(PyExc_IndexError, "machine index %zd out of range 0..%zd", i, self->n - 1);
        return -1;
    }
    return 0;
}

/* A C-contiguous uint8 buffer of exactly `need` bytes (writable for outputs): numpy uint8
 * arrays are. `what` says what it holds, for the message. */
static int get_bytes(PyObject *obj, Py_buffer *view, Py_ssize_t need, const char *name,
                     const char *what, int writable) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be a %sC-contiguous uint8 array", name,
                     writable ? "writable " : "");
        return -1;
    }
    if (view->itemsize != 1 || (view->format && strcmp(view->format, "B") != 0)) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "%s must have dtype uint8%s", name, what);
        return -1;
    }
    if (view->len != need) {
        Py_ssize_t got = view->len;
        PyBuffer_Release(view);
        if (writable)
            PyErr_Format(PyExc_ValueError, "%s must hold %zd bytes, got %zd", name, need, got);
        else
            PyErr_Format(PyExc_ValueError, "%s must have %zd entries (one per machine), got %zd",
                         name, need, got);
        return -1;
    }
    return 0;
}

#define get_out(obj, view, need, name) get_bytes(obj, view, need, name, "", 1)
#define get_bytes_in(obj, view, need, name) \
    get_bytes(obj, view, need, name, " (button bytes 0..255)", 0)

typedef struct {
    nes *m;
    Py_ssize_t lo, hi;
    const uint8_t *buttons, *first;
    uint8_t *gray, *gray_prev;
    int frames, draw_all;
} job;

static void *run_job(void *arg) {
    job *j = arg;
    for (Py_ssize_t i = j->lo; i < j->hi; i++) {
        nes *m = &j->m[i];
        for (int k = 1; k <= j->frames; k++) {
            uint8_t b = (k == 1 && j->first) ? j->first[i] : j->buttons[i];
            int last = k == j->frames, before = k == j->frames - 1;
            int draw = j->draw_all || (last && j->gray) || (before && j->gray_prev);
            nes_step(m, b, draw);
            if (before && j->gray_prev) nes_screen_gray(m, j->gray_prev + i * NES_SCREEN_SIZE);
            if (last && j->gray) nes_screen_gray(m, j->gray + i * NES_SCREEN_SIZE);
        }
    }
    return NULL;
}

static PyObject *Machines_step(Machines *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"buttons", "frames", "first", "gray", "gray_prev", "threads",
                             "draw_all", NULL};
    PyObject *buttons_obj, *first_obj = Py_None, *gray_obj = Py_None, *prev_obj = Py_None;
    int frames = 1, threads = 1, draw_all = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|iOOOip", kwlist, &buttons_obj, &frames,
                                     &first_obj, &gray_obj, &prev_obj, &threads, &draw_all))
        return NULL;
    if (check_ready(self)) return NULL;
    if (frames < 1 || frames > 10000) {
        PyErr_Format(PyExc_ValueError, "frames must be between 1 and 10000, got %d", frames);
        return NULL;
    }
    if (threads < 1 || threads > 256) {
        PyErr_Format(PyExc_ValueError, "threads must be between 1 and 256, got %d", threads);
        return NULL;
    }
    Py_buffer b = {0}, f = {0}, g = {0}, gp = {0};
    int have_f = first_obj != Py_None, have_g = gray_obj != Py_None, have_gp = prev_obj != Py_None;
    if (get_bytes_in(buttons_obj, &b, self->n, "buttons")) return NULL;
    if (have_f && get_bytes_in(first_obj, &f, self->n, "first")) goto fail;
    if (have_g && get_out(gray_obj, &g, self->n * NES_SCREEN_SIZE, "gray")) {
        have_g = 0;
        goto fail;
    }
    if (have_gp && get_out(prev_obj, &gp, self->n * NES_SCREEN_SIZE, "gray_prev")) {
        have_gp = 0;
        goto fail;
    }
    if (have_g && have_gp && g.buf == gp.buf) {
        PyErr_SetString(PyExc_ValueError, "gray and gray_prev must be different arrays");
        goto fail;
    }
    if (threads > self->n) threads = (int)self->n;
    job jobs[256];
    for (int t = 0; t < threads; t++) {
        jobs[t] = (job){self->m, self->n * t / threads, self->n * (t + 1) / threads, b.buf,
                        have_f ? f.buf : NULL, have_g ? g.buf : NULL, have_gp ? gp.buf : NULL,
                        frames, draw_all};
    }
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_t tids[256];
    int started = 0;
    for (int t = 1; t < threads; t++) {
        if (pthread_create(&tids[t], NULL, run_job, &jobs[t]) != 0) {
            /* no thread: run this share here, after our own */
            failed = 1;
            break;
        }
        started = t;
    }
    run_job(&jobs[0]);
    for (int t = 1; t <= started; t++) pthread_join(tids[t], NULL);
    for (int t = started + 1; t < threads; t++) run_job(&jobs[t]);
    Py_END_ALLOW_THREADS
    (void)failed;
    PyBuffer_Release(&b);
    if (have_f) PyBuffer_Release(&f);
    if (have_g) PyBuffer_Release(&g);
    if (have_gp) PyBuffer_Release(&gp);
    /* the total of unknown opcodes run: a caller that sees it grow looks at status() */
    unsigned long long faults = 0;
    for (Py_ssize_t i = 0; i < self->n; i++) faults += self->m[i].faults;
    return PyLong_FromUnsignedLongLong(faults);
fail:
    PyBuffer_Release(&b);
    if (have_f && f.obj) PyBuffer_Release(&f);
    if (have_g && g.obj) PyBuffer_Release(&g);
    if (have_gp && gp.obj) PyBuffer_Release(&gp);
    return NULL;
}

static PyObject *Machines_step_one(Machines *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"index", "button", "draw", NULL};
    Py_ssize_t i;
    int button, draw = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ni|p", kwlist, &i, &button, &draw))
        return NULL;
    if (check_index(self, i)) return NULL;
    if (button < 0 || button > 255) {
        PyErr_Format(PyExc_ValueError, "button must be a byte 0..255, got %d", button);
        return NULL;
    }
    nes *m = &self->m[i];
    Py_BEGIN_ALLOW_THREADS
    nes_step(m, (uint8_t)button, draw);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *Machines_screen(Machines *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"index", "out", "kind", NULL};
    Py_ssize_t i;
    PyObject *out;
    const char *kind = "gray";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nO|s", kwlist, &i, &out, &kind)) return NULL;
    if (check_index(self, i)) return NULL;
    int rgb = strcmp(kind, "rgb") == 0, index = strcmp(kind, "index") == 0;
    if (!rgb && !index && strcmp(kind, "gray") != 0) {
        PyErr_Format(PyExc_ValueError, "kind must be 'gray', 'rgb' or 'index', got '%s'", kind);
        return NULL;
    }
    Py_buffer view;
    if (get_out(out, &view, NES_SCREEN_SIZE * (rgb ? 3 : 1), "out")) return NULL;
    if (rgb) nes_screen_rgb(&self->m[i], view.buf);
    else if (index) memcpy(view.buf, self->m[i].screen, NES_SCREEN_SIZE);
    else nes_screen_gray(&self->m[i], view.buf);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static PyObject *Machines_dump(Machines *self, PyObject *arg) {
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (check_index(self, i)) return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)nes_snapshot_size());
    if (!out) return NULL;
    nes_snapshot_save(&self->m[i], (uint8_t *)PyBytes_AS_STRING(out));
    return out;
}

static PyObject *Machines_load(Machines *self, PyObject *args) {
    Py_ssize_t i;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "ny*", &i, &data)) return NULL;
    if (check_index(self, i)) {
        PyBuffer_Release(&data);
        return NULL;
    }
    const char *err = nes_snapshot_load(&self->m[i], data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Machines_power_on(Machines *self, PyObject *arg) {
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (check_index(self, i)) return NULL;
    nes_power_on(&self->m[i], self->cart);
    Py_RETURN_NONE;
}

static PyObject *Machines_reset(Machines *self, PyObject *arg) {
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (check_index(self, i)) return NULL;
    nes_reset(&self->m[i]);
    Py_RETURN_NONE;
}

static PyObject *Machines_status(Machines *self, PyObject *arg) {
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (check_index(self, i)) return NULL;
    nes *m = &self->m[i];
    return Py_BuildValue("{s:K,s:I,s:H,s:B,s:H,s:K}", "steps", (unsigned long long)m->steps,
                         "faults", m->faults, "fault_pc", m->fault_pc, "fault_op", m->fault_op,
                         "pc", m->pc, "cycles", (unsigned long long)m->done);
}

static PyObject *Machines_len(Machines *self, void *closure) {
    (void)closure;
    return PyLong_FromSsize_t(self->n);
}

static PyObject *Machines_snapshot_size(PyObject *cls, PyObject *noargs) {
    (void)cls;
    (void)noargs;
    return PyLong_FromSize_t(nes_snapshot_size());
}

/* The RAM of all machines as one (n, 2048) uint8 buffer, strided over the machine structs:
 * numpy views it without copying, and writes to it poke the machines' RAM. */
static int Machines_getbuffer(Machines *self, Py_buffer *view, int flags) {
    if (check_ready(self)) return -1;
    if ((flags & PyBUF_STRIDES) != PyBUF_STRIDES) {
        PyErr_SetString(PyExc_BufferError, "the RAM buffer is strided: request strides");
        return -1;
    }
    Py_ssize_t *shape = PyMem_Malloc(4 * sizeof(Py_ssize_t));
    if (!shape) {
        PyErr_NoMemory();
        return -1;
    }
    shape[0] = self->n;
    shape[1] = NES_RAM_SIZE;
    shape[2] = (Py_ssize_t)sizeof(nes);
    shape[3] = 1;
    view->buf = self->m[0].ram;
    view->obj = (PyObject *)self;
    Py_INCREF(self);
    view->len = self->n * NES_RAM_SIZE;
    view->readonly = 0;
    view->itemsize = 1;
    view->format = (flags & PyBUF_FORMAT) ? "B" : NULL;
    view->ndim = 2;
    view->shape = shape;
    view->strides = shape + 2;
    view->suboffsets = NULL;
    view->internal = shape;
    self->exports++;
    return 0;
}

static void Machines_releasebuffer(Machines *self, Py_buffer *view) {
    PyMem_Free(view->internal);
    self->exports--;
}

static PyBufferProcs Machines_as_buffer = {
    (getbufferproc)Machines_getbuffer,
    (releasebufferproc)Machines_releasebuffer,
};

static PyMethodDef Machines_methods[] = {
    {"step", (PyCFunction)(void (*)(void))Machines_step, METH_VARARGS | METH_KEYWORDS,
     "step(buttons, frames=1, first=None, gray=None, gray_prev=None, threads=1, draw_all=False)\n"
     "-> total unknown opcodes run by all machines so far.\n"
     "Step every machine `frames` frames with its button byte (`first` for the first frame);\n"
     "write the gray screens of the last frame to `gray` and of the one before to `gray_prev`."},
    {"step_one", (PyCFunction)(void (*)(void))Machines_step_one, METH_VARARGS | METH_KEYWORDS,
     "step_one(index, button, draw=True): one frame of one machine."},
    {"screen", (PyCFunction)(void (*)(void))Machines_screen, METH_VARARGS | METH_KEYWORDS,
     "screen(index, out, kind='gray'|'rgb'|'index'): copy the last drawn screen."},
    {"dump", (PyCFunction)Machines_dump, METH_O, "dump(index) -> bytes: a snapshot."},
    {"load", (PyCFunction)Machines_load, METH_VARARGS, "load(index, snapshot): restore one."},
    {"power_on", (PyCFunction)Machines_power_on, METH_O, "power_on(index)"},
    {"reset", (PyCFunction)Machines_reset, METH_O, "reset(index): CPU and PPU only."},
    {"status", (PyCFunction)Machines_status, METH_O, "status(index) -> dict"},
    {"snapshot_size", (PyCFunction)Machines_snapshot_size, METH_NOARGS | METH_CLASS,
     "Bytes in one snapshot."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Machines_getset[] = {
    {"n", (getter)Machines_len, NULL, "number of machines", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MachinesType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mario_rl.envs.nes._core.Machines",
    .tp_basicsize = sizeof(Machines),
    .tp_dealloc = (destructor)Machines_dealloc,
    .tp_as_buffer = &Machines_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Machines(rom: bytes, n: int): n Super Mario Bros machines at power-on.",
    .tp_methods = Machines_methods,
    .tp_getset = Machines_getset,
    .tp_init = (initproc)Machines_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef core_module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_core",
    .m_doc = "The native Super Mario Bros emulator core.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__core(void) {
    nes_init();
    if (PyType_Ready(&MachinesType) < 0) return NULL;
    PyObject *mod = PyModule_Create(&core_module);
    if (!mod) return NULL;
    Py_INCREF(&MachinesType);
    if (PyModule_AddObject(mod, "Machines", (PyObject *)&MachinesType) < 0) {
        Py_DECREF(&MachinesType);
        Py_DECREF(mod);
        return NULL;
    }
    PyModule_AddIntConstant(mod, "SNAPSHOT_VERSION", 1);
    PyModule_AddIntConstant(mod, "CYCLES_PER_STEP", NES_CYCLES_PER_STEP);
    return mod;
}
