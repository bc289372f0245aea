/*
 * stream_expiry._native: the per-record path's common cases, compiled.
 *
 * Why: an ingested event cost ~25 us of Python CPU against the passthrough's ~3, and a
 * quarter of it was reading the event's fields and writing its stamp; a fired timer
 * spent a quarter building its states (docs/BENCHMARKS.md, round 53). Each function here
 * stands in for the common case of one Python function and leaves every other input to
 * it, so the rules live in one place (Python) and this file only repeats the fast path's
 * checks. Two forms:
 *   - event, stamp, tombstone, format_ts, replay_fields, key_category answer None for
 *     what they leave, and the Python code then reads or writes it itself;
 *   - state_packer, timer_packer, timer_firer, stamp_reader, stamp_scanner return a
 *     builtin bound to the Python function, which it calls for what it leaves (no
 *     Python frame between).
 * seen_keys is state/key_filter.py's test-and-set, the same bits as its Python one.
 * tests/unit/test_native.py compares each with its Python function on generated inputs:
 * where this answers, it answers exactly what the Python code does.
 *
 * Nothing here keeps state but the classes and callables bind() was given once.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <limits.h>
#include <string.h>

/* timeutil.MIN_TS_MS / MAX_TS_MS: years 1 to 9999. */
#define MIN_TS_MS (-62135596800000LL)
#define MAX_TS_MS (253402300799999LL)
#define MAX_ID_CHARS 512   /* model.MAX_ID_CHARS */
#define MAX_DATA_DEPTH 200 /* model.MAX_DATA_DEPTH */
#define RUN_OF_DIGITS 19   /* model._NINETEEN_DIGITS */

/* What bind() was given: model's classes and orjson.dumps. */
static PyTypeObject *identity_type = NULL;
static PyTypeObject *input_event_type = NULL;
static PyTypeObject *stamp_type = NULL;
static PyObject *dumps = NULL;
static PyObject *misspelt_default = NULL;   /* InputEvent's default ``misspelt`` */
static PyObject *early_default = NULL;      /* InputEvent's default ``early_ts_text`` */

/* Offsets of Identity's slots, read from its member descriptors by bind(). */
enum { ORG, BOT, ENV, CATEGORY, RECORD_ID, KEY, IDENTITY_SLOTS };
static const char *const slot_names[IDENTITY_SLOTS] = {
    "org", "bot", "env", "category", "record_id", "key"};
static Py_ssize_t slot_offset[IDENTITY_SLOTS];

/* Field names of the parsed event, interned once. */
static PyObject *s_category, *s_record_id, *s_org, *s_ts, *s_bot, *s_env, *s_op,
    *s_event_id, *s_data;
/* The optional fields' defaults (model.DEFAULT_BOT, "live", "create"). */
static PyObject *default_bot, *default_env, *default_op;

static int has_fields(PyTypeObject *type, PyObject *expected);
static int is_ascii_literal(PyObject *s, const char *lit);

#define SLOT(obj, i) (*(PyObject **)((char *)(obj) + slot_offset[i]))

/* ------------------------------------------------------------------------------------ */
/* A growing byte buffer for the JSON written below.                                     */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
    char small[512];
} Buf;

static void buf_init(Buf *b) {
    b->p = b->small;
    b->len = 0;
    b->cap = (Py_ssize_t)sizeof b->small;
}

static void buf_free(Buf *b) {
    if (b->p != b->small) PyMem_Free(b->p);
}

