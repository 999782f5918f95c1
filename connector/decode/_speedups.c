/*
 * Native fast path of the decode step: JSON Debezium records from PostgreSQL (JsonConverter with or
 * without schemas), envelopes and rows unwrapped by ExtractNewRecordState (with `add.fields`).
 *
 * `decode_envelope(record, ctx)` returns the same `ChangeEvent` the pure Python decoder
 * (connector/decode/decoder.py) builds for the record, or None whenever the record is anything
 * but the common case: a tombstone, Avro, a key and value not both with (or both without) schemas,
 * a schema text not in JsonConverter's compact form, a truncate/message event,
 * a MySQL source, an incremental-snapshot row, a transaction-metadata topic, a missing key, a value
 * that does not convert, ... The caller then runs the Python decoder, which alone produces failures
 * and `Ignored` outcomes. So this file never decides what is an error: any doubt returns None.
 *
 * Parsing is orjson's (`ctx` carries `orjson.loads`); the work done here is what follows the parse:
 * envelope checks, the TOAST placeholder scan, the column conversions (from `source.column_types`
 * without schemas; from the record's schema, planned once per schema text, with them), the source
 * position, and building the event. Conversions without a
 * native form here call the Python converter of the column. `ctx` is built by
 * connector/decode/native.py, which documents every entry.
 *
 * Equivalence with the Python decoder is tested on every golden fixture and on generated records
 * (tests/unit/test_decode_native.py), value types and Decimal exponents included.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE /* memmem */
#include <Python.h>
#include <datetime.h>
#include <structmember.h>
#include <limits.h>
#include <string.h>

enum {
    C_LOADS,           /* orjson.loads */
    C_TOAST_SCALARS,   /* tuple: every hashable placeholder form (str and bytes) */
    C_TOAST_LISTS,     /* tuple of lists: the list forms of the placeholder */
    C_TOAST_DICT,      /* dict: the hstore-map form */
    C_UNCHANGED,       /* connector.models.UNCHANGED */
    C_PLANS,           /* dict: table -> dict: column -> (column, kind, scale, python converter) */
    C_OPS,             /* dict: "c"/"u"/"d"/"r" -> Op member (t and m are left to Python) */
    C_SNAPSHOT_TRUE,   /* frozenset: `source.snapshot` values of a snapshot row */
    C_SNAPSHOT_READS,  /* frozenset: `source.snapshot` values of an initial/blocking snapshot read */
    C_EVENT,           /* ChangeEvent */
    C_POSITION,        /* SourcePosition */
    C_REF,             /* RecordRef */
    C_PG,              /* "pg" */
    C_HEADER_KEY,      /* envelope.header_key(record, name) */
    C_DECIMAL,         /* decimal.Decimal */
    C_FROMISO,         /* datetime.datetime.fromisoformat */
    C_OP_READ,         /* Op.READ */
    C_OP_DELETE,       /* Op.DELETE */
    C_HEARTBEAT,       /* heartbeat topic prefix */
    C_OP_UPDATE,       /* Op.UPDATE */
    C_PG_LSN,          /* "pg-lsn" */
    C_TOPIC_NAMES,     /* callable: topic -> (the topic's table, its schema or None) */
    C_TOPIC_CACHE,     /* dict: topic -> what C_TOPIC_NAMES returned */
    C_SCHEMA_PLAN,     /* callable: (Connect schema, as_row, its text) -> plan dict, None, or False (Python) */
    C_ROW_PLANS,       /* dict: value schema text -> what C_SCHEMA_PLAN returned */
    C_KEY_PLANS,       /* dict: key schema text -> what C_SCHEMA_PLAN returned */
    C_COUNT
};

/* column kinds (connector/decode/native.py: KINDS) */
enum {
    K_PYTHON = 0,
    K_DATE = 1,
    K_TS_MS = 2,
    K_TS_US = 3,
    K_TS_NS = 4,
    K_ZONED = 5,
    K_DECIMAL = 6,
    K_VS_DECIMAL = 7,
    K_MICRO_TIME = 8,
    K_BYTES = 9,
    K_JSON = 10,
    K_TEXT = 11,
};

/* JSON member names, as the objects orjson's key cache hands out (see json_keys): a dict lookup
 * with the very key object the parsed dict holds matches by identity, without comparing text. */
static PyObject *j_op, *j_source, *j_before, *j_after, *j_schema, *j_payload, *j_table, *j_txId, *j_ts_ms,
    *j_snapshot, *j_sequence, *j_file, *j_pos, *j_scale, *j_value;

static PyObject *s_topic, *s_partition, *s_offset, *s_key, *s_value, *s_headers, *s_incremental, *s_oldkey,
    *s_newkey, *s_infinity, *s_neg_infinity;

#define EPOCH_ORDINAL 719163LL               /* date(1970, 1, 1).toordinal() */
#define MAX_ORDINAL 3652059LL                /* date.max.toordinal() */
#define DAY_US 86400000000LL
#define MIN_US (-62135596800000000LL)        /* datetime.min (UTC) - epoch, in microseconds */
#define MAX_US 253402300799999999LL          /* datetime.max (UTC) - epoch, in microseconds */
#define MAX_SCALE 16383
#define ENVELOPE_START "{\"before\":"
#define PG_CONNECTOR "\"connector\":\"postgresql\""
#define SCHEMA_START "{\"schema\":"

/* ---- dates and times ------------------------------------------------------------------------ */

/* Howard Hinnant's civil_from_days: days since 1970-01-01 -> proleptic Gregorian y/m/d. */
static void civil_from_days(long long z, int *y, int *m, int *d) {
    z += 719468;
    long long era = (z >= 0 ? z : z - 146096) / 146097;
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long yy = yoe + era * 400;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long long mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = (int)(yy + (*m <= 2));
}

static long long floor_div(long long a, long long b) {
    long long q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
    return q;
}

/* A UTC datetime for microseconds since the epoch; NULL without error when out of range. */
static PyObject *datetime_from_us(long long us) {
    if (us < MIN_US || us > MAX_US) return NULL;
    long long days = floor_div(us, DAY_US);
    long long rem = us - days * DAY_US;
    int y, m, d;
    civil_from_days(days, &y, &m, &d);
    long long secs = rem / 1000000;
    int usec = (int)(rem % 1000000);
    return PyDateTimeAPI->DateTime_FromDateAndTime(y, m, d, (int)(secs / 3600), (int)((secs / 60) % 60),
                                                  (int)(secs % 60), usec, PyDateTime_TimeZone_UTC,
                                                  PyDateTimeAPI->DateTimeType);
}

static const char *ascii_of(PyObject *s, Py_ssize_t *n);

static int digits_at(const char *s, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 1;
}

/* What Debezium writes for a ZonedTimestamp: `YYYY-MM-DDTHH:MM:SS[.f{1,6}]Z`, as the UTC datetime
 * `datetime.fromisoformat` gives for it (an invalid date raises its ValueError). NULL without error
 * for any other text, which goes to `fromisoformat` itself. */
static PyObject *zoned_utc(PyObject *v) {
    Py_ssize_t n;
    const char *s = ascii_of(v, &n);
    if (s == NULL || n < 20 || n > 27 || n == 21 || s[n - 1] != 'Z' || s[4] != '-' || s[7] != '-' ||
        s[10] != 'T' || s[13] != ':' || s[16] != ':')
        return NULL;
    int y, mo, d, h, mi, sec, usec = 0;
    if (!digits_at(s, 4, &y) || !digits_at(s + 5, 2, &mo) || !digits_at(s + 8, 2, &d) ||
        !digits_at(s + 11, 2, &h) || !digits_at(s + 14, 2, &mi) || !digits_at(s + 17, 2, &sec))
        return NULL;
    if (n > 20) {  /* `.` and 1..6 digits, scaled to microseconds */
        int count = (int)n - 21;
        if (s[19] != '.' || !digits_at(s + 20, count, &usec)) return NULL;
        for (int i = count; i < 6; i++) usec *= 10;
    }
    return PyDateTimeAPI->DateTime_FromDateAndTime(y, mo, d, h, mi, sec, usec, PyDateTime_TimeZone_UTC,
                                                  PyDateTimeAPI->DateTimeType);
}

