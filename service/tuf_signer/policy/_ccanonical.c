/*
 * One pass over a payload that must be the canonical JSON of a TUF ``signed``
 * object (securesystemslib's encode_canonical, UTF-8): the native fast path of
 * tuf_signer.policy._canonical.parse_canonical, which stays the reference.
 *
 * scan(payload: bytes, max_depth: int, max_int_digits: int) -> int answers
 *
 *   ACCEPT       the bytes are exactly the canonical form of a JSON object:
 *                no whitespace; object keys strictly increasing by code point
 *                (UTF-8 byte order of the decoded key, hence no duplicates);
 *                integers as -?(0|[1-9][0-9]*), never -0, at most
 *                max_int_digits digits (0: no limit, as sys.get_int_max_str_digits);
 *                strings escape only '"' and '\\' and hold every other
 *                character raw; true, false, null; strict UTF-8 (no overlong
 *                forms, no surrogates, nothing above U+10FFFF); nesting at most
 *                max_depth with the top level = 1; every key ASCII and no two
 *                keys of one object equal once ASCII letters are lower-cased
 *                (the reference's one-reading rule for ASCII keys).
 *                orjson.loads reads it as the C json decoder does.
 *   ACCEPT_JSON  as ACCEPT, but decode it with the json module: a string holds a
 *                raw control character (orjson refuses those), an integer has
 *                19 digits or more (orjson turns those beyond 64 bits into
 *                floats), or it nests deeper than orjson's limit.
 *   REFUSE       the reference refuses these bytes too (its reason is the one
 *                shown: the caller runs it).
 *   UNDECIDED    an object key is not ASCII: the reference folds those with
 *                NFKC and full case folding, left to Python.
 *
 * scan_targets(payload, max_depth, max_int_digits) -> (verdict, start, end, paths)
 * is scan, and also, on ACCEPT when the top level has "_type":"targets" and a
 * "targets" object: the byte span [start, end) of that object's value and a
 * dict of its keys (the target paths, in payload order) to None. Otherwise
 * (-1, -1, None). The policy reads only the paths (issue 16): the caller
 * parses the rest with the span replaced by {} and skips building each
 * target's hashes and length.
 *
 * Hostile input: linear time apart from a sort of one object's keys when one
 * of them has an upper-case letter (n log n); no recursion; memory bounded by
 * the payload (one frame per open container, one span per key of the open
 * objects). The GIL is released while a large payload is scanned: a bytes
 * object is immutable and the caller's reference keeps it alive.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { ACCEPT = 0, ACCEPT_JSON = 1, REFUSE = 2, UNDECIDED = 3, NO_MEMORY = -1 };

/* orjson refuses nesting beyond 1024; stay well inside it. */
#define ORJSON_DEPTH 512
/* Integers of up to 18 digits fit in 64 bits, where orjson keeps them ints. */
#define ORJSON_DIGITS 18
/* Below this size the scan is shorter than dropping and taking the GIL. */
#define RELEASE_GIL_AT 4096

#define LOCAL_FRAMES 64
#define LOCAL_SPANS 512

typedef struct {
    const unsigned char *start; /* a key's bytes between the quotes, escapes as written */
    Py_ssize_t len;
} Span;

typedef struct {
    Span prev;              /* the previous key of this object (prev.start NULL: none yet) */
    Py_ssize_t span_base;   /* index of this object's first key span */
    unsigned char is_object;
    unsigned char has_upper; /* a key of this object has an ASCII upper-case letter */
} Frame;

typedef struct {
    Span *spans;
    Py_ssize_t len, cap;
    Span local[LOCAL_SPANS];
} SpanStack;

/* What scan_targets extracts on the way (see the header comment). */
typedef struct {
    int type_is_targets;   /* the top level's "_type" is the string "targets" */
    int open;              /* the scan is inside the top-level "targets" object */
    Py_ssize_t start, end; /* its span, -1 until found */
    SpanStack paths;       /* its keys */
} Targets;

/* Byte classes inside a string: 0 plain, 1 quote, 2 backslash, 3 control, 4 non-ASCII. */
static unsigned char string_class[256];

static void
init_tables(void)
{
    for (int c = 0; c < 256; c++) {
        string_class[c] = c < 0x20 ? 3 : c >= 0x80 ? 4 : 0;
    }
    string_class['"'] = 1;
    string_class['\\'] = 2;
}

/* The next byte of a key as decoded: an escape stands for its second byte. */
static inline unsigned char
decoded_at(const unsigned char *s, Py_ssize_t *i)
{
    unsigned char c = s[*i];
    if (c == '\\') {
        c = s[*i + 1];
        *i += 2;
    }
    else {
        *i += 1;
    }
    return c;
}