static int buf_reserve(Buf *b, Py_ssize_t more) {
    if (b->len + more <= b->cap) return 0;
    Py_ssize_t cap = b->cap;
    while (cap < b->len + more) cap *= 2;
    char *p = PyMem_Malloc((size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(p, b->p, (size_t)b->len);
    if (b->p != b->small) PyMem_Free(b->p);
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_put(Buf *b, const char *s, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->p + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

#define PUT_LITERAL(b, lit) buf_put((b), (lit), (Py_ssize_t)(sizeof(lit) - 1))
/* The next member's name, after a comma: 1, or -1 on an error (as the put_ functions). */
#define PUT_NAME(b, name) (PUT_LITERAL((b), ",\"" name "\":") < 0 ? -1 : 1)

/* ------------------------------------------------------------------------------------ */
/* Times: timeutil.format_ts, "YYYY-MM-DDTHH:MM:SS.mmmZ" in UTC.                         */

#define TS_CHARS 24

static long long floor_div(long long a, long long b) {
    long long q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* Writes the 24 characters of ``ms`` (within MIN_TS_MS..MAX_TS_MS) to ``out``. The
 * calendar is proleptic Gregorian, as Python's datetime (H. Hinnant's civil_from_days). */
static void format_ts_into(long long ms, char *out) {
    long long days = floor_div(ms, 86400000LL);
    long long in_day = ms - days * 86400000LL;
    long long z = days + 719468;
    long long era = floor_div(z, 146097);
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long year = yoe + era * 400;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long long mp = (5 * doy + 2) / 153;
    long long day = doy - (153 * mp + 2) / 5 + 1;
    long long month = mp < 10 ? mp + 3 : mp - 9;
    year += month <= 2;
    int hour = (int)(in_day / 3600000), minute = (int)(in_day / 60000 % 60),
        second = (int)(in_day / 1000 % 60), milli = (int)(in_day % 1000);
    int y = (int)year;
    out[0] = (char)('0' + y / 1000);
    out[1] = (char)('0' + y / 100 % 10);
    out[2] = (char)('0' + y / 10 % 10);
    out[3] = (char)('0' + y % 10);
    out[4] = '-';
    out[5] = (char)('0' + month / 10);
    out[6] = (char)('0' + month % 10);
    out[7] = '-';
    out[8] = (char)('0' + day / 10);
    out[9] = (char)('0' + day % 10);
    out[10] = 'T';
    out[11] = (char)('0' + hour / 10);
    out[12] = (char)('0' + hour % 10);
    out[13] = ':';
    out[14] = (char)('0' + minute / 10);
    out[15] = (char)('0' + minute % 10);
    out[16] = ':';
    out[17] = (char)('0' + second / 10);
    out[18] = (char)('0' + second % 10);
    out[19] = '.';
    out[20] = (char)('0' + milli / 100);
    out[21] = (char)('0' + milli / 10 % 10);
    out[22] = (char)('0' + milli % 10);
    out[23] = 'Z';
}

/* An exact int within the range of times, into ``*ms``: 1; anything else: 0 (no error set). */
static int as_time(PyObject *obj, long long *ms) {
    if (!PyLong_CheckExact(obj)) return 0;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    if (v < MIN_TS_MS || v > MAX_TS_MS) return 0;
    *ms = v;
    return 1;
}

static PyObject *native_format_ts(PyObject *Py_UNUSED(module), PyObject *arg) {
    long long ms;
    if (!as_time(arg, &ms)) Py_RETURN_NONE;
    char text[TS_CHARS];
    format_ts_into(ms, text);
    return PyUnicode_FromStringAndSize(text, TS_CHARS);
}

/* ------------------------------------------------------------------------------------ */
/* JSON values as orjson writes them.                                                    */

static const char HEX[] = "0123456789abcdef";

/* A str as orjson writes it: UTF-8, with '"', '\\' and the control characters escaped
 * (\b \t \n \f \r short, the others \u00XX). 0: not an exact str, or not encodable
 * (a lone surrogate: orjson refuses it, and the Python path says so). */
static int put_str(Buf *b, PyObject *obj) {
    if (!PyUnicode_CheckExact(obj)) return 0;
    Py_ssize_t n;
    const char *s;
    PyObject *utf8 = NULL; /* not the str's own cached UTF-8: it would stay with the str */
    if (PyUnicode_IS_ASCII(obj)) {
        s = (const char *)PyUnicode_1BYTE_DATA(obj);
        n = PyUnicode_GET_LENGTH(obj);
    } else {
        utf8 = PyUnicode_AsUTF8String(obj);
        if (utf8 == NULL) {
            PyErr_Clear();
            return 0;
        }
        s = PyBytes_AS_STRING(utf8);
        n = PyBytes_GET_SIZE(utf8);
    }
    if (buf_reserve(b, n * 6 + 2) < 0) {
        Py_XDECREF(utf8);
        return -1;
    }
    char *o = b->p + b->len;
    *o++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\b': *o++ = 'b'; break;
        case '\t': *o++ = 't'; break;
        case '\n': *o++ = 'n'; break;
        case '\f': *o++ = 'f'; break;
        case '\r': *o++ = 'r'; break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = HEX[c >> 4];
            *o++ = HEX[c & 15];
        }
    }
    *o++ = '"';
    b->len = o - b->p;
    Py_XDECREF(utf8);
    return 1;
}

/* A str or None. */
static int put_opt_str(Buf *b, PyObject *obj) {
    if (obj == Py_None) return PUT_LITERAL(b, "null") < 0 ? -1 : 1;
    return put_str(b, obj);
}

/* A time (epoch ms) as its quoted text. 0: out of range. */
static int put_time(Buf *b, long long ms) {
    if (ms < MIN_TS_MS || ms > MAX_TS_MS) return 0;
    if (buf_reserve(b, TS_CHARS + 2) < 0) return -1;
    b->p[b->len] = '"';
    format_ts_into(ms, b->p + b->len + 1);
    b->p[b->len + TS_CHARS + 1] = '"';
    b->len += TS_CHARS + 2;
    return 1;
}

/* A time (epoch ms) as its text, or None as null. 0: neither. */
static int put_opt_time(Buf *b, PyObject *obj) {
    if (obj == Py_None) return PUT_LITERAL(b, "null") < 0 ? -1 : 1;
    long long ms;
    if (!as_time(obj, &ms)) return 0;
    return put_time(b, ms);
}

/* ``ms // 1000`` of an int, or null. 0: neither, or beyond 64 bits. */
static int put_opt_seconds(Buf *b, PyObject *obj) {
    if (obj == Py_None) return PUT_LITERAL(b, "null") < 0 ? -1 : 1;
    if (!PyLong_CheckExact(obj)) return 0;
    int overflow = 0;
    long long ms = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow || (ms == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    char text[32];
    int n = snprintf(text, sizeof text, "%lld", floor_div(ms, 1000));
    return buf_put(b, text, n) < 0 ? -1 : 1;
}

/* The five parts of an Identity, each as "name":"value", with their commas. */
static int put_identity(Buf *b, PyObject *ident) {
    static const char *const names[] = {
        "{\"org\":", ",\"bot\":", ",\"env\":", ",\"category\":", ",\"record_id\":"};
    if (Py_TYPE(ident) != identity_type) return 0;
    for (int i = ORG; i <= RECORD_ID; i++) {
        if (buf_put(b, names[i], (Py_ssize_t)strlen(names[i])) < 0) return -1;
        PyObject *part = SLOT(ident, i);
        if (part == NULL) return 0;
        int r = put_str(b, part);
        if (r != 1) return r;
    }
    return 1;
}

/* ``data`` as orjson writes it inside an object: dumps([data]) less its brackets, so that
 * orjson's own nesting limit counts the level the stamp adds, as encode_stamp's does. */
static int put_data(Buf *b, PyObject *data) {
    if (data == Py_None) return PUT_LITERAL(b, "null") < 0 ? -1 : 1;
    PyObject *wrapped = PyList_New(1);
    if (wrapped == NULL) return -1;
    Py_INCREF(data);
    PyList_SET_ITEM(wrapped, 0, data);
    PyObject *out = PyObject_CallOneArg(dumps, wrapped);
    Py_DECREF(wrapped);
    if (out == NULL) {
        PyErr_Clear(); /* the Python path raises it again, as it always did */
        return 0;
    }
    int r = 0;
    if (PyBytes_CheckExact(out) && PyBytes_GET_SIZE(out) >= 2)
        r = buf_put(b, PyBytes_AS_STRING(out) + 1, PyBytes_GET_SIZE(out) - 2) < 0 ? -1 : 1;
    Py_DECREF(out);
    return r;
}

static PyObject *finish(Buf *b, int r) {
    PyObject *out = NULL;
    if (r == 1) out = PyBytes_FromStringAndSize(b->p, b->len);
    buf_free(b);
    if (r == 0) Py_RETURN_NONE;
    return out; /* NULL with the error set when r < 0 or the bytes failed */
}

#define STEP(expr)                   \
    do {                             \
        r = (expr);                  \
        if (r != 1) return finish(&b, r); \
    } while (0)

/* Stamp's fields, by position (model.Stamp). */
enum {
    F_IDENTITY, F_CREATED, F_EXPIRES, F_TTL, F_SOURCE, F_DELETED, F_ERASE, F_HELD, F_OFFSET,
    F_PREVIOUS, F_HELD_LIVES, F_FIRST_CREATED, STAMP_FIELDS
};

/* A Stamp with its twelve fields. tuple.__new__(Stamp, ...) makes one of any length,
 * whose fields below would be read past its end (a segfault, checked in the tests). */
static int whole_stamp(PyObject *stamp) {
    return Py_TYPE(stamp) == stamp_type && PyTuple_GET_SIZE(stamp) == STAMP_FIELDS;
}

/* What a stamp and a tombstone begin with: the record's five parts, then its life's
 * creation and expiry. */
static int put_life(Buf *b, PyObject *const *f) {
    int r = put_identity(b, f[F_IDENTITY]);
    if (r == 1) r = PUT_NAME(b, "created_at");
    if (r == 1) r = put_opt_time(b, f[F_CREATED]);
    if (r == 1) r = PUT_NAME(b, "expires_at");
    if (r == 1) r = put_opt_time(b, f[F_EXPIRES]);
    return r;
}

/* model.encode_stamp(stamp, data) for a stamp with none of the optional fields (no
 * erasure waiting, no previous deletion, no held lives, no first creation). */
static PyObject *native_stamp(PyObject *Py_UNUSED(module), PyObject *const *args,
                              Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "stamp(stamp, data)");
        return NULL;
    }
    PyObject *stamp = args[0], *data = args[1];
    if (!whole_stamp(stamp)) Py_RETURN_NONE;
    PyObject *const *f = ((PyTupleObject *)stamp)->ob_item;
    if (f[F_ERASE] != Py_None || f[F_PREVIOUS] != Py_None || f[F_FIRST_CREATED] != Py_None)
        Py_RETURN_NONE;
    if (!PyTuple_CheckExact(f[F_HELD_LIVES]) || PyTuple_GET_SIZE(f[F_HELD_LIVES]) != 0)
        Py_RETURN_NONE;
    /* model.last_activity: the creation, or the touch that slid the expiry to its place. */
    long long created = 0, active = 0;
    int has_active = f[F_CREATED] != Py_None;
    if (has_active && !as_time(f[F_CREATED], &created)) Py_RETURN_NONE;
    active = created;
    if (has_active && f[F_EXPIRES] != Py_None && f[F_TTL] != Py_None) {
        long long expires, ttl, start;
        int overflow = 0;
        if (!as_time(f[F_EXPIRES], &expires) || !PyLong_CheckExact(f[F_TTL])) Py_RETURN_NONE;
        ttl = PyLong_AsLongLongAndOverflow(f[F_TTL], &overflow);
        if (overflow || (ttl == -1 && PyErr_Occurred()) ||
            __builtin_sub_overflow(expires, ttl, &start)) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        if (start > created) active = start;
    }
    Buf b;
    buf_init(&b);
    int r;
    STEP(put_life(&b, f));
    STEP(PUT_NAME(&b, "ttl_seconds"));
    STEP(put_opt_seconds(&b, f[F_TTL]));
    STEP(PUT_NAME(&b, "ttl_source"));
    STEP(put_opt_str(&b, f[F_SOURCE]));
    STEP(PUT_NAME(&b, "last_activity_at"));
    STEP(has_active ? put_time(&b, active) : (PUT_LITERAL(&b, "null") < 0 ? -1 : 1));
    STEP(PUT_NAME(&b, "data"));
    STEP(put_data(&b, data));
    STEP(PUT_LITERAL(&b, "}") < 0 ? -1 : 1);
    return finish(&b, 1);
}

/* model.encode_tombstone(stamp, reason=reason, emitted_at=emitted_at). */
static PyObject *native_tombstone(PyObject *Py_UNUSED(module), PyObject *const *args,
                                  Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "tombstone(stamp, reason, emitted_at)");
        return NULL;
    }
    PyObject *stamp = args[0], *reason = args[1], *emitted = args[2];
    if (!whole_stamp(stamp)) Py_RETURN_NONE;
    PyObject *const *f = ((PyTupleObject *)stamp)->ob_item;
    Buf b;
    buf_init(&b);
    int r;
    STEP(put_life(&b, f));
    STEP(PUT_NAME(&b, "emitted_at"));
    STEP(emitted == Py_None ? 0 : put_opt_time(&b, emitted));
    STEP(PUT_NAME(&b, "reason"));
    STEP(put_str(&b, reason));
    STEP(PUT_NAME(&b, "ttl_seconds"));
    STEP(put_opt_seconds(&b, f[F_TTL]));
    STEP(PUT_NAME(&b, "ttl_source"));
    STEP(put_opt_str(&b, f[F_SOURCE]));
    STEP(PUT_LITERAL(&b, "}") < 0 ? -1 : 1);
    return finish(&b, 1);
}

/* ------------------------------------------------------------------------------------ */
/* Packing a state for the store and a timer for the wheel (state/codec.encode_state,     */
/* engine._pack_timer): big-endian 64-bit fields, INT64_MIN for None, then the tail.       */

/* An optional int field as struct's ">q" packs it, None as the sentinel. 0: another type,
 * or beyond 64 bits (struct raises: the Python function says so). */