/* An exact int as long long; 0 when it is not one or does not fit (no error left set). */
static int as_long_long(PyObject *v, long long *out) {
    if (!PyLong_CheckExact(v)) return 0;
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    *out = x;
    return 1;
}

/* ---- base64 and decimals -------------------------------------------------------------------- */

static int b64_digit(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/*
 * Canonical base64 (length a multiple of 4, padding only at the end, zero trailing bits) into
 * `out` (capacity `cap`); returns the byte count, or -1 for anything else, which the caller leaves
 * to Python's strict `binascii.a2b_base64` (same result on canonical input, its own error otherwise).
 */
static Py_ssize_t b64_decode(const char *s, Py_ssize_t n, unsigned char *out, Py_ssize_t cap) {
    if (n == 0 || n % 4 != 0) return -1;
    Py_ssize_t pad = 0;
    if (s[n - 1] == '=') pad = (s[n - 2] == '=') ? 2 : 1;
    Py_ssize_t size = n / 4 * 3 - pad;
    if (size > cap) return -1;
    Py_ssize_t o = 0;
    for (Py_ssize_t i = 0; i < n; i += 4) {
        int a = b64_digit((unsigned char)s[i]), b = b64_digit((unsigned char)s[i + 1]);
        int last = (i + 4 == n);
        int c = (last && pad >= 2) ? 0 : b64_digit((unsigned char)s[i + 2]);
        int d = (last && pad >= 1) ? 0 : b64_digit((unsigned char)s[i + 3]);
        if (a < 0 || b < 0 || c < 0 || d < 0) return -1;
        unsigned int triple = ((unsigned int)a << 18) | ((unsigned int)b << 12) | ((unsigned int)c << 6) | (unsigned int)d;
        if (last && pad == 2) {
            if (triple & 0xFFFF) return -1;
        } else if (last && pad == 1) {
            if (triple & 0xFF) return -1;
        }
        out[o++] = (unsigned char)(triple >> 16);
        if (o < size) out[o++] = (unsigned char)(triple >> 8);
        if (o < size) out[o++] = (unsigned char)triple;
    }
    return o;
}

/* A str's UTF-8 buffer when it is pure ASCII (base64 always is); NULL otherwise. */
static const char *ascii_of(PyObject *s, Py_ssize_t *n) {
    if (!PyUnicode_CheckExact(s) || !PyUnicode_IS_ASCII(s)) return NULL;
    *n = PyUnicode_GET_LENGTH(s);
    return (const char *)PyUnicode_DATA(s);
}

/* Connect's Decimal wire form (big-endian two's complement, <= 8 bytes) scaled by `scale`: the
 * exact `Decimal("<unscaled>E<-scale>")`, which equals `Decimal(unscaled).scaleb(-scale)` digit for
 * digit and exponent for exponent. NULL without error when the value needs Python. */
static PyObject *decimal_from_b64(PyObject *text, long long scale, PyObject *ctx) {
    Py_ssize_t n;
    const char *s = ascii_of(text, &n);
    if (s == NULL) return NULL;
    unsigned char buf[8];
    Py_ssize_t size = b64_decode(s, n, buf, 8);
    if (size <= 0) return NULL;
    unsigned long long u = (buf[0] & 0x80) ? ~0ULL : 0ULL;
    for (Py_ssize_t i = 0; i < size; i++) u = (u << 8) | buf[i];
    long long v = (long long)u;
    /* "<v>E<-scale>", formatted by hand: PyUnicode_FromFormat's printf machinery costs more */
    char digits[48];
    char *end = digits + sizeof(digits);
    char *p = end;
    long long e = -scale;
    unsigned long long mag = e < 0 ? 0ULL - (unsigned long long)e : (unsigned long long)e;
    do {
        *--p = (char)('0' + mag % 10);
        mag /= 10;
    } while (mag);
    if (e < 0) *--p = '-';
    *--p = 'E';
    mag = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        *--p = (char)('0' + mag % 10);
        mag /= 10;
    } while (mag);
    if (v < 0) *--p = '-';
    PyObject *repr = PyUnicode_FromStringAndSize(p, end - p);
    if (repr == NULL) return NULL;
    PyObject *result = PyObject_CallOneArg(PyTuple_GET_ITEM(ctx, C_DECIMAL), repr);
    Py_DECREF(repr);
    return result;
}

/* ---- one column ----------------------------------------------------------------------------- */

/* The converted value (new reference), or NULL: then the record is left to the Python decoder. */
static PyObject *convert_value(long kind, long long scale, PyObject *pyconv, PyObject *v, PyObject *ctx) {
    long long x;
    PyObject *r;
    switch (kind) {
    case K_DATE:
        if (as_long_long(v, &x) && x > -4000000 && x < 4000000) {
            long long ordinal = EPOCH_ORDINAL + x;
            if (ordinal >= 1 && ordinal <= MAX_ORDINAL) {
                int y, m, d;
                civil_from_days(x, &y, &m, &d);
                return PyDate_FromDate(y, m, d);
            }
        }
        break;
    case K_TS_MS:
        if (as_long_long(v, &x) && x > -9000000000000000LL && x < 9000000000000000LL) {
            r = datetime_from_us(x * 1000);
            if (r != NULL || PyErr_Occurred()) return r;
        }
        break;
    case K_TS_US:
        if (as_long_long(v, &x)) {
            r = datetime_from_us(x);
            if (r != NULL || PyErr_Occurred()) return r;
        }
        break;
    case K_TS_NS:
        if (as_long_long(v, &x) && x != LLONG_MAX && x != LLONG_MIN) {
            r = datetime_from_us(floor_div(x, 1000));
            if (r != NULL || PyErr_Occurred()) return r;
        }
        break;
    case K_ZONED:
        r = zoned_utc(v);
        if (r != NULL || PyErr_Occurred()) return r;
        if (PyUnicode_CheckExact(v) && PyUnicode_Compare(v, s_infinity) != 0 &&
            PyUnicode_Compare(v, s_neg_infinity) != 0) {
            r = PyObject_CallOneArg(PyTuple_GET_ITEM(ctx, C_FROMISO), v);
            if (r == NULL) return NULL;
            if (PyDateTime_Check(r) && PyDateTime_DATE_GET_TZINFO(r) == PyDateTime_TimeZone_UTC) return r;
            Py_DECREF(r);
        }
        break;
    case K_MICRO_TIME:
        if (as_long_long(v, &x) && x >= 0 && x < DAY_US) {
            long long secs = x / 1000000;
            return PyTime_FromTime((int)(secs / 3600), (int)((secs / 60) % 60), (int)(secs % 60),
                                   (int)(x % 1000000));
        }
        break;
    case K_DECIMAL:
        if (PyUnicode_CheckExact(v) && PyUnicode_GET_LENGTH(v) > 0) {
            Py_UCS4 first = PyUnicode_READ_CHAR(v, 0);
            int numeric_text = (first == '-' || (first >= '0' && first <= '9')) &&
                               PyUnicode_FindChar(v, '.', 0, PyUnicode_GET_LENGTH(v), 1) >= 0;
            if (!numeric_text) {  /* decimal.handling.mode=string texts are left to Python */
                r = decimal_from_b64(v, scale, ctx);
                if (r != NULL || PyErr_Occurred()) return r;
            }
        }
        break;
    case K_VS_DECIMAL:
        if (PyDict_CheckExact(v)) {
            PyObject *sc = PyDict_GetItemWithError(v, j_scale);
            PyObject *val = sc == NULL ? NULL : PyDict_GetItemWithError(v, j_value);
            if (PyErr_Occurred()) return NULL;
            if (val != NULL && as_long_long(sc, &x) && x >= -MAX_SCALE && x <= MAX_SCALE) {
                r = decimal_from_b64(val, x, ctx);
                if (r != NULL || PyErr_Occurred()) return r;
            }
        }
        break;
    case K_BYTES:
        if (PyUnicode_CheckExact(v)) {
            Py_ssize_t n;
            const char *s = ascii_of(v, &n);
            if (s != NULL && n > 0 && n <= 4096) {
                unsigned char buf[3072];
                Py_ssize_t size = b64_decode(s, n, buf, (Py_ssize_t)sizeof(buf));
                if (size >= 0) return PyBytes_FromStringAndSize((const char *)buf, size);
            }
        }
        break;
    case K_JSON:
        if (PyUnicode_CheckExact(v)) return PyObject_CallOneArg(PyTuple_GET_ITEM(ctx, C_LOADS), v);
        break;
    case K_TEXT:
        if (PyUnicode_CheckExact(v)) {
            Py_INCREF(v);
            return v;
        }
        return NULL;  /* Python raises the column error */
    default:
        break;
    }
    if (pyconv == Py_None) return NULL;
    return PyObject_CallOneArg(pyconv, v);
}

