/* ccid._fastcall: the chain step of _fast.c behind CPython's vectorcall convention.
 *
 * Built into the same shared object as ccid._fast_cffi (the cffi build includes this file
 * in its preamble) and loaded from it under a second module name by ccid/_fast.py. Why:
 * a cffi call costs ~0.2 us before any C runs, as much as a whole step of a chained
 * exchange; a METH_FASTCALL function taking the chain, bSeq and the reply costs a third of
 * that and returns the next frame as bytes itself. The per-frame reply check goes the same
 * way (reply_code).
 *
 * The chain state is the cffi-allocated ccid_chain. It reaches this module once, as an
 * address inside a capsule (wrap), together with an owner object that keeps the state and
 * every buffer it points to alive for as long as the capsule lives.
 */
#include <Python.h>

#define CHAIN_CAPSULE "ccid._fastcall.chain"

static void chain_capsule_free(PyObject *capsule)
{
    PyObject *owner = (PyObject *)PyCapsule_GetContext(capsule);

    Py_XDECREF(owner);
}

/* wrap(address, owner) -> capsule: the ccid_chain at ``address``, kept alive by ``owner``. */
static PyObject *fastcall_wrap(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    void *address;
    PyObject *capsule;

    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "wrap(address, owner)");
        return NULL;
    }
    address = PyLong_AsVoidPtr(args[0]);
    if (address == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "null chain address");
        return NULL;
    }
    capsule = PyCapsule_New(address, CHAIN_CAPSULE, chain_capsule_free);
    if (capsule == NULL)
        return NULL;
    Py_INCREF(args[1]);
    if (PyCapsule_SetContext(capsule, args[1]) != 0) {
        Py_DECREF(args[1]);
        Py_DECREF(capsule);
        return NULL;
    }
    return capsule;
}

/* step(capsule, seq, reply) -> next frame (bytes), b"" when complete, None when the reply
 * is not the expected one. Same errors as the twin: ValueError for a bSeq that is not an
 * int 0..255, TypeError for a reply that is not bytes, bytearray or memoryview. */
static PyObject *fastcall_step(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    ccid_chain *st;
    long seq = -1;
    Py_buffer view;
    PyObject *reply;
    long long n;

    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "step(chain, seq, reply)");
        return NULL;
    }
    st = (ccid_chain *)PyCapsule_GetPointer(args[0], CHAIN_CAPSULE);
    if (st == NULL)
        return NULL;
    if (PyLong_CheckExact(args[1])) {
        seq = PyLong_AsLong(args[1]);
        if (seq == -1 && PyErr_Occurred())
            PyErr_Clear(); /* past a C long: out of range like any other */
    }
    if (seq < 0 || seq > 0xFF) {
        PyErr_Format(PyExc_ValueError, "bSeq must be 0..255, got %R", args[1]);
        return NULL;
    }
    reply = args[2];
    if (PyBytes_CheckExact(reply)) {
        n = ccid_chain_step(st, (int)seq, (const uint8_t *)PyBytes_AS_STRING(reply),
                            (size_t)PyBytes_GET_SIZE(reply));
    } else if (PyBytes_Check(reply) || PyByteArray_Check(reply) || PyMemoryView_Check(reply)) {
        if (PyObject_GetBuffer(reply, &view, PyBUF_SIMPLE) == 0) {
            n = ccid_chain_step(st, (int)seq, (const uint8_t *)view.buf, (size_t)view.len);
            PyBuffer_Release(&view);
        } else {
            /* A strided memoryview has no simple buffer: copy it, as the twin's bytes()
             * does, instead of raising BufferError where the twin does not. */
            PyObject *copy;

            PyErr_Clear();
            copy = PyBytes_FromObject(reply);
            if (copy == NULL)
                return NULL;
            n = ccid_chain_step(st, (int)seq, (const uint8_t *)PyBytes_AS_STRING(copy),
                                (size_t)PyBytes_GET_SIZE(copy));
            Py_DECREF(copy);
        }
    } else {
        PyErr_Format(PyExc_TypeError, "a reply frame must be bytes-like, not %s",
                     Py_TYPE(reply)->tp_name);
        return NULL;
    }
    if (n > 0)
        return PyBytes_FromStringAndSize((const char *)st->out, (Py_ssize_t)n);
    if (n == CCID_CHAIN_DONE)
        return PyBytes_FromStringAndSize(NULL, 0);
    if (n == CCID_CHAIN_OTHER)
        Py_RETURN_NONE;
    PyErr_Format(PyExc_ValueError, "chain step refused (code %lld)", n);
    return NULL;
}

/* reply_code(buf, n, expect_type, slot, seq, max_length) -> ccid_reply_header of the first
 * n bytes of ``buf`` (bytes). The engine and the reader call it once per received frame. */
static PyObject *fastcall_reply_code(PyObject *module, PyObject *const *args,
                                     Py_ssize_t nargs)
{
    long long v[4];
    Py_ssize_t n;
    int i;

    (void)module;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "reply_code(buf, n, expect_type, slot, seq, max_length)");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "reply_code takes bytes, not %s",
                     Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    n = PyLong_AsSsize_t(args[1]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0 || n > PyBytes_GET_SIZE(args[0])) {
        PyErr_SetString(PyExc_ValueError, "n must be 0..len(buf)");
        return NULL;
    }
    for (i = 0; i < 4; i++) {
        v[i] = PyLong_AsLongLong(args[2 + i]);
        if (v[i] == -1 && PyErr_Occurred())
            return NULL; /* TypeError, or OverflowError past 64 bits (as through cffi) */
    }
    return PyLong_FromLongLong(ccid_reply_header((const uint8_t *)PyBytes_AS_STRING(args[0]),
                                                 (size_t)n, v[0], v[1], v[2], v[3]));
}

static PyMethodDef fastcall_methods[] = {
    {"reply_code", (PyCFunction)(void (*)(void))fastcall_reply_code, METH_FASTCALL,
     "reply_code(buf, n, expect_type, slot, seq, max_length): ccid_reply_header."},
    {"wrap", (PyCFunction)(void (*)(void))fastcall_wrap, METH_FASTCALL,
     "wrap(address, owner): the ccid_chain at address, kept alive by owner."},
    {"step", (PyCFunction)(void (*)(void))fastcall_step, METH_FASTCALL,
     "step(chain, seq, reply): next frame, b'' when complete, None: not expected."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fastcall_module = {
    PyModuleDef_HEAD_INIT, "ccid._fastcall",
    "The chain step of ccid/_fast.c behind CPython's vectorcall convention.", -1,
    fastcall_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastcall(void);

PyMODINIT_FUNC PyInit__fastcall(void)
{
    return PyModule_Create(&fastcall_module);
}