static int put_q(unsigned char **o, PyObject *obj) {
    long long v;
    if (obj == Py_None) {
        v = LLONG_MIN;
    } else {
        if (!PyLong_CheckExact(obj)) return 0;
        int overflow = 0;
        v = PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (overflow || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
    }
    unsigned long long u = (unsigned long long)v;
    for (int i = 7; i >= 0; i--) {
        (*o)[i] = (unsigned char)(u & 0xff);
        u >>= 8;
    }
    *o += 8;
    return 1;
}

/* The tail packed.pack_tail writes for a state with nothing but its ttl source (None and
 * "" alike: nothing); 0 when the state has more, or a source that is not plain UTF-8. The
 * source's bytes in ``*text``/``*n``, a new reference in ``*owner`` when made here. */
static int plain_tail(PyObject *const *f, const char **text, Py_ssize_t *n, PyObject **owner) {
    *owner = NULL;
    if (f[F_PREVIOUS] != Py_None || f[F_FIRST_CREATED] != Py_None) return 0;
    if (!PyTuple_CheckExact(f[F_HELD_LIVES]) || PyTuple_GET_SIZE(f[F_HELD_LIVES]) != 0) return 0;
    PyObject *source = f[F_SOURCE];
    if (source == Py_None) {
        *text = "";
        *n = 0;
        return 1;
    }
    if (!PyUnicode_CheckExact(source)) return 0;
    if (PyUnicode_IS_ASCII(source)) {
        *text = (const char *)PyUnicode_1BYTE_DATA(source);
        *n = PyUnicode_GET_LENGTH(source);
        return 1;
    }
    *owner = PyUnicode_AsUTF8String(source);
    if (*owner == NULL) {
        PyErr_Clear();
        return 0;
    }
    *text = PyBytes_AS_STRING(*owner);
    *n = PyBytes_GET_SIZE(*owner);
    return 1;
}

/* ``fields`` (positions in the stamp; -1: the prune time argument) packed, then ``held``
 * as a byte when asked, then the tail; the Python function ``fallback`` for any other
 * state. */
static PyObject *pack(PyObject *fallback, PyObject *stamp, PyObject *prune_at,
                      const int *fields, int count, int with_held, PyObject *const *args,
                      Py_ssize_t nargs) {
    if (!whole_stamp(stamp)) goto slow;
    PyObject *const *f = ((PyTupleObject *)stamp)->ob_item;
    if (with_held && f[F_HELD] != Py_True && f[F_HELD] != Py_False) goto slow;
    const char *text;
    Py_ssize_t n;
    PyObject *owner;
    if (!plain_tail(f, &text, &n, &owner)) goto slow;
    PyObject *out = PyBytes_FromStringAndSize(NULL, 8 * count + with_held + n);
    if (out == NULL) {
        Py_XDECREF(owner);
        return NULL;
    }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    for (int i = 0; i < count; i++) {
        if (!put_q(&o, fields[i] < 0 ? prune_at : f[fields[i]])) {
            Py_DECREF(out);
            Py_XDECREF(owner);
            goto slow;
        }
    }
    if (with_held) *o++ = f[F_HELD] == Py_True;
    memcpy(o, text, (size_t)n);
    Py_XDECREF(owner);
    return out;
slow:
    return PyObject_Vectorcall(fallback, args, (size_t)nargs, NULL);
}

/* encode_state(stamp, prune_at): created, expires, ttl, deleted, prune, erase, offset, held. */
static PyObject *pack_state(PyObject *fallback, PyObject *const *args, Py_ssize_t nargs) {
    static const int fields[] = {F_CREATED, F_EXPIRES, F_TTL, F_DELETED, -1, F_ERASE, F_OFFSET};
    if (nargs != 2 || identity_type == NULL)
        return PyObject_Vectorcall(fallback, args, (size_t)nargs, NULL);
    return pack(fallback, args[0], args[1], fields, 7, 1, args, nargs);
}

/* _pack_timer(stamp): created, expires, ttl, erase, offset. */
static PyObject *pack_timer(PyObject *fallback, PyObject *const *args, Py_ssize_t nargs) {
    static const int fields[] = {F_CREATED, F_EXPIRES, F_TTL, F_ERASE, F_OFFSET};
    if (nargs != 1 || identity_type == NULL)
        return PyObject_Vectorcall(fallback, args, (size_t)nargs, NULL);
    return pack(fallback, args[0], NULL, fields, 5, 0, args, nargs);
}

static PyMethodDef pack_state_def = {
    "encode_state", (PyCFunction)(void (*)(void))pack_state, METH_FASTCALL,
    "encode_state(stamp, prune_at) -> bytes: compiled, the Python function for a rare state"};
static PyMethodDef pack_timer_def = {
    "pack_timer", (PyCFunction)(void (*)(void))pack_timer, METH_FASTCALL,
    "pack_timer(stamp) -> bytes: compiled, the Python function for a rare state"};

/* The builtin ``def`` bound to ``fallback``, the Python function it calls for what it
 * leaves (its ``self``): no Python frame between the caller and the C code. */
static PyObject *bound_to(PyMethodDef *def, PyObject *fallback) {
    if (!PyCallable_Check(fallback)) {
        PyErr_Format(PyExc_TypeError, "%s's fallback must be a callable", def->ml_name);
        return NULL;
    }
    return PyCFunction_New(def, fallback);
}

/* state_packer(fallback) / timer_packer(fallback): the compiled function, which calls
 * ``fallback`` (the Python one) for what it does not pack itself. */
static PyObject *native_state_packer(PyObject *Py_UNUSED(module), PyObject *fallback) {
    return bound_to(&pack_state_def, fallback);
}

static PyObject *native_timer_packer(PyObject *Py_UNUSED(module), PyObject *fallback) {
    return bound_to(&pack_timer_def, fallback);
}

/* ------------------------------------------------------------------------------------ */
/* Reading a stamp back (codec.stamp_body_fields): restore and replay read millions.      */

/* The epoch day of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static long long days_from_civil(long long y, int m, int d) {
    y -= m <= 2;
    long long era = floor_div(y, 400);
    long long yoe = y - era * 400;
    long long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    long long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int two(const unsigned char *c) { return (c[0] - '0') * 10 + (c[1] - '0'); }

/* codec.parse_own_ts of the service's own form, "YYYY-MM-DDTHH:MM:SS.mmmZ", a real date
 * and time of years 1 to 9999, into ``*ms``: 1. 0 for any other text (no error set): the
 * Python function reads it (another form, a leap second, an impossible date). */
static int own_time_chars(const unsigned char *c, Py_ssize_t n, long long *ms) {
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ";
    if (n != TS_CHARS) return 0;
    for (int i = 0; i < TS_CHARS; i++) {
        if (shape[i] == 'd' ? (c[i] < '0' || c[i] > '9') : c[i] != (unsigned char)shape[i])
            return 0;
    }
    static const int month_days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int year = two(c) * 100 + two(c + 2), month = two(c + 5), day = two(c + 8);
    int hour = two(c + 11), minute = two(c + 14), second = two(c + 17);
    int milli = (c[20] - '0') * 100 + two(c + 21);
    if (year < 1 || month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 ||
        second > 59)
        return 0;
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (day > month_days[month - 1] + (month == 2 && leap)) return 0;
    *ms = (((days_from_civil(year, month, day) * 24 + hour) * 60 + minute) * 60 + second) * 1000 +
          milli;
    return 1;
}

static int own_time(PyObject *text, long long *ms) {
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_ASCII(text)) return 0;
    return own_time_chars(PyUnicode_1BYTE_DATA(text), PyUnicode_GET_LENGTH(text), ms);
}

/* An optional time of a stamp's body: a new reference (None, or an int), NULL without an
 * error when the Python function must read it. */
static PyObject *own_opt_time(PyObject *body, PyObject *name) {
    PyObject *text = PyDict_GetItemWithError(body, name); /* borrowed: no Python runs below */
    if (text == NULL) return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    if (text == Py_None) return Py_NewRef(Py_None);
    long long ms;
    if (!own_time(text, &ms)) return NULL;
    return PyLong_FromLongLong(ms);
}

static PyObject *s_created_at, *s_expires_at, *s_ttl_seconds, *s_ttl_source,
    *s_erase_requested_at, *s_previous_deleted_at, *s_held_lives, *s_first_created_at;

/* stamp_body_fields(body) -> (created, expires, ttl_ms, source, erase, floor, lives,
 * first), bound to the Python function, which reads any stamp but the commonest: one
 * whose rare fields (an erasure waiting, a previous deletion, held lives, a first
 * creation) are absent or null, its times in the service's own form, its ttl an int. */