static int convert_column(PyObject *row, PyObject *name, PyObject *item, PyObject *step, PyObject *ctx) {
    if (item == Py_None || item == PyTuple_GET_ITEM(ctx, C_UNCHANGED)) return 0;
    long kind = PyLong_AsLong(PyTuple_GET_ITEM(step, 1));
    long long scale = PyLong_AsLongLong(PyTuple_GET_ITEM(step, 2));
    if (PyErr_Occurred()) return -1;
    PyObject *converted = convert_value(kind, scale, PyTuple_GET_ITEM(step, 3), item, ctx);
    if (converted == NULL) return -1;
    int rc = PyDict_SetItem(row, name, converted);
    Py_DECREF(converted);
    return rc;
}

/* Convert the planned columns of `row` in place (None and UNCHANGED values are left alone).
 * `plan` is a dict column -> (column, kind, scale, Python converter); the smaller side is walked. */
static int convert_row(PyObject *row, PyObject *plan, PyObject *ctx) {
    if (PyDict_GET_SIZE(row) < PyDict_GET_SIZE(plan)) {
        /* a key (one or two columns): look its columns up in the plan */
        PyObject *names = PyDict_Keys(row);
        if (names == NULL) return -1;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(names); i++) {
            PyObject *name = PyList_GET_ITEM(names, i);
            PyObject *step = PyDict_GetItemWithError(plan, name);
            if (step == NULL) {
                if (PyErr_Occurred()) break;
                continue;
            }
            PyObject *item = PyDict_GetItemWithError(row, name);
            if (item == NULL || convert_column(row, name, item, step, ctx) < 0) {
                Py_DECREF(names);
                return -1;
            }
        }
        Py_DECREF(names);
        return PyErr_Occurred() ? -1 : 0;
    }
    Py_ssize_t pos = 0;
    PyObject *name, *step;
    while (PyDict_Next(plan, &pos, &name, &step)) {
        PyObject *item = PyDict_GetItemWithError(row, name);
        if (item == NULL) {
            if (PyErr_Occurred()) return -1;
            continue;
        }
        if (convert_column(row, name, item, step, ctx) < 0) return -1;
    }
    return 0;
}

/* Whether `value` (an exact str or bytes) equals one of the hashable placeholder forms. Comparing
 * lengths first spares hashing every text of the row, which `value in set` would do. */
static int scalar_placeholder(PyObject *value, PyObject *forms) {
    Py_ssize_t n = PyTuple_GET_SIZE(forms);
    int is_text = PyUnicode_CheckExact(value);
    Py_ssize_t length = is_text ? PyUnicode_GET_LENGTH(value) : PyBytes_GET_SIZE(value);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *form = PyTuple_GET_ITEM(forms, i);
        if (is_text ? (PyUnicode_CheckExact(form) && PyUnicode_GET_LENGTH(form) == length)
                    : (PyBytes_CheckExact(form) && PyBytes_GET_SIZE(form) == length)) {
            int eq = PyObject_RichCompareBool(value, form, Py_EQ);
            if (eq != 0) return eq;
        }
    }
    return 0;
}

/* Replace TOAST placeholders (any form) with UNCHANGED, in place. */
static int substitute_toast(PyObject *row, PyObject *ctx) {
    PyObject *scalars = PyTuple_GET_ITEM(ctx, C_TOAST_SCALARS);
    PyObject *lists = PyTuple_GET_ITEM(ctx, C_TOAST_LISTS);
    PyObject *map = PyTuple_GET_ITEM(ctx, C_TOAST_DICT);
    PyObject *unchanged = PyTuple_GET_ITEM(ctx, C_UNCHANGED);
    Py_ssize_t pos = 0;
    PyObject *name, *value;
    while (PyDict_Next(row, &pos, &name, &value)) {
        int hit = 0;
        if (PyUnicode_CheckExact(value) || PyBytes_CheckExact(value)) {
            hit = scalar_placeholder(value, scalars);
        } else if (PyList_CheckExact(value)) {
            for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(lists) && hit == 0; i++) {
                PyObject *form = PyTuple_GET_ITEM(lists, i);
                if (PyList_GET_SIZE(form) == PyList_GET_SIZE(value))
                    hit = PyObject_RichCompareBool(value, form, Py_EQ);
            }
        } else if (PyDict_CheckExact(value)) {
            hit = PyObject_RichCompareBool(value, map, Py_EQ);
        }
        if (hit < 0) return -1;
        if (hit) {
            /* replacing the value of an existing key leaves the iteration valid */
            Py_INCREF(name);
            int rc = PyDict_SetItem(row, name, unchanged);
            Py_DECREF(name);
            if (rc < 0) return -1;
        }
    }
    return 0;
}

/* ---- position ------------------------------------------------------------------------------- */

/* Digits of `s[i:j]` as an int (new reference); NULL without error unless 1..25 ASCII digits. */
static PyObject *digits_int(const char *s, Py_ssize_t i, Py_ssize_t j) {
    Py_ssize_t n = j - i;
    if (n < 1 || n > 25) return NULL;
    for (Py_ssize_t k = i; k < j; k++) {
        if (s[k] < '0' || s[k] > '9') return NULL;
    }
    if (n <= 18) {
        long long v = 0;
        for (Py_ssize_t k = i; k < j; k++) v = v * 10 + (s[k] - '0');
        return PyLong_FromLongLong(v);
    }
    char buf[32];
    memcpy(buf, s + i, (size_t)n);
    buf[n] = '\0';
    return PyLong_FromString(buf, NULL, 10);
}

/* `source.sequence` in Debezium's exact form `["<digits>","<digits>"]` or `[null,"<digits>"]` as
 * the position's parts tuple; NULL (no error) for any other text, which Python then reads. */
static PyObject *sequence_parts(PyObject *sequence, PyObject *snapshot, PyObject *ctx) {
    Py_ssize_t n;
    const char *s = ascii_of(sequence, &n);
    if (s == NULL || n < 7 || s[0] != '[' || s[n - 1] != ']' || s[n - 2] != '"') return NULL;
    /* the second element: the text after the last `,"` */
    Py_ssize_t comma = -1;
    for (Py_ssize_t k = n - 3; k > 0; k--) {
        if (s[k] == '"' && s[k - 1] == ',') {
            comma = k - 1;
            break;
        }
    }
    if (comma < 0) return NULL;
    PyObject *second = digits_int(s, comma + 2, n - 2);
    if (second == NULL) return NULL;
    PyObject *first = NULL;
    if (comma == 5 && memcmp(s + 1, "null", 4) == 0) {
        int read = 0;
        if (snapshot == Py_True || PyUnicode_CheckExact(snapshot)) {
            read = PySet_Contains(PyTuple_GET_ITEM(ctx, C_SNAPSHOT_READS), snapshot);
            if (read < 0) {
                Py_DECREF(second);
                return NULL;
            }
        }
        if (read) {
            first = PyLong_FromLong(0);
        } else {
            first = second;
            Py_INCREF(first);
        }
    } else if (comma >= 3 && s[1] == '"' && s[comma - 1] == '"') {
        first = digits_int(s, 2, comma - 1);
    }
    if (first == NULL) {
        Py_DECREF(second);
        return NULL;
    }
    PyObject *parts = PyTuple_Pack(2, first, second);
    Py_DECREF(first);
    Py_DECREF(second);
    return parts;
}