/* Code point order of two decoded keys (UTF-8 byte order is code point order). */
static int
compare_keys(const Span *a, const Span *b, int fold)
{
    Py_ssize_t i = 0, j = 0;
    while (i < a->len && j < b->len) {
        unsigned char x = decoded_at(a->start, &i);
        unsigned char y = decoded_at(b->start, &j);
        if (fold) {
            x = (x >= 'A' && x <= 'Z') ? (unsigned char)(x + 32) : x;
            y = (y >= 'A' && y <= 'Z') ? (unsigned char)(y + 32) : y;
        }
        if (x != y) {
            return x < y ? -1 : 1;
        }
    }
    if (i < a->len) {
        return 1;
    }
    return j < b->len ? -1 : 0;
}

static int
compare_folded(const void *a, const void *b)
{
    return compare_keys((const Span *)a, (const Span *)b, 1);
}

static int
push_span(SpanStack *st, const unsigned char *start, Py_ssize_t len)
{
    if (st->len == st->cap) {
        Py_ssize_t cap = st->cap * 2;
        Span *grown;
        if (st->spans == st->local) {
            grown = PyMem_RawMalloc((size_t)cap * sizeof(Span));
            if (grown != NULL) {
                memcpy(grown, st->local, (size_t)st->len * sizeof(Span));
            }
        }
        else {
            grown = PyMem_RawRealloc(st->spans, (size_t)cap * sizeof(Span));
        }
        if (grown == NULL) {
            return -1;
        }
        st->spans = grown;
        st->cap = cap;
    }
    st->spans[st->len].start = start;
    st->spans[st->len].len = len;
    st->len++;
    return 0;
}

/*
 * Eight bytes at a time (SWAR): whether any byte needs a look of its own, that is
 * a quote, a backslash, a control character or a non-ASCII byte; and, for keys,
 * whether any byte is an ASCII upper-case letter. Each test is exact as a yes/no
 * ("Bit Twiddling Hacks": haszero, hasless, hasbetween for bytes below 0x80).
 */
#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

static inline uint64_t
load8(const unsigned char *s)
{
    uint64_t w;
    memcpy(&w, s, sizeof w);
    return w;
}

static inline uint64_t
needs_look(uint64_t w)
{
    uint64_t quote = w ^ (ONES * '"');
    uint64_t backslash = w ^ (ONES * '\\');
    uint64_t special = ((quote - ONES) & ~quote) | ((backslash - ONES) & ~backslash) |
                       ((w - ONES * 0x20) & ~w) | w;
    return special & HIGHS;
}

/*
 * Little-endian: the lowest flag of needs_look marks the first byte that needs
 * a look (a borrow only flags bytes above a true hit), so the bytes before it
 * are plain.
 */
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define PLAIN_PREFIX(flags) (__builtin_ctzll(flags) >> 3)
#else
#define PLAIN_PREFIX(flags) 0
#endif

/* For eight ASCII bytes (needs_look was false): whether one is in 'A'..'Z'. */
static inline int
has_upper8(uint64_t w)
{
    return (((ONES * (127 + 'Z' + 1) - w) & ~w & (w + ONES * (127 - 'A' + 1))) & HIGHS) != 0;
}

/*
 * A string from just after its opening quote. Returns the index just after
 * the closing quote, or -1 (not canonical, not UTF-8, unterminated). Sets
 * *flags: bit 0 a raw control character, bit 1 a non-ASCII character, bit 2
 * an ASCII upper-case letter.
 */