static PyObject *stamp_reader(PyObject *fallback, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 1 || !PyDict_CheckExact(args[0])) goto slow;
    PyObject *body = args[0];
    PyObject *const rare[] = {s_erase_requested_at, s_previous_deleted_at, s_held_lives,
                              s_first_created_at};
    for (int i = 0; i < 4; i++) {
        PyObject *v = PyDict_GetItemWithError(body, rare[i]);
        if (v != NULL && v != Py_None) goto slow;
        if (v == NULL && PyErr_Occurred()) return NULL;
    }
    PyObject *source = PyDict_GetItemWithError(body, s_ttl_source);
    if (source == NULL && PyErr_Occurred()) return NULL;
    if (source == NULL) source = Py_None;
    if (source != Py_None && !PyUnicode_CheckExact(source)) goto slow;
    PyObject *ttl_s = PyDict_GetItemWithError(body, s_ttl_seconds);
    if (ttl_s == NULL && PyErr_Occurred()) return NULL;
    long long ttl_ms = 0;
    if (ttl_s != NULL && ttl_s != Py_None) {
        int overflow = 0;
        if (!PyLong_CheckExact(ttl_s)) goto slow;
        long long seconds = PyLong_AsLongLongAndOverflow(ttl_s, &overflow);
        if (overflow || (seconds == -1 && PyErr_Occurred()) ||
            __builtin_mul_overflow(seconds, 1000LL, &ttl_ms)) {
            PyErr_Clear();
            goto slow;
        }
    }
    int has_ttl = ttl_s != NULL && ttl_s != Py_None;
    /* Held from here, once nothing is left that may go slow without it: the tuples made
     * below may start the garbage collector, whose finalizers could take it out of the
     * dict (as in native_event). (Held before the ttl's checks, a ttl left to Python
     * kept a reference to it for good.) */
    Py_INCREF(source);
    /* The times are read before anything is made that could start the collector. */
    PyObject *created = own_opt_time(body, s_created_at);
    PyObject *expires = created ? own_opt_time(body, s_expires_at) : NULL;
    if (expires == NULL) {
        Py_XDECREF(created);
        Py_DECREF(source);
        if (PyErr_Occurred()) return NULL;
        goto slow;
    }
    PyObject *ttl = has_ttl ? PyLong_FromLongLong(ttl_ms) : Py_NewRef(Py_None);
    PyObject *lives = ttl ? PyTuple_New(0) : NULL;
    PyObject *out = lives ? PyTuple_New(8) : NULL;
    if (out == NULL) {
        Py_DECREF(created);
        Py_DECREF(expires);
        Py_XDECREF(ttl);
        Py_XDECREF(lives);
        Py_DECREF(source);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, created);
    PyTuple_SET_ITEM(out, 1, expires);
    PyTuple_SET_ITEM(out, 2, ttl);
    PyTuple_SET_ITEM(out, 3, source);
    PyTuple_SET_ITEM(out, 4, Py_NewRef(Py_None));
    PyTuple_SET_ITEM(out, 5, Py_NewRef(Py_None));
    PyTuple_SET_ITEM(out, 6, lives);
    PyTuple_SET_ITEM(out, 7, Py_NewRef(Py_None));
    return out;
slow:
    return PyObject_Vectorcall(fallback, args, (size_t)nargs, NULL);
}

static PyMethodDef stamp_reader_def = {
    "stamp_body_fields", (PyCFunction)(void (*)(void))stamp_reader, METH_FASTCALL,
    "stamp_body_fields(body) -> tuple: compiled, the Python function for a rare stamp"};

/* stamp_reader(fallback): codec.stamp_body_fields compiled, bound to the Python one. */
static PyObject *native_stamp_reader(PyObject *Py_UNUSED(module), PyObject *fallback) {
    return bound_to(&stamp_reader_def, fallback);
}

/* own_time(text) -> int | None: for the tests. */
static PyObject *native_own_time(PyObject *Py_UNUSED(module), PyObject *text) {
    long long ms;
    if (!own_time(text, &ms)) Py_RETURN_NONE;
    return PyLong_FromLongLong(ms);
}

/* ------------------------------------------------------------------------------------ */
/* Reading a stamp's bytes without building its dict (codec.stamp_fields): restore reads
 * millions, and orjson built a dict of every field, ``data`` included, for the four it
 * keeps (a tenth of a restored stamp's CPU, round 55). The scan below checks the JSON as
 * it goes, strictly: whatever it is not sure orjson reads the same way (an exponent, a
 * long number, a \u escape of a surrogate, deep nesting, a key it wants escaped or given
 * twice, anything malformed) it leaves to the Python function, which reads it with orjson
 * and raises what orjson raises. So it never takes what orjson refuses. */

#define SCAN_DEPTH 64 /* deeper data goes to Python (orjson reads 1,024 levels) */

static const unsigned char *skip_ws(const unsigned char *p, const unsigned char *end) {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

static int hex4(const unsigned char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return 0;
    }
    *out = v;
    return 1;
}

/* Past a string starting at its opening quote, checked (escapes, no control character,
 * well-formed UTF-8), or NULL; ``*escaped`` says whether it held an escape. */
static const unsigned char *skip_string(const unsigned char *p, const unsigned char *end,
                                        int *escaped) {
    p++;
    *escaped = 0;
    while (p < end) {
        unsigned char c = *p;
        if (c == '"') return p + 1;
        if (c < 0x20) return NULL;
        if (c == '\\') {
            if (p + 1 >= end) return NULL;
            unsigned char e = p[1];
            *escaped = 1;
            if (e == 'u') {
                unsigned u;
                if (end - p < 6 || !hex4(p + 2, &u) || (u >= 0xD800 && u <= 0xDFFF)) return NULL;
                p += 6;
            } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' ||
                       e == 'r' || e == 't') {
                p += 2;
            } else {
                return NULL;
            }
            continue;
        }
        if (c < 0x80) {
            p++;
            continue;
        }
        /* UTF-8: no overlong form, no surrogate, nothing past U+10FFFF. */
        int more;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) more = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            more = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            more = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            return NULL;
        }
        if (end - p <= more) return NULL;
        if (p[1] < lo || p[1] > hi) return NULL;
        for (int i = 2; i <= more; i++)
            if (p[i] < 0x80 || p[i] > 0xBF) return NULL;
        p += more + 1;
    }
    return NULL;
}

/* Past a number (JSON's grammar without an exponent, at most 18 digits before the point),
 * or NULL. */
static const unsigned char *skip_number(const unsigned char *p, const unsigned char *end) {
    if (p < end && *p == '-') p++;
    const unsigned char *digits = p;
    while (p < end && *p >= '0' && *p <= '9') p++;
    Py_ssize_t n = p - digits;
    if (n == 0 || n > 18 || (n > 1 && *digits == '0')) return NULL;
    if (p < end && *p == '.') {
        const unsigned char *frac = ++p;
        while (p < end && *p >= '0' && *p <= '9') p++;
        if (p == frac) return NULL;
    }
    return p; /* an exponent's 'e' is left where nothing may follow: the caller refuses it */
}

static const unsigned char *skip_value(const unsigned char *p, const unsigned char *end,
                                       int depth) {
    if (p >= end) return NULL;
    int escaped;
    switch (*p) {
    case '"':
        return skip_string(p, end, &escaped);
    case 't':
        return end - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
    case 'f':
        return end - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
    case 'n':
        return end - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
    case '[':
    case '{': {
        unsigned char close = *p == '[' ? ']' : '}';
        int object = *p == '{';
        if (depth >= SCAN_DEPTH) return NULL;
        p = skip_ws(p + 1, end);
        if (p < end && *p == close) return p + 1;
        for (;;) {
            if (object) {
                if (p >= end || *p != '"') return NULL;
                p = skip_string(p, end, &escaped);
                if (p == NULL) return NULL;
                p = skip_ws(p, end);
                if (p >= end || *p != ':') return NULL;
                p = skip_ws(p + 1, end);
            }
            p = skip_value(p, end, depth + 1);
            if (p == NULL) return NULL;
            p = skip_ws(p, end);
            if (p >= end) return NULL;
            if (*p == close) return p + 1;
            if (*p != ',') return NULL;
            p = skip_ws(p + 1, end);
        }
    }
    default:
        return skip_number(p, end);
    }
}

enum { K_CREATED, K_EXPIRES, K_TTL, K_SOURCE, K_RARE, K_ACTIVITY, K_OTHER };

/* Which of the fields stamp_fields reads a key (its text without the quotes) names. */
static int stamp_key(const unsigned char *k, Py_ssize_t n) {
#define IS(lit) (n == (Py_ssize_t)sizeof(lit) - 1 && memcmp(k, lit, n) == 0)
    if (IS("created_at")) return K_CREATED;
    if (IS("expires_at")) return K_EXPIRES;
    if (IS("ttl_seconds")) return K_TTL;
    if (IS("ttl_source")) return K_SOURCE;
    if (IS("erase_requested_at") || IS("previous_deleted_at") || IS("held_lives") ||
        IS("first_created_at"))
        return K_RARE;
    if (IS("last_activity_at")) return K_ACTIVITY;
    return K_OTHER;
#undef IS
}