/* ---- the record ----------------------------------------------------------------------------- */

/* `schema.table`; the last one is kept, so a run of records of one table shares one (hashed) str. */
static PyObject *last_schema, *last_name, *last_table;

static PyObject *table_name(PyObject *schema, PyObject *name) {
    if (last_table != NULL && PyUnicode_Compare(schema, last_schema) == 0 &&
        PyUnicode_Compare(name, last_name) == 0) {
        Py_INCREF(last_table);
        return last_table;
    }
    PyObject *table = PyUnicode_FromFormat("%U.%U", schema, name);
    if (table == NULL) return NULL;
    Py_INCREF(schema);
    Py_INCREF(name);
    Py_INCREF(table);
    Py_XSETREF(last_schema, schema);
    Py_XSETREF(last_name, name);
    Py_XSETREF(last_table, table);
    return table;
}

/* str(txId); the last one is kept: the events of one transaction arrive together. */
static PyObject *last_tx, *last_tx_text;

static PyObject *tx_text(PyObject *tx) {
    if (last_tx != NULL) {
        int eq = PyObject_RichCompareBool(tx, last_tx, Py_EQ);
        if (eq < 0) return NULL;
        if (eq) {
            Py_INCREF(last_tx_text);
            return last_tx_text;
        }
    }
    PyObject *text = PyObject_Str(tx);
    if (text == NULL) return NULL;
    Py_INCREF(tx);
    Py_INCREF(text);
    Py_XSETREF(last_tx, tx);
    Py_XSETREF(last_tx_text, text);
    return text;
}

static PyObject *dict_get(PyObject *d, PyObject *name) {
    PyObject *v = PyDict_GetItemWithError(d, name);
    return v == NULL ? Py_None : v;  /* borrowed; a lookup error is left set for the caller */
}

/* A parsed JSON document that is the `{"schema","payload"}` wrapper: left to Python. */
static int is_wrapper(PyObject *doc) {
    return PyDict_GET_SIZE(doc) == 2 && PyDict_Contains(doc, j_schema) == 1 && PyDict_Contains(doc, j_payload) == 1;
}

/* Reading RawRecord's fields: PyObject_GetAttr walks the type for every read; the fields are plain
 * object slots (member descriptors), so their offsets are looked up once per record type. */
enum { F_TOPIC, F_PARTITION, F_OFFSET, F_KEY, F_VALUE, F_HEADERS, F_COUNT };
static PyTypeObject *slots_type;
static unsigned int slots_version;  /* the type's tp_version_tag when learned: changes if the type is */
static Py_ssize_t slot_offsets[F_COUNT];

static int learn_slots(PyTypeObject *type) {
    PyObject *names[F_COUNT] = {s_topic, s_partition, s_offset, s_key, s_value, s_headers};
    Py_ssize_t offsets[F_COUNT];
    for (int i = 0; i < F_COUNT; i++) {
        PyObject *descr = _PyType_Lookup(type, names[i]);  /* borrowed */
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) return 0;
        /* a descriptor of another type (assigned to this one) describes another layout */
        if (!PyType_IsSubtype(type, PyDescr_TYPE(descr))) return 0;
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type != T_OBJECT_EX && member->type != T_OBJECT) return 0;
        offsets[i] = member->offset;
    }
    if (!(type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)) return 0;
    memcpy(slot_offsets, offsets, sizeof(offsets));
    Py_INCREF(type);
    Py_XSETREF(slots_type, type);
    slots_version = type->tp_version_tag;
    return 1;
}

/* Field `i` of the record (new reference); NULL, possibly without error, when it is not set. */
static PyObject *field(PyObject *record, int i, PyObject *name) {
    PyTypeObject *type = Py_TYPE(record);
    if ((type == slots_type && (type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) &&
         type->tp_version_tag == slots_version) ||
        learn_slots(type)) {
        PyObject *value = *(PyObject **)((char *)record + slot_offsets[i]);
        Py_XINCREF(value);
        return value;
    }
    return PyObject_GetAttr(record, name);
}

/* The row plan (borrowed: the schemaless table's from `ctx`, else `pre_plan`; NULL for no
 * conversions) into `*plan`, and the key (new reference): `pre_key`, or the record's schemaless key
 * parsed and converted with the table's plan. NULL when the record is left to Python. */
static PyObject *row_plan_and_key(PyObject *record, PyObject *ctx, PyObject *table, PyObject *pre_doc,
                                  PyObject *pre_key, PyObject *pre_plan, PyObject **plan) {
    if (pre_doc != NULL) {
        *plan = pre_plan == Py_None ? NULL : pre_plan;
        Py_INCREF(pre_key);
        return pre_key;
    }
    *plan = PyDict_GetItemWithError(PyTuple_GET_ITEM(ctx, C_PLANS), table);
    if (*plan == NULL && PyErr_Occurred()) return NULL;
    PyObject *key_b = field(record, F_KEY, s_key);
    if (key_b == NULL || !PyBytes_CheckExact(key_b)) {
        Py_XDECREF(key_b);
        return NULL;
    }
    PyObject *keydoc = PyObject_CallOneArg(PyTuple_GET_ITEM(ctx, C_LOADS), key_b);
    Py_DECREF(key_b);
    if (keydoc == NULL || !PyDict_CheckExact(keydoc) || is_wrapper(keydoc) ||
        (*plan != NULL && convert_row(keydoc, *plan, ctx) < 0)) {
        Py_XDECREF(keydoc);
        return NULL;
    }
    return keydoc;
}

/* The event from its decoded parts: the snapshot flag from `op` and `snapshot`, the record's ref and
 * its PK-change headers. New reference, or NULL. */
static PyObject *build_event(PyObject *record, PyObject *ctx, PyObject *topic, PyObject *table, PyObject *op,
                             PyObject *keydoc, PyObject *before, PyObject *after, PyObject *position,
                             PyObject *ts_ms, PyObject *snapshot, PyObject *tx_id) {
    PyObject *partition = NULL, *offset = NULL, *ref = NULL, *headers = NULL, *old_key = NULL,
             *new_key = NULL, *result = NULL;
    int is_snapshot = op == PyTuple_GET_ITEM(ctx, C_OP_READ) || snapshot == Py_True;
    if (!is_snapshot && PyUnicode_CheckExact(snapshot)) {
        is_snapshot = PySet_Contains(PyTuple_GET_ITEM(ctx, C_SNAPSHOT_TRUE), snapshot);
        if (is_snapshot < 0) goto done;
    }

    partition = field(record, F_PARTITION, s_partition);
    offset = partition == NULL ? NULL : field(record, F_OFFSET, s_offset);
    if (offset == NULL) goto done;
    PyObject *ref_args[3] = {topic, partition, offset};
    ref = PyObject_Vectorcall(PyTuple_GET_ITEM(ctx, C_REF), ref_args, 3, NULL);
    if (ref == NULL) goto done;

    headers = field(record, F_HEADERS, s_headers);
    if (headers == NULL) goto done;
    int has_headers = PyObject_IsTrue(headers);
    if (has_headers < 0) goto done;
    if (has_headers) {
        PyObject *header_key = PyTuple_GET_ITEM(ctx, C_HEADER_KEY);
        PyObject *old_args[2] = {record, s_oldkey};
        old_key = PyObject_Vectorcall(header_key, old_args, 2, NULL);
        if (old_key == NULL) goto done;
        PyObject *new_args[2] = {record, s_newkey};
        new_key = PyObject_Vectorcall(header_key, new_args, 2, NULL);
        if (new_key == NULL) goto done;
    }

    PyObject *event_args[13] = {
        table, op, keydoc, before, after, position, ts_ms, ref, is_snapshot ? Py_True : Py_False, tx_id,
        Py_False, old_key == NULL ? Py_None : old_key, new_key == NULL ? Py_None : new_key,
    };
    result = PyObject_Vectorcall(PyTuple_GET_ITEM(ctx, C_EVENT), event_args, 13, NULL);

done:
    Py_XDECREF(partition);
    Py_XDECREF(offset);
    Py_XDECREF(ref);
    Py_XDECREF(headers);
    Py_XDECREF(old_key);
    Py_XDECREF(new_key);
    return result;
}

