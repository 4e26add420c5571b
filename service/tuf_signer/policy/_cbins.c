/*
 * The native path-to-bin check of a succinct hash bin (TAP 15, PEP 458): the
 * fast path of tuf_signer.policy._bins.check_bin_payload, whose Python loop
 * stays the reference.
 *
 * first_outside(paths: dict, low: int, high: int) -> int answers the index,
 * in the dict's order, of the first key whose SHA-256 over its UTF-8 bytes
 * starts with four bytes that, read big-endian, are below low or above high;
 * -1 when every key is inside [low, high]. A bin of bit length b is exactly
 * such a range of 32-bit prefixes (python-tuf's SuccinctRoles takes the first
 * b bits of the same hash).
 *
 * Errors: TypeError when paths is not a dict or a key is not a str,
 * ValueError when low or high is not in 0..2**32-1, UnicodeEncodeError for a
 * key that has no UTF-8 form (a lone surrogate), as str.encode("utf-8") would
 * raise. SHA-256 is OpenSSL 3's EVP (the libcrypto Python's hashlib uses),
 * fetched once at import.
 *
 * Why native (issue 16): a PEP 458 bin lists ~139 paths, and the Python loop
 * spends ~0.5-1 us per path in the interpreter and in hashlib's object
 * around a hash of ~100 bytes; here each path costs the hash alone.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

#include <openssl/evp.h>

/* Fetched once: EVP_sha256() would be looked up again on every init, ~3x the
 * cost of hashing a 100-byte path. Never freed (the process's lifetime). */
static EVP_MD *sha256;

static int
read_u32(PyObject *value, const char *name, uint32_t *out)
{
    unsigned long long v;

    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", name);
        return -1;
    }
    v = PyLong_AsUnsignedLongLong(value);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be in 0..2**32-1", name);
        return -1;
    }
    if (v > UINT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s must be in 0..2**32-1", name);
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static PyObject *
first_outside(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *paths, *key, *value;
    uint32_t low, high, prefix;
    Py_ssize_t pos = 0, index = 0, size;
    const char *utf8;
    unsigned char digest[EVP_MAX_MD_SIZE];
    EVP_MD_CTX *ctx;
    long found = -1;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "first_outside(paths, low, high) takes 3 arguments");
        return NULL;
    }
    paths = args[0];
    if (!PyDict_Check(paths)) {
        PyErr_SetString(PyExc_TypeError, "paths must be a dict");
        return NULL;
    }
    if (read_u32(args[1], "low", &low) < 0 || read_u32(args[2], "high", &high) < 0) {
        return NULL;
    }
    ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        return PyErr_NoMemory();
    }
    while (PyDict_Next(paths, &pos, &key, &value)) {
        if (!PyUnicode_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "a target path is not a str");
            goto error;
        }
        utf8 = PyUnicode_AsUTF8AndSize(key, &size);
        if (utf8 == NULL) {
            goto error; /* UnicodeEncodeError, as str.encode("utf-8") */
        }
        if (EVP_DigestInit_ex2(ctx, sha256, NULL) != 1
            || EVP_DigestUpdate(ctx, utf8, (size_t)size) != 1
            || EVP_DigestFinal_ex(ctx, digest, NULL) != 1) {
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL SHA-256 failed");
            goto error;
        }
        prefix = ((uint32_t)digest[0] << 24) | ((uint32_t)digest[1] << 16)
                 | ((uint32_t)digest[2] << 8) | (uint32_t)digest[3];
        if (prefix < low || prefix > high) {
            found = (long)index;
            break;
        }
        index++;
    }
    EVP_MD_CTX_free(ctx);
    return PyLong_FromLong(found);

error:
    EVP_MD_CTX_free(ctx);
    return NULL;
}

static PyMethodDef methods[] = {
    {"first_outside", (PyCFunction)(void (*)(void))first_outside, METH_FASTCALL,
     "first_outside(paths: dict[str, object], low: int, high: int) -> int\n\n"
     "Index of the first key whose SHA-256 prefix (4 bytes, big-endian) is outside\n"
     "[low, high], or -1: see the module source."},
    {NULL, NULL, 0, NULL},
};

static int
exec_module(PyObject *Py_UNUSED(module))
{
    if (sha256 == NULL) {
        sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
        if (sha256 == NULL) {
            PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA-256");
            return -1;
        }
    }
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, (void *)exec_module},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tuf_signer.policy._cbins",
    .m_doc = "Native path-to-bin check of succinct hash bins (see _bins.py).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__cbins(void)
{
    return PyModuleDef_Init(&module_def);
}