/* A stamp's fields (as stamp_reader answers them) read from its bytes: 1, 0 to leave it
 * to Python. Times are the service's own form or null, the ttl an int of at most 15
 * digits or null, the source a string without escapes or null; the rare fields absent or
 * null. ``source`` is set to the span of the source's text, or its start to NULL. */
typedef struct {
    int has_created, has_expires, has_ttl, has_activity;
    long long created, expires, ttl_ms, activity;
    const unsigned char *source;
    Py_ssize_t source_len;
} Scanned;

static int scan_stamp(const unsigned char *p, const unsigned char *end, Scanned *out,
                      int activity) {
    memset(out, 0, sizeof *out);
    if (p >= end || *p != '{') return 0;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') return skip_ws(p + 1, end) == end;
    for (;;) {
        int escaped;
        if (p >= end || *p != '"') return 0;
        const unsigned char *k = p + 1;
        p = skip_string(p, end, &escaped);
        if (p == NULL) return 0;
        int which = escaped ? -1 : stamp_key(k, p - 1 - k);
        if (which == K_ACTIVITY && !activity) which = K_OTHER;
        if (which == -1) return 0; /* an escaped key may name a field: Python reads it */
        p = skip_ws(p, end);
        if (p >= end || *p != ':') return 0;
        p = skip_ws(p + 1, end);
        const unsigned char *v = p;
        p = skip_value(p, end, 1);
        if (p == NULL) return 0;
        if (which != K_OTHER) { /* a field given twice: the last wins, as in orjson */
            int null = p - v == 4 && memcmp(v, "null", 4) == 0;
            switch (which) {
            case K_RARE:
                if (!null) return 0;
                break;
            case K_CREATED:
            case K_EXPIRES:
            case K_ACTIVITY: {
                int *has = which == K_CREATED   ? &out->has_created
                           : which == K_EXPIRES ? &out->has_expires
                                                : &out->has_activity;
                long long *ms = which == K_CREATED   ? &out->created
                                : which == K_EXPIRES ? &out->expires
                                                     : &out->activity;
                *has = !null;
                if (!null && (*v != '"' || !own_time_chars(v + 1, p - v - 2, ms))) return 0;
                break;
            }
            case K_TTL:
                out->has_ttl = 0;
                if (!null) {
                    const unsigned char *d = v + (*v == '-');
                    if (d == p || p - d > 15 || *v == '"') return 0;
                    long long s = 0;
                    for (; d < p; d++) {
                        if (*d < '0' || *d > '9') return 0;
                        s = s * 10 + (*d - '0');
                    }
                    out->has_ttl = 1;
                    out->ttl_ms = (*v == '-' ? -s : s) * 1000;
                }
                break;
            case K_SOURCE:
                out->source = NULL;
                if (!null) {
                    int esc;
                    if (*v != '"' || skip_string(v, p, &esc) != p || esc) return 0;
                    out->source = v + 1;
                    out->source_len = p - v - 2;
                }
                break;
            }
        }
        p = skip_ws(p, end);
        if (p >= end) return 0;
        if (*p == '}') return skip_ws(p + 1, end) == end;
        if (*p != ',') return 0;
        p = skip_ws(p + 1, end);
    }
}

static PyObject *empty_tuple_ = NULL;

/* stamp_fields(value) -> (created, expires, ttl_ms, source, None, None, (), None), bound
 * to the Python function, which reads every stamp this does not. */
static PyObject *stamp_scanner(PyObject *fallback, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 1 || !PyBytes_CheckExact(args[0])) goto slow;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Scanned f;
    if (!scan_stamp(p, p + PyBytes_GET_SIZE(args[0]), &f, 0)) goto slow;
    PyObject *items[8] = {NULL};
    items[0] = f.has_created ? PyLong_FromLongLong(f.created) : Py_NewRef(Py_None);
    items[1] = f.has_expires ? PyLong_FromLongLong(f.expires) : Py_NewRef(Py_None);
    items[2] = f.has_ttl ? PyLong_FromLongLong(f.ttl_ms) : Py_NewRef(Py_None);
    items[3] = f.source ? PyUnicode_DecodeUTF8((const char *)f.source, f.source_len, NULL)
                        : Py_NewRef(Py_None);
    items[4] = Py_NewRef(Py_None);
    items[5] = Py_NewRef(Py_None);
    items[6] = Py_NewRef(empty_tuple_);
    items[7] = Py_NewRef(Py_None);
    PyObject *out = NULL;
    for (int i = 0; i < 4; i++)
        if (items[i] == NULL) goto done;
    out = PyTuple_New(8);
    if (out == NULL) goto done;
    for (int i = 0; i < 8; i++) {
        PyTuple_SET_ITEM(out, i, items[i]);
        items[i] = NULL;
    }
done:
    for (int i = 0; i < 8; i++) Py_XDECREF(items[i]);
    return out;
slow:
    return PyObject_Vectorcall(fallback, args, (size_t)nargs, NULL);
}

static PyMethodDef stamp_scanner_def = {
    "stamp_fields", (PyCFunction)(void (*)(void))stamp_scanner, METH_FASTCALL,
    "stamp_fields(value) -> tuple: compiled, the Python function for a rare stamp"};

/* stamp_scanner(fallback): codec.stamp_fields compiled, bound to the Python one. */
static PyObject *native_stamp_scanner(PyObject *Py_UNUSED(module), PyObject *fallback) {
    return bound_to(&stamp_scanner_def, fallback);
}

/* replay_fields(value) -> (created, expires, last_activity) | None: what replay's verdict
 * reads of a stamp (replay.py, _Verdict) when its creation is a time, its rare fields
 * absent or null and its last activity absent, null or a time of the service's own form,
 * its ttl and source as stamp_fields reads them; else None, and the verdict reads the
 * stamp with orjson. */
static PyObject *native_replay_fields(PyObject *Py_UNUSED(module), PyObject *value) {
    if (!PyBytes_CheckExact(value)) Py_RETURN_NONE;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(value);
    Scanned f;
    if (!scan_stamp(p, p + PyBytes_GET_SIZE(value), &f, 1) || !f.has_created) Py_RETURN_NONE;
    PyObject *created = PyLong_FromLongLong(f.created);
    PyObject *expires = f.has_expires ? PyLong_FromLongLong(f.expires) : Py_NewRef(Py_None);
    PyObject *active = f.has_activity ? PyLong_FromLongLong(f.activity) : Py_NewRef(Py_None);
    PyObject *out = NULL;
    if (created != NULL && expires != NULL && active != NULL)
        out = PyTuple_Pack(3, created, expires, active);
    Py_XDECREF(created);
    Py_XDECREF(expires);
    Py_XDECREF(active);
    return out;
}

/* key_category(key) -> bytes | None: the fourth of a key's five parts when each is made
 * of [A-Za-z0-9_.~-] only (restore's plain key, re.fullmatch of restore._PLAIN_KEY), or
 * None. */
static PyObject *native_key_category(PyObject *Py_UNUSED(module), PyObject *key) {
    if (!PyBytes_CheckExact(key)) Py_RETURN_NONE;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(key);
    Py_ssize_t n = PyBytes_GET_SIZE(key), start = 0, stop = 0;
    int slashes = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c == '/') {
            if (++slashes > 4) Py_RETURN_NONE;
            if (slashes == 3) start = i + 1;
            if (slashes == 4) stop = i;
        } else if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '_' || c == '.' || c == '~' || c == '-')) {
            Py_RETURN_NONE;
        }
    }
    if (slashes != 4) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)p + start, stop - start);
}

/* ------------------------------------------------------------------------------------ */
/* A restore's filter of the keys it wrote (state.key_filter): a store restored from
 * empty looked every stamp's key up in RocksDB before writing it, to find the state it
 * replaces, and a tenth of a restored stamp's CPU went to those look-ups, though nearly
 * all found nothing (round 55). */

/* seen_keys(bits, keys) -> list[int]: the indexes of the keys whose two bits in ``bits``
 * (a bytearray of a power of two bytes) were both set, by an earlier key or an earlier
 * call; sets every key's bits. The bits are those of key_filter._seen_in_python, from
 * each key's hash(). */