/* `pre_doc` NULL: the value is a schemaless envelope, parsed here; else the payload of a
 * {"schema","payload"} value, with `pre_key` the key's payload (converted) and `pre_plan` the row
 * plan from the value's schema (None: no conversions). */
static PyObject *decode_env(PyObject *record, PyObject *ctx, PyObject *pre_doc, PyObject *pre_key,
                            PyObject *pre_plan) {
    PyObject *value_b = NULL, *topic = NULL, *doc = NULL, *keydoc = NULL, *table = NULL, *parts = NULL,
             *position = NULL, *tx_id = NULL, *result = NULL;

    if (pre_doc == NULL) {
        value_b = field(record, F_VALUE, s_value);
        /* JsonConverter writes an envelope's fields in schema order, `before` first; anything else
         * (tombstones, Avro, the schema wrapper, unwrapped rows) is seen here without parsing it. And
         * PostgreSQL only: MySQL envelopes would be parsed twice. */
        if (value_b == NULL || !PyBytes_CheckExact(value_b) || PyBytes_GET_SIZE(value_b) < 40 ||
            memcmp(PyBytes_AS_STRING(value_b), ENVELOPE_START, sizeof(ENVELOPE_START) - 1) != 0 ||
            memmem(PyBytes_AS_STRING(value_b), (size_t)PyBytes_GET_SIZE(value_b), PG_CONNECTOR,
                   sizeof(PG_CONNECTOR) - 1) == NULL)
            goto done;
    }
    topic = field(record, F_TOPIC, s_topic);
    if (topic == NULL || !PyUnicode_CheckExact(topic)) goto done;
    Py_ssize_t heartbeat = PyUnicode_Tailmatch(topic, PyTuple_GET_ITEM(ctx, C_HEARTBEAT), 0, PY_SSIZE_T_MAX, -1);
    if (heartbeat != 0) goto done;

    if (pre_doc == NULL) {
        doc = PyObject_CallOneArg(PyTuple_GET_ITEM(ctx, C_LOADS), value_b);
        if (doc == NULL || !PyDict_CheckExact(doc) || is_wrapper(doc)) goto done;
    } else {
        doc = pre_doc;
        Py_INCREF(doc);
    }
    PyObject *op_text = PyDict_GetItemWithError(doc, j_op);
    PyObject *source = op_text == NULL ? NULL : PyDict_GetItemWithError(doc, j_source);
    if (source == NULL || !PyUnicode_CheckExact(op_text) || !PyDict_CheckExact(source)) goto done;
    PyObject *op = PyDict_GetItemWithError(PyTuple_GET_ITEM(ctx, C_OPS), op_text);
    if (op == NULL) goto done;

    /* table: `schema.table` from the source block */
    PyObject *schema = dict_get(source, j_schema);
    PyObject *tname = dict_get(source, j_table);
    if (PyErr_Occurred() || !PyUnicode_CheckExact(schema) || !PyUnicode_CheckExact(tname) ||
        PyUnicode_GET_LENGTH(schema) == 0 || PyUnicode_GET_LENGTH(tname) == 0)
        goto done;
    table = table_name(schema, tname);
    if (table == NULL) goto done;
    PyObject *plan;
    keydoc = row_plan_and_key(record, ctx, table, pre_doc, pre_key, pre_plan, &plan);
    if (keydoc == NULL) goto done;

    /* rows */
    PyObject *before = dict_get(doc, j_before);
    PyObject *after = dict_get(doc, j_after);
    if (PyErr_Occurred()) goto done;
    if (after == Py_None && op != PyTuple_GET_ITEM(ctx, C_OP_DELETE)) goto done;
    PyObject *rows[2] = {before, after};
    for (int i = 0; i < 2; i++) {
        PyObject *row = rows[i];
        if (row == Py_None) continue;
        if (!PyDict_CheckExact(row)) goto done;
        if (substitute_toast(row, ctx) < 0) goto done;
        if (plan != NULL && convert_row(row, plan, ctx) < 0) goto done;
    }

    /* position: PostgreSQL `sequence`; MySQL, incremental snapshots and lsn-only blocks go to Python */
    PyObject *snapshot = dict_get(source, j_snapshot);
    if (PyErr_Occurred()) goto done;
    if (PyUnicode_CheckExact(snapshot) && PyUnicode_Compare(snapshot, s_incremental) == 0) goto done;
    if (PyDict_Contains(source, j_file) != 0 && PyDict_Contains(source, j_pos) != 0) goto done;
    PyObject *sequence = dict_get(source, j_sequence);
    if (PyErr_Occurred()) goto done;
    parts = sequence_parts(sequence, snapshot, ctx);
    if (parts == NULL) goto done;
    PyObject *pos_args[2] = {PyTuple_GET_ITEM(ctx, C_PG), parts};
    position = PyObject_Vectorcall(PyTuple_GET_ITEM(ctx, C_POSITION), pos_args, 2, NULL);
    if (position == NULL) goto done;

    /* transaction id: PostgreSQL `txId`; anything else goes to Python */
    PyObject *tx = dict_get(source, j_txId);
    if (PyErr_Occurred() || !PyLong_CheckExact(tx)) goto done;
    tx_id = tx_text(tx);
    if (tx_id == NULL) goto done;

    PyObject *ts_ms = dict_get(source, j_ts_ms);
    if (PyErr_Occurred()) goto done;
    if (!PyLong_CheckExact(ts_ms)) ts_ms = Py_None;

    result = build_event(record, ctx, topic, table, op, keydoc, before, after, position, ts_ms, snapshot, tx_id);

done:
    Py_XDECREF(value_b);
    Py_XDECREF(topic);
    Py_XDECREF(doc);
    Py_XDECREF(keydoc);
    Py_XDECREF(table);
    Py_XDECREF(parts);
    Py_XDECREF(position);
    Py_XDECREF(tx_id);
    return result;
}


/* ---- unwrapped rows (ExtractNewRecordState) ------------------------------------------------- */

static PyObject *u_table, *u_source_table, *u_schema, *u_source_schema, *u_op, *u_deleted,
    *u_source_txId, *u_txId, *u_source_gtid, *u_gtid, *u_source_snapshot, *u_snapshot, *u_source_ts_ms,
    *u_source_file, *u_file, *u_source_sequence, *u_sequence, *u_source_lsn, *u_lsn, *s_true, *s_t, *s_m,
    *s_r, *s_transaction_suffix;

/* `d.get(a, d.get(b, ...))`: the value of the first name present (even None); NULL when none is. */
static PyObject *first_present(PyObject *d, PyObject **names, int n) {
    for (int i = 0; i < n; i++) {
        PyObject *v = PyDict_GetItemWithError(d, names[i]);
        if (v != NULL || PyErr_Occurred()) return v;
    }
    return NULL;
}

/* position.py `_field`: `__source_<name>`, or `__<name>` when that is None or absent. Borrowed. */
static PyObject *source_field(PyObject *meta, PyObject *source_name, PyObject *name) {
    PyObject *v = PyDict_GetItemWithError(meta, source_name);
    if (v == NULL && PyErr_Occurred()) return NULL;
    if (v == NULL || v == Py_None) {
        v = PyDict_GetItemWithError(meta, name);
        if (v == NULL && !PyErr_Occurred()) v = Py_None;
    }
    return v;
}

static int nonempty_text(PyObject *v) {
    return v != NULL && PyUnicode_CheckExact(v) && PyUnicode_GET_LENGTH(v) > 0;
}