static Py_ssize_t
scan_string(const unsigned char *s, Py_ssize_t n, Py_ssize_t p, int *flags)
{
    for (;;) {
        while (n - p >= 8) {
            uint64_t w = load8(s + p);
            uint64_t look = needs_look(w);
            if (look) {
                int plain = PLAIN_PREFIX(look);
                if (plain > 0) {
                    /* Keep the plain bytes only: zero is not upper-case. */
                    if (has_upper8(w & ((UINT64_C(1) << (8 * plain)) - 1))) {
                        *flags |= 4;
                    }
                    p += plain;
                }
                break;
            }
            if (has_upper8(w)) {
                *flags |= 4;
            }
            p += 8;
        }
        if (p >= n) {
            return -1;
        }
        unsigned char c = s[p];
        switch (string_class[c]) {
        case 0:
            if (c >= 'A' && c <= 'Z') {
                *flags |= 4;
            }
            p++;
            continue;
        case 1:
            return p + 1;
        case 2:
            /* encode_canonical escapes only the quote and the backslash */
            if (p + 1 >= n || (s[p + 1] != '"' && s[p + 1] != '\\')) {
                return -1;
            }
            p += 2;
            continue;
        case 3:
            *flags |= 1;
            p++;
            continue;
        default:
            break;
        }
        /* Strict UTF-8 (Unicode table 3-7, RFC 3629), as Python's decoder. */
        *flags |= 2;
        Py_ssize_t need;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        }
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) {
                lo = 0xA0; /* overlong */
            }
            else if (c == 0xED) {
                hi = 0x9F; /* surrogates */
            }
        }
        else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) {
                lo = 0x90; /* overlong */
            }
            else if (c == 0xF4) {
                hi = 0x8F; /* above U+10FFFF */
            }
        }
        else {
            return -1;
        }
        if (n - p - 1 < need) {
            return -1;
        }
        if (s[p + 1] < lo || s[p + 1] > hi) {
            return -1;
        }
        for (Py_ssize_t k = 2; k <= need; k++) {
            if (s[p + k] < 0x80 || s[p + k] > 0xBF) {
                return -1;
            }
        }
        p += need + 1;
    }
}

/* An integer at p: its end, or -1. Sets *digits. */
static Py_ssize_t
scan_int(const unsigned char *s, Py_ssize_t n, Py_ssize_t p, Py_ssize_t *digits)
{
    Py_ssize_t start;
    int negative = 0;
    if (s[p] == '-') {
        negative = 1;
        p++;
    }
    start = p;
    if (p >= n || s[p] < '0' || s[p] > '9') {
        return -1;
    }
    if (s[p] == '0') {
        p++;
        if (negative) {
            return -1; /* -0: the canonical form of 0 is 0 */
        }
    }
    else {
        while (p < n && s[p] >= '0' && s[p] <= '9') {
            p++;
        }
    }
    *digits = p - start;
    return p; /* a following '.', 'e' or digit is refused by the caller */
}