static PyObject *native_seen_keys(PyObject *Py_UNUSED(module), PyObject *const *args,
                                  Py_ssize_t nargs) {
    if (nargs != 2 || !PyByteArray_CheckExact(args[0]) || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "seen_keys(bits: bytearray, keys: list)");
        return NULL;
    }
    Py_ssize_t size = PyByteArray_GET_SIZE(args[0]);
    if (size < 1 || (size & (size - 1)) != 0) {
        PyErr_SetString(PyExc_ValueError, "seen_keys: bits must be a power of two bytes");
        return NULL;
    }
    PyObject *found = PyList_New(0);
    if (found == NULL) return NULL;
    Py_uhash_t mask = (Py_uhash_t)size * 8 - 1;
    /* The list may be changed by nothing here: hash() of a bytes object runs no Python. */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(args[1]); i++) {
        PyObject *key = PyList_GET_ITEM(args[1], i);
        if (!PyBytes_CheckExact(key)) {
            Py_DECREF(found);
            PyErr_SetString(PyExc_TypeError, "seen_keys: keys must be bytes");
            return NULL;
        }
        Py_hash_t h = PyObject_Hash(key);
        if (h == -1 && PyErr_Occurred()) {
            Py_DECREF(found);
            return NULL;
        }
        unsigned char *b = (unsigned char *)PyByteArray_AS_STRING(args[0]);
        Py_uhash_t one = (Py_uhash_t)h & mask, two = (Py_uhash_t)(h >> 32) & mask;
        unsigned char bit1 = (unsigned char)(1u << (one & 7)), bit2 = (unsigned char)(1u << (two & 7));
        if ((b[one >> 3] & bit1) && (b[two >> 3] & bit2)) {
            PyObject *index = PyLong_FromSsize_t(i);
            if (index == NULL || PyList_Append(found, index) < 0) {
                Py_XDECREF(index);
                Py_DECREF(found);
                return NULL;
            }
            Py_DECREF(index);
        }
        b[one >> 3] |= bit1;
        b[two >> 3] |= bit2;
    }
    return found;
}

/* ------------------------------------------------------------------------------------ */
/* Firing a timer: engine._fire_timer's common case (an expiry, no erasure deferred, a    */
/* key with nothing quoted, a tail of the ttl source alone).                              */

static PyObject *s_ttl; /* the reason "ttl" */

/* A big-endian signed 64-bit field. */
static long long get_q(const unsigned char *p) {
    unsigned long long u = 0;
    for (int i = 0; i < 8; i++) u = (u << 8) | p[i];
    return (long long)u;
}

/* An optional time from a packed field (INT64_MIN: None). A new reference. */
static PyObject *opt_int(long long v) {
    if (v == LLONG_MIN) return Py_NewRef(Py_None);
    return PyLong_FromLongLong(v);
}

/* A Stamp of these twelve fields (new references, stolen; NULL ones fail the whole). */
static PyObject *make_stamp(PyObject *items[STAMP_FIELDS]) {
    PyObject *stamp = NULL;
    int ok = 1;
    for (int i = 0; i < STAMP_FIELDS; i++) ok &= items[i] != NULL;
    if (ok) stamp = stamp_type->tp_alloc(stamp_type, STAMP_FIELDS);
    if (stamp == NULL) {
        for (int i = 0; i < STAMP_FIELDS; i++) Py_XDECREF(items[i]);
        return NULL;
    }
    for (int i = 0; i < STAMP_FIELDS; i++) PyTuple_SET_ITEM(stamp, i, items[i]);
    return stamp;
}

/* The Identity of a key with four '/' and nothing quoted (no '%'), ASCII: its parts as
 * they are (model.identity_of_key). NULL without an error: not such a key. */
static PyObject *identity_of_plain_key(PyObject *key) {
    if (!PyUnicode_CheckExact(key) || !PyUnicode_IS_ASCII(key)) return NULL;
    const char *k = (const char *)PyUnicode_1BYTE_DATA(key);
    Py_ssize_t n = PyUnicode_GET_LENGTH(key), cut[6] = {0, 0, 0, 0, 0, n + 1};
    int slashes = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (k[i] == '%') return NULL;
        if (k[i] == '/') {
            if (++slashes > 4) return NULL;
            cut[slashes] = i + 1;
        }
    }
    if (slashes != 4) return NULL;
    PyObject *ident = identity_type->tp_alloc(identity_type, 0);
    if (ident == NULL) return NULL;
    for (int i = 0; i < 5; i++) {
        PyObject *part = PyUnicode_FromStringAndSize(k + cut[i], cut[i + 1] - cut[i] - 1);
        if (part == NULL) {
            Py_DECREF(ident);
            return NULL;
        }
        SLOT(ident, i) = part;
    }
    SLOT(ident, KEY) = Py_NewRef(key);
    return ident;
}

/* fire_timer(key, packed, now_ms) -> Fired; self is (fallback, Fired, the defaults of
 * Fired's fields after emitted_at). */
static PyObject *fire_timer(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *fallback = PyTuple_GET_ITEM(self, 0);
    PyTypeObject *fired_type = (PyTypeObject *)PyTuple_GET_ITEM(self, 1);
    if (nargs != 3 || identity_type == NULL || !PyBytes_CheckExact(args[1])) goto slow;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[1]);
    if (size < 40 || (size > 40 && p[40] >= 0xFD)) goto slow; /* a tail with more */
    long long created = get_q(p), expires = get_q(p + 8), ttl = get_q(p + 16),
              erase = get_q(p + 24), offset = get_q(p + 32);
    if (erase != LLONG_MIN || expires == LLONG_MIN) goto slow;
    PyObject *source = Py_None;
    if (size > 40) {
        source = PyUnicode_DecodeUTF8((const char *)p + 40, size - 40, NULL);
        if (source == NULL) {
            PyErr_Clear(); /* the Python function raises it */
            goto slow;
        }
    } else {
        Py_INCREF(source);
    }
    PyObject *ident = identity_of_plain_key(args[0]);
    if (ident == NULL) {
        Py_DECREF(source);
        if (PyErr_Occurred()) return NULL;
        goto slow;
    }
    PyObject *before_items[STAMP_FIELDS] = {
        Py_NewRef(ident), opt_int(created), PyLong_FromLongLong(expires), opt_int(ttl),
        Py_NewRef(source), Py_NewRef(Py_None), Py_NewRef(Py_None), Py_NewRef(Py_False),
        opt_int(offset), Py_NewRef(Py_None), PyTuple_New(0), Py_NewRef(Py_None)};
    PyObject *before = make_stamp(before_items);
    PyObject *after = NULL;
    if (before != NULL) {
        PyObject *const *b = ((PyTupleObject *)before)->ob_item;
        PyObject *after_items[STAMP_FIELDS] = {
            Py_NewRef(ident), Py_NewRef(b[F_CREATED]), Py_NewRef(b[F_EXPIRES]),
            Py_NewRef(b[F_TTL]), Py_NewRef(source), PyLong_FromLongLong(expires - 1),
            Py_NewRef(Py_None), Py_NewRef(Py_False), Py_NewRef(b[F_OFFSET]),
            Py_NewRef(Py_None), PyTuple_New(0), Py_NewRef(Py_None)};
        after = make_stamp(after_items);
    }
    Py_DECREF(ident);
    Py_DECREF(source);
    if (after == NULL) {
        Py_XDECREF(before);
        return NULL;
    }
    Py_ssize_t rest = PyTuple_GET_SIZE(self) - 2; /* the fields after emitted_at */
    PyObject *fired = fired_type->tp_alloc(fired_type, 4 + rest);
    if (fired == NULL) {
        Py_DECREF(before);
        Py_DECREF(after);
        return NULL;
    }
    PyTuple_SET_ITEM(fired, 0, before);
    PyTuple_SET_ITEM(fired, 1, after);
    PyTuple_SET_ITEM(fired, 2, Py_NewRef(s_ttl));
    PyTuple_SET_ITEM(fired, 3, Py_NewRef(args[2]));
    for (Py_ssize_t i = 0; i < rest; i++)
        PyTuple_SET_ITEM(fired, 4 + i, Py_NewRef(PyTuple_GET_ITEM(self, 2 + i)));
    return fired;
slow:
    return PyObject_Vectorcall(fallback, args, (size_t)nargs, NULL);
}

static PyMethodDef fire_timer_def = {
    "fire_timer", (PyCFunction)(void (*)(void))fire_timer, METH_FASTCALL,
    "fire_timer(key, packed, now_ms) -> Fired: compiled, the Python function for a rare timer"};

/* timer_firer(fallback, Fired): engine._fire_timer compiled, bound to the Python function,
 * to the Fired class (checked: before, after, reason, emitted_at first) and to the
 * defaults of its other fields, which a fired expiry keeps. */