/* `pre_doc`, `pre_key`, `pre_plan`: as for decode_env. */
static PyObject *decode_flat(PyObject *record, PyObject *ctx, PyObject *pre_doc, PyObject *pre_key,
                             PyObject *pre_plan) {
    PyObject *value_b = NULL, *topic = NULL, *doc = NULL, *meta = NULL, *names = NULL, *table = NULL,
             *keydoc = NULL, *parts = NULL, *position = NULL, *result = NULL;
    PyObject *tx_id = Py_None;
    Py_INCREF(tx_id);

    if (pre_doc == NULL) {
        value_b = field(record, F_VALUE, s_value);
        if (value_b == NULL) goto done;
    }
    topic = field(record, F_TOPIC, s_topic);
    if (topic == NULL || !PyUnicode_CheckExact(topic)) goto done;
    if (PyUnicode_Tailmatch(topic, PyTuple_GET_ITEM(ctx, C_HEARTBEAT), 0, PY_SSIZE_T_MAX, -1) != 0) goto done;
    /* transaction metadata topics: Python tells BEGIN/END records from rows */
    if (PyUnicode_Tailmatch(topic, s_transaction_suffix, 0, PY_SSIZE_T_MAX, 1) != 0) goto done;

    if (pre_doc == NULL) {
        doc = PyObject_CallOneArg(PyTuple_GET_ITEM(ctx, C_LOADS), value_b);
        if (doc == NULL || !PyDict_CheckExact(doc) || is_wrapper(doc)) goto done;
    } else {
        doc = pre_doc;
        Py_INCREF(doc);
    }
    if (PyDict_Contains(doc, j_op) != 0 && PyDict_Contains(doc, j_source) != 0) goto done;  /* an envelope */
    /* MySQL rows (a binlog `__file`) go to Python before anything is converted */
    PyObject *binlog = source_field(doc, u_source_file, u_file);
    if (binlog == NULL || binlog != Py_None) goto done;

    /* table (envelope.flat_table), read before the `__` fields leave the row; PostgreSQL's `__db`
       is the database, not the schema: not read */
    PyObject *table_names[2] = {u_table, u_source_table};
    PyObject *tname = first_present(doc, table_names, 2);
    if (PyErr_Occurred()) goto done;
    PyObject *from_topic = NULL;  /* borrowed from the cache: (topic_table, topic schema) */
    int need_topic = !nonempty_text(tname);
    PyObject *schema = NULL;
    if (!need_topic) {
        PyObject *schema_names[2] = {u_schema, u_source_schema};
        schema = first_present(doc, schema_names, 2);
        if (PyErr_Occurred()) goto done;
        if (!nonempty_text(schema)) need_topic = 1;
    }
    if (need_topic) {
        PyObject *cache = PyTuple_GET_ITEM(ctx, C_TOPIC_CACHE);
        from_topic = PyDict_GetItemWithError(cache, topic);
        if (from_topic == NULL) {
            if (PyErr_Occurred()) goto done;
            PyObject *computed = PyObject_CallOneArg(PyTuple_GET_ITEM(ctx, C_TOPIC_NAMES), topic);
            if (computed == NULL) goto done;
            if (PyDict_GET_SIZE(cache) >= 1024) PyDict_Clear(cache);
            int rc = PyDict_SetItem(cache, topic, computed);
            Py_DECREF(computed);
            if (rc < 0) goto done;
            from_topic = PyDict_GetItemWithError(cache, topic);
            if (from_topic == NULL) goto done;
        }
        if (!PyTuple_CheckExact(from_topic) || PyTuple_GET_SIZE(from_topic) != 2) goto done;
    }
    if (!nonempty_text(tname)) {
        table = PyTuple_GET_ITEM(from_topic, 0);
        if (!PyUnicode_CheckExact(table)) {
            table = NULL;
            goto done;
        }
        Py_INCREF(table);
    } else {
        if (!nonempty_text(schema)) schema = PyTuple_GET_ITEM(from_topic, 1);
        if (nonempty_text(schema)) {
            table = table_name(schema, tname);
        } else if (schema == Py_None || (PyUnicode_CheckExact(schema) && PyUnicode_GET_LENGTH(schema) == 0)) {
            table = tname;
            Py_INCREF(table);
        }
        if (table == NULL) goto done;
    }
    PyObject *plan;
    keydoc = row_plan_and_key(record, ctx, table, pre_doc, pre_key, pre_plan, &plan);
    if (keydoc == NULL) goto done;

    /* the `__` fields leave the row, in their order */
    names = PyList_New(0);
    meta = PyDict_New();
    if (names == NULL || meta == NULL) goto done;
    Py_ssize_t pos = 0;
    PyObject *name, *value;
    while (PyDict_Next(doc, &pos, &name, &value)) {
        if (PyUnicode_CheckExact(name) && PyUnicode_GET_LENGTH(name) >= 2 && PyUnicode_READ_CHAR(name, 0) == '_' &&
            PyUnicode_READ_CHAR(name, 1) == '_' && PyList_Append(names, name) < 0)
            goto done;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(names); i++) {
        PyObject *n = PyList_GET_ITEM(names, i);
        PyObject *v = PyDict_GetItemWithError(doc, n);
        if (v == NULL || PyDict_SetItem(meta, n, v) < 0 || PyDict_DelItem(doc, n) < 0) goto done;
    }

    /* op: t and m are Ignored by Python; an unknown one is an upsert of unknown origin (UPDATE) */
    PyObject *op_text = PyDict_GetItemWithError(meta, u_op);
    if (op_text == NULL && PyErr_Occurred()) goto done;
    PyObject *op = NULL;
    if (op_text != NULL && PyUnicode_CheckExact(op_text)) {
        if (PyUnicode_Compare(op_text, s_t) == 0 || PyUnicode_Compare(op_text, s_m) == 0) goto done;
        op = PyDict_GetItemWithError(PyTuple_GET_ITEM(ctx, C_OPS), op_text);
        if (op == NULL && PyErr_Occurred()) goto done;
    }

    if (substitute_toast(doc, ctx) < 0) goto done;
    if (plan != NULL && convert_row(doc, plan, ctx) < 0) goto done;

    /* `__deleted in ("true", True)` (== comparisons: 1 and 1.0 count as True) or a d op */
    PyObject *deleted = PyDict_GetItemWithError(meta, u_deleted);
    if (deleted == NULL && PyErr_Occurred()) goto done;
    int is_deleted = 0;
    if (deleted != NULL) {
        if (PyUnicode_CheckExact(deleted)) {
            is_deleted = PyUnicode_Compare(deleted, s_true) == 0;
        } else {
            is_deleted = PyObject_RichCompareBool(deleted, Py_True, Py_EQ);
            if (is_deleted < 0) goto done;
        }
    }
    PyObject *op_delete = PyTuple_GET_ITEM(ctx, C_OP_DELETE);
    PyObject *before = Py_None, *after = Py_None;
    if (is_deleted || op == op_delete) {
        op = op_delete;
        before = doc;
    } else {
        if (op == NULL) op = PyTuple_GET_ITEM(ctx, C_OP_UPDATE);
        after = doc;
    }

    PyObject *tx_names[4] = {u_source_txId, u_txId, u_source_gtid, u_gtid};
    PyObject *tx = first_present(meta, tx_names, 4);
    if (PyErr_Occurred()) goto done;
    if (tx != NULL && (PyLong_CheckExact(tx) || PyUnicode_CheckExact(tx))) {
        Py_DECREF(tx_id);
        tx_id = PyUnicode_CheckExact(tx) ? (Py_INCREF(tx), tx) : tx_text(tx);
        if (tx_id == NULL) goto done;
    }
    PyObject *snap_names[2] = {u_source_snapshot, u_snapshot};
    PyObject *snapshot = first_present(meta, snap_names, 2);
    if (PyErr_Occurred()) goto done;
    if (snapshot == NULL) snapshot = Py_None;
    PyObject *ts_ms = PyDict_GetItemWithError(meta, u_source_ts_ms);
    if (ts_ms == NULL && PyErr_Occurred()) goto done;
    if (ts_ms == NULL || !PyLong_CheckExact(ts_ms)) ts_ms = Py_None;

    /* position (position.flat_position); incremental snapshots, MySQL and odd texts go to Python */
    PyObject *fsnap = source_field(meta, u_source_snapshot, u_snapshot);
    if (fsnap == NULL) goto done;
    if (PyUnicode_CheckExact(fsnap) && PyUnicode_Compare(fsnap, s_incremental) == 0) goto done;
    PyObject *file = source_field(meta, u_source_file, u_file);
    if (file == NULL || file != Py_None) goto done;
    PyObject *read_arg = fsnap;
    if (op_text != NULL && PyUnicode_CheckExact(op_text) && PyUnicode_Compare(op_text, s_r) == 0) read_arg = Py_True;
    PyObject *sequence = source_field(meta, u_source_sequence, u_sequence);
    if (sequence == NULL) goto done;
    if (PyUnicode_CheckExact(sequence)) {
        parts = sequence_parts(sequence, read_arg, ctx);
        if (parts == NULL) goto done;
        PyObject *pos_args[2] = {PyTuple_GET_ITEM(ctx, C_PG), parts};
        position = PyObject_Vectorcall(PyTuple_GET_ITEM(ctx, C_POSITION), pos_args, 2, NULL);
        if (position == NULL) goto done;
    } else {
        PyObject *lsn = source_field(meta, u_source_lsn, u_lsn);
        if (lsn == NULL || PyUnicode_Check(lsn)) goto done;  /* digit texts: Python reads them */
        if (PyLong_CheckExact(lsn)) {
            PyObject *zero = PyLong_FromLong(0);
            if (zero == NULL) goto done;
            parts = PyTuple_Pack(2, zero, lsn);
            Py_DECREF(zero);
            if (parts == NULL) goto done;
            PyObject *pos_args[2] = {PyTuple_GET_ITEM(ctx, C_PG_LSN), parts};
            position = PyObject_Vectorcall(PyTuple_GET_ITEM(ctx, C_POSITION), pos_args, 2, NULL);
            if (position == NULL) goto done;
        } else {
            position = Py_None;
            Py_INCREF(position);
        }
    }

    result = build_event(record, ctx, topic, table, op, keydoc, before, after, position, ts_ms, snapshot, tx_id);

done:
    Py_XDECREF(value_b);
    Py_XDECREF(topic);
    Py_XDECREF(doc);
    Py_XDECREF(meta);
    Py_XDECREF(names);
    Py_XDECREF(table);
    Py_XDECREF(keydoc);
    Py_XDECREF(parts);
    Py_XDECREF(position);
    Py_XDECREF(tx_id);
    return result;
}