static int
scan_bytes(const unsigned char *s, Py_ssize_t n, Py_ssize_t max_depth,
           Py_ssize_t max_int_digits, Frame *frames, SpanStack *keys, Targets *tg)
{
    Py_ssize_t p = 0, depth = 0;
    int json_only = 0;
    Frame *top = NULL;

    if (n < 2 || s[0] != '{') {
        return REFUSE; /* the top level must be an object */
    }

value:
    if (p >= n) {
        return REFUSE;
    }
    if (tg != NULL && tg->start == -2) { /* the value of the top-level "targets" */
        if (s[p] == '{') {
            tg->start = p;
            tg->open = 1;
        }
        else {
            tg->start = -1;
        }
    }
    switch (s[p]) {
    case '{':
    case '[':
        if (depth >= max_depth) {
            return REFUSE;
        }
        if (depth >= ORJSON_DEPTH) {
            json_only = 1;
        }
        top = &frames[depth++];
        top->is_object = s[p] == '{';
        top->has_upper = 0;
        top->prev.start = NULL;
        top->prev.len = 0;
        top->span_base = keys->len;
        p++;
        if (p < n && s[p] == (top->is_object ? '}' : ']')) {
            p++;
            depth--;
            top = depth ? &frames[depth - 1] : NULL;
            if (tg != NULL && tg->open && depth == 1) {
                tg->end = p;
                tg->open = 0;
            }
            goto after_value;
        }
        if (top->is_object) {
            goto key;
        }
        goto value;
    case '"': {
        int flags = 0;
        p = scan_string(s, n, p + 1, &flags);
        if (p < 0) {
            return REFUSE;
        }
        json_only |= flags & 1;
        goto after_value;
    }
    case 't':
        if (n - p < 4 || memcmp(s + p, "true", 4) != 0) {
            return REFUSE;
        }
        p += 4;
        goto after_value;
    case 'f':
        if (n - p < 5 || memcmp(s + p, "false", 5) != 0) {
            return REFUSE;
        }
        p += 5;
        goto after_value;
    case 'n':
        if (n - p < 4 || memcmp(s + p, "null", 4) != 0) {
            return REFUSE;
        }
        p += 4;
        goto after_value;
    default: {
        Py_ssize_t digits = 0;
        if (s[p] != '-' && (s[p] < '0' || s[p] > '9')) {
            return REFUSE;
        }
        p = scan_int(s, n, p, &digits);
        if (p < 0) {
            return REFUSE;
        }
        if (max_int_digits > 0 && digits > max_int_digits) {
            return REFUSE; /* int() refuses it: "integer literal too long" */
        }
        if (digits > ORJSON_DIGITS) {
            json_only = 1;
        }
        goto after_value;
    }
    }

key: {
    int flags = 0;
    Py_ssize_t start;
    Span span;
    if (p >= n || s[p] != '"') {
        return REFUSE;
    }
    start = p + 1;
    p = scan_string(s, n, start, &flags);
    if (p < 0) {
        return REFUSE;
    }
    if (flags & 2) {
        return UNDECIDED; /* non-ASCII key: NFKC and case folding are Python's */
    }
    json_only |= flags & 1;
    span.start = s + start;
    span.len = p - 1 - start;
    if (top->prev.start != NULL && compare_keys(&top->prev, &span, 0) >= 0) {
        return REFUSE; /* not sorted, or a duplicate */
    }
    top->prev = span;
    top->has_upper |= (flags & 4) != 0;
    if (push_span(keys, span.start, span.len) < 0) {
        return NO_MEMORY;
    }
    if (p >= n || s[p] != ':') {
        return REFUSE;
    }
    p++;
    if (tg != NULL) {
        if (depth == 1) {
            /* Keys are sorted and "_type" < "targets": the type is known first.
             * A string value starting with "targets" and its quote is exactly it. */
            if (span.len == 5 && memcmp(span.start, "_type", 5) == 0) {
                tg->type_is_targets = n - p >= 9 && memcmp(s + p, "\"targets\"", 9) == 0;
            }
            else if (span.len == 7 && memcmp(span.start, "targets", 7) == 0 &&
                     tg->type_is_targets) {
                tg->start = -2; /* the next value: an object, or not (-1) */
            }
        }
        else if (depth == 2 && tg->open) {
            if (push_span(&tg->paths, span.start, span.len) < 0) {
                return NO_MEMORY;
            }
        }
    }
    goto value;
}

after_value:
    if (depth == 0) {
        return p == n ? (json_only ? ACCEPT_JSON : ACCEPT) : REFUSE;
    }
    if (p >= n) {
        return REFUSE;
    }
    if (s[p] == ',') {
        p++;
        if (top->is_object) {
            goto key;
        }
        goto value;
    }
    if (s[p] != (top->is_object ? '}' : ']')) {
        return REFUSE;
    }
    p++;
    if (top->is_object) {
        Span *first = keys->spans + top->span_base;
        Py_ssize_t count = keys->len - top->span_base;
        if (top->has_upper && count > 1) {
            /* One reading: no two keys equal once ASCII letters are lower-cased. */
            qsort(first, (size_t)count, sizeof(Span), compare_folded);
            for (Py_ssize_t k = 1; k < count; k++) {
                if (compare_keys(&first[k - 1], &first[k], 1) == 0) {
                    return REFUSE;
                }
            }
        }
        keys->len = top->span_base;
    }
    depth--;
    top = depth ? &frames[depth - 1] : NULL;
    if (tg != NULL && tg->open && depth == 1) {
        tg->end = p;
        tg->open = 0;
    }
    goto after_value;
}

/*
 * The scan with the arguments checked; tg is NULL for scan. Returns a verdict,
 * or -2 with a Python exception set.
 */
static int
run_scan(PyObject *const *args, Py_ssize_t nargs, const char *name, Targets *tg)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "%s(payload, max_depth, max_int_digits)", name);
        return -2;
    }
    if (!PyBytes_CheckExact(args[0])) {
        PyErr_Format(PyExc_TypeError, "%s: payload must be bytes", name);
        return -2;
    }
    Py_ssize_t max_depth = PyLong_AsSsize_t(args[1]);
    if (max_depth == -1 && PyErr_Occurred()) {
        return -2;
    }
    Py_ssize_t max_int_digits = PyLong_AsSsize_t(args[2]);
    if (max_int_digits == -1 && PyErr_Occurred()) {
        return -2;
    }
    if (max_depth < 1 || max_int_digits < 0) {
        PyErr_Format(PyExc_ValueError, "%s: max_depth must be >= 1, max_int_digits >= 0",
                     name);
        return -2;
    }

    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    /* Each open container took a byte: that bounds the frames, whatever max_depth says. */
    Py_ssize_t frames_needed = n < max_depth ? n : max_depth;
    Frame local_frames[LOCAL_FRAMES];
    Frame *frames = local_frames;
    SpanStack keys;
    int verdict;

    keys.spans = keys.local;
    keys.len = 0;
    keys.cap = LOCAL_SPANS;
    if (frames_needed > LOCAL_FRAMES) {
        frames = PyMem_RawMalloc((size_t)frames_needed * sizeof(Frame));
        if (frames == NULL) {
            PyErr_NoMemory();
            return -2;
        }
    }
    if (n >= RELEASE_GIL_AT) {
        Py_BEGIN_ALLOW_THREADS
        verdict = scan_bytes(s, n, max_depth, max_int_digits, frames, &keys, tg);
        Py_END_ALLOW_THREADS
    }
    else {
        verdict = scan_bytes(s, n, max_depth, max_int_digits, frames, &keys, tg);
    }
    if (frames != local_frames) {
        PyMem_RawFree(frames);
    }
    if (keys.spans != keys.local) {
        PyMem_RawFree(keys.spans);
    }
    if (verdict == NO_MEMORY) {
        PyErr_NoMemory();
        return -2;
    }
    return verdict;
}