static PyObject *native_timer_firer(PyObject *Py_UNUSED(module), PyObject *const *args,
                                    Py_ssize_t nargs) {
    if (nargs != 2 || !PyCallable_Check(args[0]) || !PyType_Check(args[1]) ||
        !PyType_IsSubtype((PyTypeObject *)args[1], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "timer_firer(fallback, Fired): a named tuple");
        return NULL;
    }
    if (stamp_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "stream_expiry._native: bind() first");
        return NULL;
    }
    static const char *const first[] = {"before", "after", "reason", "emitted_at"};
    PyObject *fields = PyObject_GetAttrString(args[1], "_fields");
    PyObject *defaults = fields ? PyObject_GetAttrString(args[1], "_field_defaults") : NULL;
    PyObject *self = NULL;
    if (defaults == NULL) goto done;
    if (!PyTuple_Check(fields) || PyTuple_GET_SIZE(fields) < 4 || !PyDict_Check(defaults)) {
        PyErr_SetString(PyExc_TypeError, "Fired must be a named tuple");
        goto done;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(fields);
    for (int i = 0; i < 4; i++) {
        if (!is_ascii_literal(PyTuple_GET_ITEM(fields, i), first[i])) {
            PyErr_Format(PyExc_TypeError, "Fired's field %d is not %s", i, first[i]);
            goto done;
        }
    }
    self = PyTuple_New(2 + n - 4);
    if (self == NULL) goto done;
    PyTuple_SET_ITEM(self, 0, Py_NewRef(args[0]));
    PyTuple_SET_ITEM(self, 1, Py_NewRef(args[1]));
    for (Py_ssize_t i = 4; i < n; i++) {
        PyObject *value = PyDict_GetItemWithError(defaults, PyTuple_GET_ITEM(fields, i));
        if (value == NULL) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_TypeError, "Fired's field %R has no default",
                             PyTuple_GET_ITEM(fields, i));
            Py_CLEAR(self);
            goto done;
        }
        PyTuple_SET_ITEM(self, 2 + i - 4, Py_NewRef(value));
    }
done:
    Py_XDECREF(fields);
    Py_XDECREF(defaults);
    if (self == NULL) return NULL;
    PyObject *fn = PyCFunction_New(&fire_timer_def, self);
    Py_DECREF(self);
    return fn;
}

/* ------------------------------------------------------------------------------------ */
/* Reading an event: model.parse_event's fast path.                                      */

/* A part of a record's key that needs no quoting: 1 to MAX_ID_CHARS characters of
 * [A-Za-z0-9_.~-] (model._PLAIN). 1: plain; 0: not (or not an exact str). */
static int plain_part(PyObject *s) {
    if (!PyUnicode_CheckExact(s) || !PyUnicode_IS_ASCII(s)) return 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (n < 1 || n > MAX_ID_CHARS) return 0;
    const unsigned char *c = PyUnicode_1BYTE_DATA(s);
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char x = c[i];
        if (!((x >= 'a' && x <= 'z') || (x >= 'A' && x <= 'Z') || (x >= '0' && x <= '9') ||
              x == '_' || x == '.' || x == '~' || x == '-'))
            return 0;
    }
    return 1;
}

/* Whether the message has a run of RUN_OF_DIGITS ASCII digits (an integer orjson may
 * have read as a float), or more '[' and '{' than MAX_DATA_DEPTH (data that may nest too
 * deep): the Python path looks at both closely. */
static int needs_a_closer_look(const char *s, Py_ssize_t n) {
    Py_ssize_t run = 0, brackets = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= '0' && c <= '9') {
            if (++run >= RUN_OF_DIGITS) return 1;
            continue;
        }
        run = 0;
        if ((c == '[' || c == '{') && ++brackets > MAX_DATA_DEPTH) return 1;
    }
    return 0;
}

static int is_ascii_literal(PyObject *s, const char *lit) {
    return PyUnicode_CheckExact(s) && PyUnicode_CompareWithASCIIString(s, lit) == 0;
}

/* An Identity of five plain parts, key included (model.Identity.__init__'s plain case). */
static PyObject *make_identity(PyObject *org, PyObject *bot, PyObject *env,
                               PyObject *category, PyObject *record_id) {
    PyObject *parts[5] = {org, bot, env, category, record_id};
    Py_ssize_t len = 4;
    for (int i = 0; i < 5; i++) len += PyUnicode_GET_LENGTH(parts[i]);
    PyObject *key = PyUnicode_New(len, 127);
    if (key == NULL) return NULL;
    Py_UCS1 *k = PyUnicode_1BYTE_DATA(key);
    for (int i = 0; i < 5; i++) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(parts[i]);
        memcpy(k, PyUnicode_1BYTE_DATA(parts[i]), (size_t)n);
        k += n;
        if (i < 4) *k++ = '/';
    }
    PyObject *ident = identity_type->tp_alloc(identity_type, 0);
    if (ident == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    for (int i = 0; i < 5; i++) SLOT(ident, i) = Py_NewRef(parts[i]);
    SLOT(ident, KEY) = key;
    return ident;
}

/* The event's fields, in the order they are read: the four required ones first. */
enum {
    E_CATEGORY, E_RECORD_ID, E_ORG, E_TS, E_BOT, E_ENV, E_OP, E_EVENT_ID, E_DATA, EVENT_FIELDS
};

/* model.parse_event(value, ...) after orjson read ``obj`` from ``value``, for an event the
 * fast path takes whole: its fields of the right types and sizes, a plain key, nothing
 * but its fields, no run of digits orjson may have rounded and no data that may nest too
 * deep. None for any other event: the Python path reads it. */
static PyObject *native_event(PyObject *Py_UNUSED(module), PyObject *const *args,
                              Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "event(obj, value, categories, max_ts)");
        return NULL;
    }
    PyObject *obj = args[0], *value = args[1], *categories = args[2];
    long long max_ts;
    if (!PyDict_CheckExact(obj) || !PyBytes_CheckExact(value) || !PyLong_Check(args[3]))
        Py_RETURN_NONE;
    {
        int overflow = 0;
        max_ts = PyLong_AsLongLongAndOverflow(args[3], &overflow);
        if (overflow || (max_ts == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
    }
    if (needs_a_closer_look(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value)))
        Py_RETURN_NONE;
    /* Strong references to the fields, not the dict's borrowed ones: Python code may run
     * below and take a value out of the dict, whose reference was often the only one (a
     * category's __eq__ in PySequence_Contains, or a finalizer the garbage collector runs
     * from tp_alloc). With borrowed ones that was a use after free (a segfault, checked in
     * tests/unit/test_native.py). event_id, data and the count of names are read after
     * the category's check, as the Python path reads them. */
    PyObject *const names[EVENT_FIELDS] = {s_category, s_record_id, s_org, s_ts, s_bot,
                                           s_env, s_op, s_event_id, s_data};
    PyObject *v[EVENT_FIELDS] = {NULL};
    PyObject *result = NULL, *event_text = NULL;
#define ANSWER_NONE                  \
    do {                             \
        result = Py_NewRef(Py_None); \
        goto done;                   \
    } while (0)
    for (int i = 0; i < E_EVENT_ID; i++) {
        v[i] = PyDict_GetItemWithError(obj, names[i]);
        if (v[i] != NULL)
            Py_INCREF(v[i]);
        else if (PyErr_Occurred())
            goto done;
        else if (i <= E_TS)
            ANSWER_NONE; /* a required field missing: the Python path says which */
    }
    PyObject *category = v[E_CATEGORY], *record_id = v[E_RECORD_ID], *org = v[E_ORG],
             *ts = v[E_TS], *bot = v[E_BOT], *env = v[E_ENV], *op = v[E_OP];
    long long ts_ms;
    if (!as_time(ts, &ts_ms) || ts_ms > max_ts) ANSWER_NONE;
    if (!plain_part(org) || !plain_part(record_id) || !plain_part(category)) ANSWER_NONE;
    if (bot != NULL && !plain_part(bot)) ANSWER_NONE;
    if (env != NULL && !(is_ascii_literal(env, "live") || is_ascii_literal(env, "draft")))
        ANSWER_NONE;
    if (op != NULL && !(is_ascii_literal(op, "create") || is_ascii_literal(op, "touch") ||
                        is_ascii_literal(op, "delete")))
        ANSWER_NONE;
    int known = PySequence_Contains(categories, category);
    if (known < 0) goto done;
    if (!known) ANSWER_NONE;
    for (int i = E_EVENT_ID; i < EVENT_FIELDS; i++) {
        v[i] = PyDict_GetItemWithError(obj, names[i]);
        if (v[i] != NULL)
            Py_INCREF(v[i]);
        else if (PyErr_Occurred())
            goto done;
    }
    PyObject *event_id = v[E_EVENT_ID], *data = v[E_DATA];
    Py_ssize_t given = 4 + (bot != NULL) + (env != NULL) + (op != NULL) +
                       (event_id != NULL && event_id != Py_None) +
                       (data != NULL && data != Py_None);
    if (PyDict_GET_SIZE(obj) > given) ANSWER_NONE; /* other names: the Python path says */
    if (event_id != NULL && event_id != Py_None) {
        if (PyUnicode_CheckExact(event_id))
            event_text = Py_NewRef(event_id);
        else if (PyLong_CheckExact(event_id))
            event_text = PyObject_Str(event_id);
        else
            ANSWER_NONE;
        if (event_text == NULL) goto done;
    }
    PyObject *ident = make_identity(org, bot ? bot : default_bot, env ? env : default_env,
                                    category, record_id);
    if (ident == NULL) goto done;
    result = input_event_type->tp_alloc(input_event_type, 7);
    if (result == NULL) {
        Py_DECREF(ident);
        goto done;
    }
    PyTuple_SET_ITEM(result, 0, ident);
    PyTuple_SET_ITEM(result, 1, Py_NewRef(op ? op : default_op));
    PyTuple_SET_ITEM(result, 2, Py_NewRef(ts));
    PyTuple_SET_ITEM(result, 3, event_text ? Py_NewRef(event_text) : Py_NewRef(Py_None));
    PyTuple_SET_ITEM(result, 4, Py_NewRef(data ? data : Py_None));
    PyTuple_SET_ITEM(result, 5, Py_NewRef(misspelt_default));
    PyTuple_SET_ITEM(result, 6, Py_NewRef(early_default));
#undef ANSWER_NONE
done:
    for (int i = 0; i < EVENT_FIELDS; i++) Py_XDECREF(v[i]);
    Py_XDECREF(event_text);
    return result;
}