/* ---- JsonConverter with schemas: {"schema":{...},"payload":{...}} --------------------------- */

/* The schema text of a compact wrapper, as jsonconv.parse_json keys its cache: `raw[10:start]` where
 * `start` is the last `,"payload":` after a `}`. NULL (no error) when the text is not in that form. */
static PyObject *schema_text(PyObject *raw) {
    const char *s = PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    static const char head[] = "{\"schema\":{";
    static const char tail[] = ",\"payload\":";
    Py_ssize_t t = (Py_ssize_t)sizeof(tail) - 1;
    if (n < (Py_ssize_t)sizeof(head) - 1 + t || memcmp(s, head, sizeof(head) - 1) != 0) return NULL;
    for (Py_ssize_t end = n - t; end > 10; end--) {
        if (memcmp(s + end, tail, (size_t)t) == 0) {
            if (s[end - 1] != '}') return NULL;
            return PyBytes_FromStringAndSize(s + 10, end - 10);
        }
    }
    return NULL;
}

/* The payload of a wrapper (borrowed from `*doc`, which receives the parsed document) and its plan
 * (a new reference: a dict, or None for no conversions; the cache may be cleared while Python code
 * runs, e.g. a converter or another thread). 0 when the record is left to Python. */
static int unwrap(PyObject *raw, PyObject *ctx, int as_row, PyObject **doc, PyObject **payload, PyObject **plan) {
    *doc = PyObject_CallOneArg(PyTuple_GET_ITEM(ctx, C_LOADS), raw);
    if (*doc == NULL || !PyDict_CheckExact(*doc) || !is_wrapper(*doc)) return 0;
    PyObject *schema = PyDict_GetItemWithError(*doc, j_schema);
    *payload = schema == NULL ? NULL : PyDict_GetItemWithError(*doc, j_payload);
    if (*payload == NULL || !PyDict_CheckExact(*payload)) return 0;
    if (schema == Py_None) {
        Py_INCREF(Py_None);
        *plan = Py_None;  /* JsonConverter's null schema: values as JSON gave them */
        return 1;
    }
    PyObject *key = schema_text(raw);
    if (key == NULL) return 0;
    PyObject *cache = PyTuple_GET_ITEM(ctx, as_row ? C_ROW_PLANS : C_KEY_PLANS);
    PyObject *found = PyDict_GetItemWithError(cache, key);
    if (found != NULL) {
        Py_INCREF(found);
    } else if (!PyErr_Occurred()) {
        /* schema_plan checks that the text is the schema orjson kept (a second "schema" member
         * after the payload would otherwise cache another schema's plan under this text) */
        PyObject *args[3] = {schema, as_row ? Py_True : Py_False, key};
        found = PyObject_Vectorcall(PyTuple_GET_ITEM(ctx, C_SCHEMA_PLAN), args, 3, NULL);
        if (found != NULL && found != Py_False) {
            if (PyDict_GET_SIZE(cache) >= 512) PyDict_Clear(cache);
            if (PyDict_SetItem(cache, key, found) < 0) Py_CLEAR(found);
        }
    }
    Py_DECREF(key);
    if (found == NULL) return 0;
    if (found == Py_False) {  /* a schema Python must read */
        Py_DECREF(found);
        return 0;
    }
    *plan = found;
    return 1;
}

static PyObject *decode_wrapped(PyObject *record, PyObject *ctx) {
    PyObject *value_b = NULL, *key_b = NULL, *doc = NULL, *keydoc = NULL, *result = NULL;
    PyObject *payload = NULL, *plan = NULL, *key_payload = NULL, *key_plan = NULL;
    value_b = field(record, F_VALUE, s_value);
    key_b = value_b == NULL ? NULL : field(record, F_KEY, s_key);
    if (key_b == NULL || !PyBytes_CheckExact(value_b) || !PyBytes_CheckExact(key_b)) goto done;
    /* both sides with schemas (the converters' usual pairing); anything else goes to Python */
    if (PyBytes_GET_SIZE(key_b) < (Py_ssize_t)sizeof(SCHEMA_START) - 1 ||
        memcmp(PyBytes_AS_STRING(key_b), SCHEMA_START, sizeof(SCHEMA_START) - 1) != 0)
        goto done;
    if (!unwrap(value_b, ctx, 1, &doc, &payload, &plan)) goto done;
    int envelope = PyDict_Contains(payload, j_op) == 1 && PyDict_Contains(payload, j_source) == 1;
    if (envelope && memmem(PyBytes_AS_STRING(value_b), (size_t)PyBytes_GET_SIZE(value_b), PG_CONNECTOR,
                           sizeof(PG_CONNECTOR) - 1) == NULL)
        goto done;  /* MySQL and others */
    if (!unwrap(key_b, ctx, 0, &keydoc, &key_payload, &key_plan)) goto done;
    if (key_plan != Py_None && convert_row(key_payload, key_plan, ctx) < 0) goto done;
    result = envelope ? decode_env(record, ctx, payload, key_payload, plan)
                      : decode_flat(record, ctx, payload, key_payload, plan);
done:
    Py_XDECREF(value_b);
    Py_XDECREF(key_b);
    Py_XDECREF(doc);
    Py_XDECREF(keydoc);
    Py_XDECREF(plan);
    Py_XDECREF(key_plan);
    return result;
}