static PyObject *
scan(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    int verdict = run_scan(args, nargs, "scan", NULL);
    return verdict == -2 ? NULL : PyLong_FromLong(verdict);
}

/* A key of an accepted payload as str: ASCII (else UNDECIDED), escapes only \" and \\. */
static PyObject *
decode_key(const Span *key)
{
    Py_ssize_t escapes = 0;
    if (memchr(key->start, '\\', (size_t)key->len) != NULL) {
        for (Py_ssize_t i = 0; i < key->len; i++) {
            if (key->start[i] == '\\') {
                escapes++;
                i++;
            }
        }
    }
    PyObject *str = PyUnicode_New(key->len - escapes, 127);
    if (str == NULL) {
        return NULL;
    }
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(str);
    if (escapes == 0) {
        memcpy(out, key->start, (size_t)key->len);
        return str;
    }
    for (Py_ssize_t i = 0; i < key->len; i++) {
        if (key->start[i] == '\\') {
            i++;
        }
        *out++ = key->start[i];
    }
    return str;
}

static PyObject *
paths_dict(const SpanStack *paths)
{
    PyObject *dict = PyDict_New();
    if (dict == NULL) {
        return NULL;
    }
    for (Py_ssize_t k = 0; k < paths->len; k++) {
        PyObject *key = decode_key(&paths->spans[k]);
        if (key == NULL || PyDict_SetItem(dict, key, Py_None) < 0) {
            Py_XDECREF(key);
            Py_DECREF(dict);
            return NULL;
        }
        Py_DECREF(key);
    }
    return dict;
}

static PyObject *
scan_targets(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    Targets tg;
    PyObject *paths = NULL;
    tg.type_is_targets = 0;
    tg.open = 0;
    tg.start = -1;
    tg.end = -1;
    tg.paths.spans = tg.paths.local;
    tg.paths.len = 0;
    tg.paths.cap = LOCAL_SPANS;
    int verdict = run_scan(args, nargs, "scan_targets", &tg);
    if (verdict == ACCEPT && tg.start >= 0 && tg.end > tg.start) {
        paths = paths_dict(&tg.paths);
        if (paths == NULL) {
            verdict = -2;
        }
    }
    if (tg.paths.spans != tg.paths.local) {
        PyMem_RawFree(tg.paths.spans);
    }
    if (verdict == -2) {
        return NULL;
    }
    if (paths == NULL) {
        return Py_BuildValue("(innO)", verdict, (Py_ssize_t)-1, (Py_ssize_t)-1, Py_None);
    }
    return Py_BuildValue("(innN)", verdict, tg.start, tg.end, paths);
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(payload: bytes, max_depth: int, max_int_digits: int) -> int\n\n"
     "ACCEPT, ACCEPT_JSON, REFUSE or UNDECIDED: see the module source."},
    {"scan_targets", (PyCFunction)(void (*)(void))scan_targets, METH_FASTCALL,
     "scan_targets(payload: bytes, max_depth: int, max_int_digits: int)\n"
     "-> tuple[int, int, int, dict[str, None] | None]\n\n"
     "scan, plus the span and paths of targets metadata's \"targets\": see the module source."},
    {NULL, NULL, 0, NULL},
};

static int
exec_module(PyObject *module)
{
    if (PyModule_AddIntConstant(module, "ACCEPT", ACCEPT) < 0 ||
        PyModule_AddIntConstant(module, "ACCEPT_JSON", ACCEPT_JSON) < 0 ||
        PyModule_AddIntConstant(module, "REFUSE", REFUSE) < 0 ||
        PyModule_AddIntConstant(module, "UNDECIDED", UNDECIDED) < 0) {
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, (void *)exec_module},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tuf_signer.policy._ccanonical",
    .m_doc = "Native check that a payload is exactly canonical JSON (see _canonical.py).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__ccanonical(void)
{
    init_tables();
    return PyModuleDef_Init(&module_def);
}