/* ------------------------------------------------------------------------------------ */
/* bind(Identity, InputEvent, Stamp, dumps): checked once, at model's import.           */

/* 1: ``type`` is a named tuple of exactly these fields; 0 with TypeError set; -1. */
static int has_fields(PyTypeObject *type, PyObject *expected) {
    if (expected == NULL) return -1;
    if (!PyType_IsSubtype(type, &PyTuple_Type)) {
        PyErr_Format(PyExc_TypeError, "%s must be a named tuple", type->tp_name);
        return 0;
    }
    PyObject *fields = PyObject_GetAttrString((PyObject *)type, "_fields");
    int same = fields ? PyObject_RichCompareBool(fields, expected, Py_EQ) : -1;
    Py_XDECREF(fields);
    if (same == 0)
        PyErr_Format(PyExc_TypeError, "%s's fields are not those _native.c reads and writes",
                     type->tp_name);
    return same;
}

static PyObject *native_bind(PyObject *Py_UNUSED(module), PyObject *const *args,
                             Py_ssize_t nargs) {
    if (nargs != 4 || !PyType_Check(args[0]) || !PyType_Check(args[1]) ||
        !PyType_Check(args[2]) || !PyCallable_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "bind(Identity, InputEvent, Stamp, orjson.dumps)");
        return NULL;
    }
    PyTypeObject *ident = (PyTypeObject *)args[0], *event = (PyTypeObject *)args[1],
                 *stamp = (PyTypeObject *)args[2];
    PyObject *event_fields = Py_BuildValue("(sssssss)", "identity", "op", "ts", "event_id",
                                           "data", "misspelt", "early_ts_text");
    int ok = has_fields(event, event_fields);
    Py_XDECREF(event_fields);
    if (ok != 1) return NULL;
    PyObject *stamp_fields = Py_BuildValue(
        "(ssssssssssss)", "identity", "created_at", "expires_at", "ttl_ms", "ttl_source",
        "deleted_at", "erase_at", "held", "stamp_offset", "previous_deleted_at", "held_lives",
        "first_created_at");
    ok = has_fields(stamp, stamp_fields);
    Py_XDECREF(stamp_fields);
    if (ok != 1) return NULL;
    PyObject *defaults = PyObject_GetAttrString((PyObject *)event, "_field_defaults");
    if (defaults == NULL) return NULL;
    PyObject *misspelt = PyDict_Check(defaults) ? PyDict_GetItemString(defaults, "misspelt") : NULL;
    PyObject *early = PyDict_Check(defaults) ? PyDict_GetItemString(defaults, "early_ts_text") : NULL;
    if (misspelt == NULL || early == NULL) {
        Py_DECREF(defaults);
        PyErr_SetString(PyExc_TypeError, "InputEvent has no default misspelt or early_ts_text");
        return NULL;
    }
    Py_ssize_t offsets[IDENTITY_SLOTS];
    for (int i = 0; i < IDENTITY_SLOTS; i++) {
        PyObject *descr = PyDict_GetItemString(ident->tp_dict, slot_names[i]);
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX) {
            Py_DECREF(defaults);
            PyErr_Format(PyExc_TypeError, "Identity has no object slot %s", slot_names[i]);
            return NULL;
        }
        offsets[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    if (ident->tp_dictoffset != 0 || ident->tp_basicsize <= (Py_ssize_t)sizeof(PyObject)) {
        Py_DECREF(defaults);
        PyErr_SetString(PyExc_TypeError, "Identity must have __slots__ and no __dict__");
        return NULL;
    }
    memcpy(slot_offset, offsets, sizeof offsets);
    Py_XSETREF(misspelt_default, Py_NewRef(misspelt));
    Py_XSETREF(early_default, Py_NewRef(early));
    Py_DECREF(defaults);
    Py_XSETREF(identity_type, (PyTypeObject *)Py_NewRef(ident));
    Py_XSETREF(input_event_type, (PyTypeObject *)Py_NewRef(event));
    Py_XSETREF(stamp_type, (PyTypeObject *)Py_NewRef(stamp));
    Py_XSETREF(dumps, Py_NewRef(args[3]));
    Py_RETURN_NONE;
}

/* Every function but bind() and format_ts() needs bind() first. */
#define NEEDS_BIND(fn)                                                                   \
    static PyObject *fn##_bound(PyObject *m, PyObject *const *args, Py_ssize_t nargs) { \
        if (identity_type == NULL) {                                                   \
            PyErr_SetString(PyExc_RuntimeError, "stream_expiry._native: bind() first"); \
            return NULL;                                                               \
        }                                                                              \
        return fn(m, args, nargs);                                                     \
    }
NEEDS_BIND(native_event)
NEEDS_BIND(native_stamp)
NEEDS_BIND(native_tombstone)

static PyMethodDef methods[] = {
    {"bind", (PyCFunction)(void (*)(void))native_bind, METH_FASTCALL,
     "bind(Identity, InputEvent, Stamp, dumps): the classes and the JSON writer to use."},
    {"event", (PyCFunction)(void (*)(void))native_event_bound, METH_FASTCALL,
     "event(obj, value, categories, max_ts) -> InputEvent | None"},
    {"stamp", (PyCFunction)(void (*)(void))native_stamp_bound, METH_FASTCALL,
     "stamp(stamp, data) -> bytes | None"},
    {"tombstone", (PyCFunction)(void (*)(void))native_tombstone_bound, METH_FASTCALL,
     "tombstone(stamp, reason, emitted_at) -> bytes | None"},
    {"format_ts", native_format_ts, METH_O, "format_ts(ms) -> str | None"},
    {"stamp_reader", native_stamp_reader, METH_O,
     "stamp_reader(fallback): codec.stamp_body_fields compiled, fallback for a rare stamp"},
    {"own_time", native_own_time, METH_O, "own_time(text) -> int | None: codec.parse_own_ts"},
    {"stamp_scanner", native_stamp_scanner, METH_O,
     "stamp_scanner(fallback): codec.stamp_fields compiled, fallback for a rare stamp"},
    {"seen_keys", (PyCFunction)(void (*)(void))native_seen_keys, METH_FASTCALL,
     "seen_keys(bits, keys) -> list[int]: state.key_filter's test and set"},
    {"replay_fields", native_replay_fields, METH_O,
     "replay_fields(value) -> (created, expires, last_activity) | None: replay's verdict"},
    {"key_category", native_key_category, METH_O,
     "key_category(key) -> bytes | None: the category of a key of plain parts"},
    {"state_packer", native_state_packer, METH_O,
     "state_packer(fallback): encode_state compiled, fallback for a rare state"},
    {"timer_firer", (PyCFunction)(void (*)(void))native_timer_firer, METH_FASTCALL,
     "timer_firer(fallback, Fired): engine._fire_timer compiled, fallback for a rare timer"},
    {"timer_packer", native_timer_packer, METH_O,
     "timer_packer(fallback): engine._pack_timer compiled, fallback for a rare state"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "stream_expiry._native",
    "The per-record path's codec, compiled: see stream_expiry/native.py.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(s_category, "category");
    INTERN(s_record_id, "record_id");
    INTERN(s_org, "org");
    INTERN(s_ts, "ts");
    INTERN(s_bot, "bot");
    INTERN(s_env, "env");
    INTERN(s_op, "op");
    INTERN(s_event_id, "event_id");
    INTERN(s_data, "data");
    INTERN(default_bot, "_");
    INTERN(s_ttl, "ttl");
    INTERN(s_created_at, "created_at");
    INTERN(s_expires_at, "expires_at");
    INTERN(s_ttl_seconds, "ttl_seconds");
    INTERN(s_ttl_source, "ttl_source");
    INTERN(s_erase_requested_at, "erase_requested_at");
    INTERN(s_previous_deleted_at, "previous_deleted_at");
    INTERN(s_held_lives, "held_lives");
    INTERN(s_first_created_at, "first_created_at");
    INTERN(default_env, "live");
    INTERN(default_op, "create");
#undef INTERN
    if ((empty_tuple_ = PyTuple_New(0)) == NULL) return NULL;
    return PyModule_Create(&module);
}