/* Which path a value takes, from its first bytes: 1 envelope, 2 unwrapped row, 3 with schemas, 0 Python. */
static PyObject *decode_impl(PyObject *record, PyObject *ctx) {
    PyObject *value_b = field(record, F_VALUE, s_value);
    if (value_b == NULL) return NULL;
    int kind = 0;
    if (PyBytes_CheckExact(value_b) && PyBytes_GET_SIZE(value_b) >= 2 && PyBytes_AS_STRING(value_b)[0] == '{') {
        const char *s = PyBytes_AS_STRING(value_b);
        size_t n = (size_t)PyBytes_GET_SIZE(value_b);
        if (n >= sizeof(ENVELOPE_START) - 1 && memcmp(s, ENVELOPE_START, sizeof(ENVELOPE_START) - 1) == 0) {
            kind = 1;
        } else if (n >= sizeof(SCHEMA_START) - 1 && memcmp(s, SCHEMA_START, sizeof(SCHEMA_START) - 1) == 0) {
            kind = 3;
        } else if (memmem(s, n, "\"__", 3) != NULL) {
            kind = 2;  /* add.fields: `__op`, `__table`, `__lsn`, ... */
        }
    }
    Py_DECREF(value_b);
    switch (kind) {
    case 1:
        return decode_env(record, ctx, NULL, NULL, NULL);
    case 2:
        return decode_flat(record, ctx, NULL, NULL, NULL);
    case 3:
        return decode_wrapped(record, ctx);
    default:
        return NULL;
    }
}

static PyObject *decode_envelope(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 || !PyTuple_CheckExact(args[1]) || PyTuple_GET_SIZE(args[1]) != C_COUNT) {
        PyErr_SetString(PyExc_TypeError, "decode_envelope(record, ctx): ctx from connector.decode.native");
        return NULL;
    }
    PyObject *result = decode_impl(args[0], args[1]);
    if (result == NULL) {
        /* KeyboardInterrupt, SystemExit and the like propagate, as from the Python decoder */
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_Exception)) return NULL;
        /* not the common case, or a value that does not convert: the Python decoder decides */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return result;
}

/* ---- connector.jsonvalues.json_row -------------------------------------------------------------- */

static inline int json_native(PyObject *v) {
    PyTypeObject *t = Py_TYPE(v);
    return t == &PyUnicode_Type || t == &PyLong_Type || t == &PyFloat_Type || v == Py_None || t == &PyBool_Type;
}

/* json_row(row, json_value): `row` itself when every value is a str, int, float, bool or None (the
 * exact types); otherwise a new dict, same keys in the same order, with `json_value(v)` for each
 * other value. The same result as the Python loop of connector/jsonvalues.py, which it replaces. */
static PyObject *json_row(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 || !PyDict_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "json_row(row: dict, json_value)");
        return NULL;
    }
    PyObject *row = args[0], *convert = args[1], *key, *value;
    Py_ssize_t pos = 0;
    int native = 1;
    while (PyDict_Next(row, &pos, &key, &value)) {
        if (!json_native(value)) {
            native = 0;
            break;
        }
    }
    if (native) return Py_NewRef(row);
    PyObject *out = PyDict_New();
    if (out == NULL) return NULL;
    pos = 0;
    while (PyDict_Next(row, &pos, &key, &value)) {
        PyObject *item = json_native(value) ? Py_NewRef(value) : PyObject_CallOneArg(convert, value);
        if (item == NULL || PyDict_SetItem(out, key, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"decode_envelope", (PyCFunction)(void (*)(void))decode_envelope, METH_FASTCALL,
     "decode_envelope(record, ctx) -> ChangeEvent | None\n\n"
     "The event of a JSON PostgreSQL envelope or unwrapped row, or None: decode it in Python."},
    {"json_row", (PyCFunction)(void (*)(void))json_row, METH_FASTCALL,
     "json_row(row, json_value) -> dict\n\n"
     "`row` when all its values are JSON-native, else a copy with json_value(v) for the others."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "connector.decode._speedups",
    "Native fast path of the decode step (JSON PostgreSQL records).", -1, methods, NULL, NULL, NULL, NULL,
};

#define INTERN(var, text)                                   \
    do {                                                    \
        var = PyUnicode_InternFromString(text);             \
        if (var == NULL) return NULL;                       \
    } while (0)

/* The layout of `ctx` and of the plans; connector/decode/native.py refuses any other (a stale build). */
#define LAYOUT 5

/* The j_* names from orjson itself (its cache returns one object per short key). Plain interned
 * strings would work too, only slower; a key evicted from orjson's cache later just loses the
 * identity shortcut. */
static int json_keys(void) {
    static const char *names[] = {"op", "source", "before", "after", "schema", "payload", "table", "txId",
                                  "ts_ms", "snapshot", "sequence", "file", "pos", "scale", "value"};
    PyObject **slots[] = {&j_op, &j_source, &j_before, &j_after, &j_schema, &j_payload, &j_table, &j_txId,
                          &j_ts_ms, &j_snapshot, &j_sequence, &j_file, &j_pos, &j_scale, &j_value};
    const size_t count = sizeof(names) / sizeof(names[0]);
    PyObject *doc = NULL;
    PyObject *orjson = PyImport_ImportModule("orjson");
    if (orjson != NULL) {
        char text[512] = "{";
        for (size_t i = 0; i < count; i++) {
            strcat(text, i ? ",\"" : "\"");
            strcat(text, names[i]);
            strcat(text, "\":0");
        }
        strcat(text, "}");
        doc = PyObject_CallMethod(orjson, "loads", "y", text);
        Py_DECREF(orjson);
    }
    if (doc == NULL || !PyDict_CheckExact(doc) || (size_t)PyDict_GET_SIZE(doc) != count) {
        PyErr_Clear();
        Py_XDECREF(doc);
        for (size_t i = 0; i < count; i++) {
            *slots[i] = PyUnicode_InternFromString(names[i]);
            if (*slots[i] == NULL) return -1;
        }
        return 0;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    for (size_t i = 0; PyDict_Next(doc, &pos, &key, &value); i++) {
        Py_INCREF(key);
        *slots[i] = key;
    }
    Py_DECREF(doc);
    return 0;
}

PyMODINIT_FUNC PyInit__speedups(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) return NULL;
    INTERN(s_topic, "topic");
    INTERN(s_partition, "partition");
    INTERN(s_offset, "offset");
    INTERN(s_key, "key");
    INTERN(s_value, "value");
    INTERN(s_headers, "headers");
    INTERN(s_incremental, "incremental");
    INTERN(s_oldkey, "__debezium.oldkey");
    INTERN(s_newkey, "__debezium.newkey");
    INTERN(s_infinity, "infinity");
    INTERN(s_neg_infinity, "-infinity");
    INTERN(u_table, "__table");
    INTERN(u_source_table, "__source_table");
    INTERN(u_schema, "__schema");
    INTERN(u_source_schema, "__source_schema");
    INTERN(u_op, "__op");
    INTERN(u_deleted, "__deleted");
    INTERN(u_source_txId, "__source_txId");
    INTERN(u_txId, "__txId");
    INTERN(u_source_gtid, "__source_gtid");
    INTERN(u_gtid, "__gtid");
    INTERN(u_source_snapshot, "__source_snapshot");
    INTERN(u_snapshot, "__snapshot");
    INTERN(u_source_ts_ms, "__source_ts_ms");
    INTERN(u_source_file, "__source_file");
    INTERN(u_file, "__file");
    INTERN(u_source_sequence, "__source_sequence");
    INTERN(u_sequence, "__sequence");
    INTERN(u_source_lsn, "__source_lsn");
    INTERN(u_lsn, "__lsn");
    INTERN(s_true, "true");
    INTERN(s_t, "t");
    INTERN(s_m, "m");
    INTERN(s_r, "r");
    INTERN(s_transaction_suffix, ".transaction");
    if (json_keys() < 0) return NULL;
    PyObject *mod = PyModule_Create(&module);
    if (mod != NULL && PyModule_AddIntConstant(mod, "LAYOUT", LAYOUT) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
