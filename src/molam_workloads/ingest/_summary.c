/* The consumer's per-event work, compiled: decode, validate, dedupe and sum a batch.
 *
 * Why C: in Python this work cost the consumer more CPU per event than PostgreSQL's whole
 * share (docs/decisions/004-compiled-summary.md).
 *
 * Two doors in, one aggregation:
 * - Summary.feed() reads raw message values itself, but only what it is certain about: the
 *   plain form producers send (ASCII, no escapes, canonical RFC 3339 times, decimal money, no
 *   duplicate fields...). It stops at the first value it is not sure of, and the caller
 *   decides that one with core.events.decode_event (the pydantic model stays the single
 *   definition of a valid event; tests check that feed() only takes what the model takes,
 *   with the same values).
 * - Summary.add() takes an event the model validated, as plain fields.
 * Both end in accumulate(): dedupe by txn_id (first wins; a later copy whose content differs is
 * a conflicting duplicate, which the caller dead-letters), then the event's measures added to
 * its hourly bucket and, from ``since`` on (always, without one), to its minute bucket, as
 * exact integers of storage's smallest unit of money (an event fits in 64 bits, a batch's
 * sums in 128).
 *
 * The measures' names and order, the kinds, the currencies and the event's limits (sizes,
 * money's digits and places) come from core.measures and core.events through configure();
 * none of them is written again here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef unsigned __int128 u128;

#define MAX_MEASURES 32
#define MAX_KINDS 8
#define MAX_DEPTH 32
#define US_PER_MINUTE INT64_C(60000000)
#define US_PER_HOUR INT64_C(3600000000)
#define US_PER_DAY INT64_C(86400000000)
/* Instants the civil-time arithmetic and the output's %04d years hold: 0001-01-01 to the end
 * of 9999 (days_from_civil(1, 1, 1) = -719162 and days_from_civil(10000, 1, 1) = 2932897). */
#define MIN_AT_US (INT64_C(-719162) * US_PER_DAY)
#define MAX_AT_US (INT64_C(2932897) * US_PER_DAY - 1)

/* ---- layout, from configure() ---- */
static int configured;
static int n_measures, i_tx, i_gross, i_fee, succeeded;
static int n_statuses, n_types;
static int i_status_count[MAX_KINDS], i_type_count[MAX_KINDS], i_type_volume[MAX_KINDS];
static unsigned char is_money[MAX_MEASURES];
static char status_name[MAX_KINDS][16], type_name[MAX_KINDS][16];
static PyObject *currencies; /* frozenset of ISO 4217 codes */
static Py_ssize_t max_event_bytes, max_id_chars, max_label_chars;
static int money_digits, money_places; /* amounts < 10**money_digits, money_places decimals */
static uint64_t unit_scale;            /* 10**money_places: money in the smallest unit */
static uint64_t max_units;             /* 10**(money_digits + money_places): above any amount */

typedef struct {
    PyObject *txn, *event, *merchant, *country, *currency, *channel; /* merchant: str or None */
    int64_t at;                                                      /* UTC, epoch microseconds */
    uint64_t amount, fee;                                            /* units of 1e-4 */
    uint8_t status, type;
} Rec;

typedef struct {
    int64_t bucket;
    PyObject *key; /* (bucket, merchant, country, currency, channel), owned */
    u128 m[MAX_MEASURES];
} Group;

typedef struct {
    PyObject *index; /* key tuple -> position in groups */
    Group *groups;
    Py_ssize_t n, cap;
} Table;

typedef struct {
    PyObject_HEAD
    int has_since;
    int64_t since;
    PyObject *txns; /* txn id taken so far -> its record's position in recs */
    Rec *recs;
    Py_ssize_t n, cap;
    Table hourly, minute;
} Summary;

static PyTypeObject SummaryType;
static void rec_clear(Rec *r);

/* ---- civil time ---- */

static int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int *y, int *m, int *d) {
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = (int)(yoe + era * 400 + (*m <= 2));
}

static int days_in_month(int y, int m) {
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) return 29;
    return days[m - 1];
}

static int64_t floor_to(int64_t us, int64_t unit) {
    int64_t q = us / unit;
    if (us % unit < 0) q -= 1;
    return q * unit;
}

/* ---- the scanner: a strict JSON subset; 0 means "not sure", never an error ---- */

typedef struct {
    const char *p;
    Py_ssize_t n;
    int present, is_null, is_string;
} Span;

static const char *skip_ws(const char *p, const char *e) {
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* p at the opening quote; ASCII printable only, no escapes (anything else: not sure). */
static const char *scan_string(const char *p, const char *e, Span *out) {
    const char *start = ++p;
    while (p < e && *p != '"') {
        unsigned char c = (unsigned char)*p;
        if (c < 0x20 || c >= 0x7f || c == '\\') return NULL;
        p++;
    }
    if (p >= e) return NULL;
    if (out) {
        out->p = start;
        out->n = p - start;
        out->is_string = 1;
    }
    return p + 1;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* A JSON number (RFC 8259 grammar: no leading zeros); *has_exp says if it had an exponent. */
static const char *scan_number(const char *p, const char *e, int *has_exp) {
    *has_exp = 0;
    if (p < e && *p == '-') p++;
    if (p >= e) return NULL;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < e && is_digit(*p)) p++;
    } else {
        return NULL;
    }
    if (p < e && *p == '.') {
        p++;
        if (p >= e || !is_digit(*p)) return NULL;
        while (p < e && is_digit(*p)) p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        *has_exp = 1;
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        if (p >= e || !is_digit(*p)) return NULL;
        while (p < e && is_digit(*p)) p++;
    }
    return p;
}

static const char *skip_value(const char *p, const char *e, int depth) {
    int has_exp;
    if (p >= e || depth > MAX_DEPTH) return NULL;
    switch (*p) {
    case '"':
        return scan_string(p, e, NULL);
    case '{':
    case '[': {
        char close = *p == '{' ? '}' : ']';
        int object = *p == '{';
        p = skip_ws(p + 1, e);
        if (p < e && *p == close) return p + 1;
        for (;;) {
            if (object) {
                if (p >= e || *p != '"') return NULL;
                p = scan_string(p, e, NULL);
                if (!p) return NULL;
                p = skip_ws(p, e);
                if (p >= e || *p != ':') return NULL;
                p = skip_ws(p + 1, e);
            }
            p = skip_value(p, e, depth + 1);
            if (!p) return NULL;
            p = skip_ws(p, e);
            if (p < e && *p == ',') {
                p = skip_ws(p + 1, e);
                continue;
            }
            if (p < e && *p == close) return p + 1;
            return NULL;
        }
    }
    case 't':
        return e - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
    case 'f':
        return e - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
    case 'n':
        return e - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
    default:
        return scan_number(p, e, &has_exp);
    }
}

/* Money: digits, optionally '.' and digits, as a string or a JSON number (no sign, no
 * exponent; scan_number already refused a JSON number's leading zeros). Taken only when
 * storage holds it exactly and it is under the model's maximum. */
static int money_units(const Span *s, uint64_t *units) {
    const char *p = s->p, *e = s->p + s->n;
    const char *int_start = p;
    while (p < e && is_digit(*p)) p++;
    if (p == int_start) return 0;
    const char *int_end = p;
    const char *frac_start = NULL, *frac_end = NULL;
    if (p < e && *p == '.') {
        frac_start = ++p;
        while (p < e && is_digit(*p)) p++;
        if (p == frac_start) return 0;
        frac_end = p;
    }
    if (p != e) return 0;
    while (int_start < int_end - 1 && *int_start == '0') int_start++;
    if (int_end - int_start > money_digits) return 0;
    if (frac_start) {
        while (frac_end > frac_start && frac_end[-1] == '0') frac_end--;
        if (frac_end - frac_start > money_places) return 0;
    }
    uint64_t v = 0;
    for (const char *q = int_start; q < int_end; q++) v = v * 10 + (uint64_t)(*q - '0');
    int places = 0;
    for (const char *q = frac_start; q && q < frac_end; q++, places++)
        v = v * 10 + (uint64_t)(*q - '0');
    for (; places < money_places; places++) v *= 10;
    *units = v;
    return 1;
}

static int two(const char *p, int *out) {
    if (!is_digit(p[0]) || !is_digit(p[1])) return 0;
    *out = (p[0] - '0') * 10 + (p[1] - '0');
    return 1;
}

/* YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|+HH:MM|-HH:MM), as core.events' canonical form. */
static int timestamp_us(const Span *s, int64_t *out) {
    const char *p = s->p, *e = s->p + s->n;
    int y1, y2, mo, d, h, mi, sec, oh = 0, om = 0;
    int64_t frac = 0;
    if (s->n < 20) return 0;
    if (!two(p, &y1) || !two(p + 2, &y2) || p[4] != '-' || !two(p + 5, &mo) || p[7] != '-' ||
        !two(p + 8, &d) || p[10] != 'T' || !two(p + 11, &h) || p[13] != ':' ||
        !two(p + 14, &mi) || p[16] != ':' || !two(p + 17, &sec))
        return 0;
    int y = y1 * 100 + y2;
    p += 19;
    if (p < e && *p == '.') {
        p++;
        int digits = 0;
        while (p < e && is_digit(*p) && digits < 7) {
            frac = frac * 10 + (*p - '0');
            p++;
            digits++;
        }
        if (digits < 1 || digits > 6) return 0;
        for (; digits < 6; digits++) frac *= 10;
    }
    if (p >= e) return 0;
    int sign = 0;
    if (*p == 'Z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        sign = *p == '+' ? 1 : -1;
        if (e - p < 6 || !two(p + 1, &oh) || p[3] != ':' || !two(p + 4, &om)) return 0;
        p += 6;
    } else {
        return 0;
    }
    if (p != e) return 0;
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 ||
        sec > 59 || oh > 14 || om > 59)
        return 0;
    int64_t us = days_from_civil(y, mo, d) * US_PER_DAY +
                 ((int64_t)h * 3600 + (int64_t)mi * 60 + sec) * INT64_C(1000000) + frac;
    us -= (int64_t)sign * ((int64_t)oh * 3600 + (int64_t)om * 60) * INT64_C(1000000);
    *out = us;
    return 1;
}

/* An identifier as the model's: 1..max characters, nothing to strip at either end. */
static int ident(const Span *s, Py_ssize_t max) {
    return s->present && s->is_string && s->n >= 1 && s->n <= max && s->p[0] != ' ' &&
           s->p[s->n - 1] != ' ';
}

static int upper_letters(const Span *s, Py_ssize_t n) {
    if (!s->present || !s->is_string || s->n != n) return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (s->p[i] < 'A' || s->p[i] > 'Z') return 0;
    return 1;
}

/* Whether the n bytes at p are exactly ``name``. */
static int same(const char *p, Py_ssize_t n, const char *name) {
    return (size_t)n == strlen(name) && memcmp(p, name, (size_t)n) == 0;
}

static int kind_of(const Span *s, char names[][16], int count) {
    if (!s->present || !s->is_string) return -1;
    for (int i = 0; i < count; i++)
        if (same(s->p, s->n, names[i])) return i;
    return -1;
}

enum { F_EVENT, F_TXN, F_MERCHANT, F_AT, F_AMOUNT, F_CURRENCY, F_COUNTRY, F_CHANNEL, F_TYPE,
       F_STATUS, F_FEE, N_FIELDS };
static const char *field_names[N_FIELDS] = {"event_id", "txn_id",  "merchant_id", "occurred_at",
                                            "amount",   "currency", "country",     "channel",
                                            "type",     "status",   "fee"};

static int field_of(const char *p, Py_ssize_t n) {
    for (int i = 0; i < N_FIELDS; i++)
        if (same(p, n, field_names[i])) return i;
    return -1;
}

static PyObject *ascii(const Span *s) { return PyUnicode_DecodeASCII(s->p, s->n, NULL); }

/* 1: taken into *r (new references); 0: not sure; -1: Python error. */
static int scan_event(const char *buf, Py_ssize_t len, int64_t lo, int64_t hi, Rec *r) {
    Span f[N_FIELDS];
    memset(f, 0, sizeof f);
    memset(r, 0, sizeof *r);
    const char *p = buf, *e = buf + len;
    p = skip_ws(p, e);
    if (p >= e || *p != '{') return 0;
    p = skip_ws(p + 1, e);
    if (p < e && *p == '}') return 0; /* no fields: the model says which are missing */
    for (;;) {
        Span key;
        if (p >= e || *p != '"') return 0;
        p = scan_string(p, e, &key);
        if (!p) return 0;
        p = skip_ws(p, e);
        if (p >= e || *p != ':') return 0;
        p = skip_ws(p + 1, e);
        int i = field_of(key.p, key.n);
        if (i < 0) {
            p = skip_value(p, e, 1);
            if (!p) return 0;
        } else {
            Span *v = &f[i];
            if (v->present) return 0; /* a field twice: JSON parsers disagree on which wins */
            v->present = 1;
            if (p < e && *p == '"') {
                p = scan_string(p, e, v);
            } else if (p < e && *p == 'n') {
                p = skip_value(p, e, 1);
                v->is_null = 1;
            } else {
                int has_exp;
                const char *start = p;
                p = scan_number(p, e, &has_exp);
                if (!p || has_exp) return 0;
                v->p = start;
                v->n = p - start;
            }
            if (!p) return 0;
        }
        p = skip_ws(p, e);
        if (p < e && *p == ',') {
            p = skip_ws(p + 1, e);
            continue;
        }
        if (p < e && *p == '}') break;
        return 0;
    }
    if (skip_ws(p + 1, e) != e) return 0;

    /* The model's checks, strictest reading. */
    if (!ident(&f[F_EVENT], max_id_chars) || !ident(&f[F_TXN], max_id_chars) ||
        !ident(&f[F_CHANNEL], max_label_chars))
        return 0;
    Span *mer = &f[F_MERCHANT];
    if (mer->present && !mer->is_null && !ident(mer, max_id_chars)) return 0;
    if (!upper_letters(&f[F_CURRENCY], 3) || !upper_letters(&f[F_COUNTRY], 2)) return 0;
    int type = kind_of(&f[F_TYPE], type_name, n_types);
    int status = kind_of(&f[F_STATUS], status_name, n_statuses);
    if (type < 0 || status < 0) return 0;
    int64_t at;
    if (!f[F_AT].present || !f[F_AT].is_string || !timestamp_us(&f[F_AT], &at)) return 0;
    if (at < lo || at > hi) return 0;
    uint64_t amount, fee = 0;
    if (!f[F_AMOUNT].present || f[F_AMOUNT].is_null || !money_units(&f[F_AMOUNT], &amount) ||
        amount == 0)
        return 0;
    if (f[F_FEE].present && (f[F_FEE].is_null || !money_units(&f[F_FEE], &fee))) return 0;

    r->currency = ascii(&f[F_CURRENCY]);
    if (!r->currency) return -1;
    int known = PySet_Contains(currencies, r->currency);
    if (known <= 0) {
        rec_clear(r);
        return known; /* unknown: the model's error message */
    }
    r->txn = ascii(&f[F_TXN]);
    r->event = ascii(&f[F_EVENT]);
    r->country = ascii(&f[F_COUNTRY]);
    r->channel = ascii(&f[F_CHANNEL]);
    if (mer->present && !mer->is_null) {
        r->merchant = ascii(mer);
    } else {
        r->merchant = Py_None;
        Py_INCREF(Py_None);
    }
    if (!r->txn || !r->event || !r->country || !r->channel || !r->merchant) {
        rec_clear(r);
        return -1;
    }
    r->at = at;
    r->amount = amount;
    r->fee = fee;
    r->status = (uint8_t)status;
    r->type = (uint8_t)type;
    return 1;
}

/* ---- aggregation ---- */

/* One more reference to each of r's objects (a record copied or taken from arguments). */
static void rec_hold(Rec *r) {
    Py_INCREF(r->txn);
    Py_INCREF(r->event);
    Py_INCREF(r->merchant);
    Py_INCREF(r->country);
    Py_INCREF(r->currency);
    Py_INCREF(r->channel);
}

static void rec_clear(Rec *r) {
    Py_XDECREF(r->txn);
    Py_XDECREF(r->event);
    Py_XDECREF(r->merchant);
    Py_XDECREF(r->country);
    Py_XDECREF(r->currency);
    Py_XDECREF(r->channel);
}

/* Room for one more of n items of ``size`` bytes in *items (capacity *cap, doubled when full,
 * ``first`` to start with); -1 with MemoryError set. */
static int room_for_one(void **items, Py_ssize_t n, Py_ssize_t *cap, size_t size,
                        Py_ssize_t first) {
    if (n < *cap) return 0;
    Py_ssize_t more = *cap ? *cap * 2 : first;
    void *grown = PyMem_Realloc(*items, (size_t)more * size);
    if (!grown) {
        PyErr_NoMemory();
        return -1;
    }
    *items = grown;
    *cap = more;
    return 0;
}

static int table_init(Table *t) {
    t->index = PyDict_New();
    t->groups = NULL;
    t->n = t->cap = 0;
    return t->index ? 0 : -1;
}

static void table_clear(Table *t) {
    Py_CLEAR(t->index);
    for (Py_ssize_t i = 0; i < t->n; i++) Py_XDECREF(t->groups[i].key);
    PyMem_Free(t->groups);
    t->groups = NULL;
    t->n = t->cap = 0;
}

/* The group of ``r`` at ``bucket``, created when missing if ``create``; NULL with an error set
 * (or, not creating, with none when there is no such group). */
static Group *group_of(Table *t, int64_t bucket, const Rec *r, int create) {
    PyObject *b = PyLong_FromLongLong(bucket);
    if (!b) return NULL;
    PyObject *key = PyTuple_Pack(5, b, r->merchant, r->country, r->currency, r->channel);
    Py_DECREF(b);
    if (!key) return NULL;
    PyObject *found = PyDict_GetItemWithError(t->index, key);
    if (found) {
        Py_DECREF(key);
        return &t->groups[PyLong_AsSsize_t(found)];
    }
    if (PyErr_Occurred() || !create) {
        Py_DECREF(key);
        return NULL;
    }
    void *groups = t->groups;
    if (room_for_one(&groups, t->n, &t->cap, sizeof(Group), 64) < 0) {
        Py_DECREF(key);
        return NULL;
    }
    t->groups = groups;
    PyObject *pos = PyLong_FromSsize_t(t->n);
    if (!pos || PyDict_SetItem(t->index, key, pos) < 0) {
        Py_XDECREF(pos);
        Py_DECREF(key);
        return NULL;
    }
    Py_DECREF(pos);
    Group *g = &t->groups[t->n++];
    memset(g, 0, sizeof *g);
    g->bucket = bucket;
    g->key = key; /* the reference PyTuple_Pack gave */
    return g;
}

/* Adds r's measures to g, or takes them away (they were added before: no sum goes negative).
 * A group whose tx_count is back to 0 is left out of every output. */
static void count_in(Group *g, const Rec *r, int away) {
    u128 *m = g->m;
    u128 one = 1, amount = r->amount, fee = r->fee;
    if (away) {
        one = -one;
        amount = -amount;
        fee = -fee;
    }
    m[i_tx] += one;
    m[i_gross] += amount;
    m[i_status_count[r->status]] += one;
    if (r->status == succeeded) {
        m[i_type_count[r->type]] += one;
        m[i_type_volume[r->type]] += amount;
        m[i_fee] += fee;
    }
}

static int table_add(Table *t, int64_t bucket, const Rec *r) {
    Group *g = group_of(t, bucket, r, 1);
    if (!g) return -1;
    count_in(g, r, 0);
    return 0;
}

static int table_remove(Table *t, int64_t bucket, const Rec *r) {
    Group *g = group_of(t, bucket, r, 0);
    if (!g) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_AssertionError, "no group for a record");
        return -1;
    }
    count_in(g, r, 1);
    return 0;
}

static int table_copy(Table *dst, const Table *src) {
    dst->index = PyDict_Copy(src->index);
    if (!dst->index) return -1;
    Py_ssize_t cap = src->n ? src->n : 1;
    dst->groups = PyMem_Malloc((size_t)cap * sizeof(Group));
    if (!dst->groups) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(dst->groups, src->groups, (size_t)src->n * sizeof(Group));
    for (Py_ssize_t i = 0; i < src->n; i++) Py_INCREF(dst->groups[i].key);
    dst->n = src->n;
    dst->cap = cap;
    return 0;
}

static int in_window(const Summary *s, int64_t at) { return !s->has_since || at >= s->since; }

/* Whether two records of one txn_id say the same (the event id aside: a copy sent again under
 * a new event id is still the same transaction). Exact str only, so no Python code runs. */
static int same_content(const Rec *a, const Rec *b) {
    if (a->at != b->at || a->amount != b->amount || a->fee != b->fee || a->status != b->status ||
        a->type != b->type)
        return 0;
    PyObject *x[4] = {a->merchant, a->country, a->currency, a->channel};
    PyObject *y[4] = {b->merchant, b->country, b->currency, b->channel};
    for (int i = 0; i < 4; i++) {
        if (x[i] == y[i]) continue;
        if (x[i] == Py_None || y[i] == Py_None) return 0;
        int eq = PyUnicode_Compare(x[i], y[i]);
        if (eq != 0) return PyErr_Occurred() ? -1 : 0;
    }
    return 1;
}

/* Takes over r's references. 1: counted, 0: a repeat of a txn_id already taken, with the same
 * content; 2: a repeat with other content (a conflicting duplicate, not counted). */
static int accumulate(Summary *s, Rec *r) {
    PyObject *at = PyLong_FromSsize_t(s->n);
    if (!at) {
        rec_clear(r);
        return -1;
    }
    PyObject *taken = PyDict_SetDefault(s->txns, r->txn, at); /* borrowed */
    Py_DECREF(at);
    if (!taken) {
        rec_clear(r);
        return -1;
    }
    if (taken != at) { /* one dict lookup: a repeat finds the first copy's position */
        Py_ssize_t first = PyLong_AsSsize_t(taken);
        int same = first == -1 && PyErr_Occurred() ? -1 : same_content(&s->recs[first], r);
        rec_clear(r);
        return same < 0 ? -1 : same ? 0 : 2;
    }
    void *recs = s->recs;
    if (room_for_one(&recs, s->n, &s->cap, sizeof(Rec), 1024) < 0) {
        rec_clear(r);
        return -1;
    }
    s->recs = recs;
    s->recs[s->n++] = *r;
    if (table_add(&s->hourly, floor_to(r->at, US_PER_HOUR), r) < 0) return -1;
    if (in_window(s, r->at) && table_add(&s->minute, floor_to(r->at, US_PER_MINUTE), r) < 0)
        return -1;
    return 1;
}

/* ---- JSON output ---- */

typedef struct {
    char *p;
    size_t n, cap;
} Buf;

static int buf_reserve(Buf *b, size_t more) {
    if (b->n + more <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + more) cap *= 2;
    char *grown = PyMem_Realloc(b->p, cap);
    if (!grown) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = grown;
    b->cap = cap;
    return 0;
}

static int put(Buf *b, const char *s, size_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

static int put_str(Buf *b, PyObject *o) {
    if (o == Py_None) return put(b, "null", 4);
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(o, &n);
    if (!s) return -1;
    if (buf_reserve(b, (size_t)n * 6 + 2) < 0) return -1;
    char *w = b->p + b->n;
    *w++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *w++ = '\\';
            *w++ = (char)c;
        } else if (c < 0x20) {
            w += sprintf(w, "\\u%04x", c);
        } else {
            *w++ = (char)c;
        }
    }
    *w++ = '"';
    b->n = (size_t)(w - b->p);
    return 0;
}

static int put_time(Buf *b, int64_t us, int with_micros) {
    int64_t day = floor_to(us, US_PER_DAY) / US_PER_DAY;
    int64_t rest = us - day * US_PER_DAY;
    int y, mo, d;
    civil_from_days(day, &y, &mo, &d);
    int64_t secs = rest / 1000000;
    char tmp[48];
    int n = snprintf(tmp, sizeof tmp, "\"%04d-%02d-%02dT%02d:%02d:%02d", y, mo, d,
                     (int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60));
    if (with_micros) n += snprintf(tmp + n, sizeof tmp - (size_t)n, ".%06d", (int)(rest % 1000000));
    n += snprintf(tmp + n, sizeof tmp - (size_t)n, "Z\"");
    return put(b, tmp, (size_t)n);
}

static int put_u128(Buf *b, u128 v) {
    char tmp[48];
    int i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + (int)(v % 10));
        v /= 10;
    } while (v);
    return put(b, tmp + i, sizeof tmp - (size_t)i);
}

static int put_money(Buf *b, u128 units) {
    char frac[24];
    snprintf(frac, sizeof frac, ".%0*llu\"", money_places,
             (unsigned long long)(units % unit_scale));
    if (put(b, "\"", 1) < 0 || put_u128(b, units / unit_scale) < 0) return -1;
    return put(b, frac, strlen(frac));
}

static PyObject *buf_str(Buf *b) {
    PyObject *out = PyUnicode_DecodeUTF8(b->p ? b->p : "", (Py_ssize_t)b->n, NULL);
    PyMem_Free(b->p);
    return out;
}

typedef struct {
    const Group *g;
    const char *s[4];
    Py_ssize_t n[4];
} SortKey;

static int cmp_bytes(const char *a, Py_ssize_t an, const char *b, Py_ssize_t bn) {
    int c = memcmp(a, b, (size_t)(an < bn ? an : bn));
    if (c) return c;
    return an < bn ? -1 : an > bn;
}

/* (bucket, merchant NULL last, merchant, country, currency, channel): UTF-8 byte order is
 * code point order, so this is the order Python's sorted() gives the same keys. */
static int cmp_keys(const void *pa, const void *pb) {
    const SortKey *a = pa, *b = pb;
    if (a->g->bucket != b->g->bucket) return a->g->bucket < b->g->bucket ? -1 : 1;
    int an = a->s[0] == NULL, bn = b->s[0] == NULL;
    if (an != bn) return an - bn;
    for (int i = an ? 1 : 0; i < 4; i++) {
        int c = cmp_bytes(a->s[i], a->n[i], b->s[i], b->n[i]);
        if (c) return c;
    }
    return 0;
}

/* [[bucket, merchant, country, currency, channel, measures...], ...] in key order: writers of
 * overlapping buckets then lock them in the same order and never deadlock each other. */
static PyObject *rows_json(const Table *t) {
    Buf b = {0};
    SortKey *keys = PyMem_Calloc((size_t)(t->n ? t->n : 1), sizeof(SortKey));
    if (!keys) return PyErr_NoMemory();
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < t->n; i++) {
        if (t->groups[i].m[i_tx] == 0) continue; /* emptied by without() */
        keys[n].g = &t->groups[i];
        for (int k = 0; k < 4; k++) {
            PyObject *o = PyTuple_GET_ITEM(t->groups[i].key, k + 1);
            if (o == Py_None) continue;
            keys[n].s[k] = PyUnicode_AsUTF8AndSize(o, &keys[n].n[k]);
            if (!keys[n].s[k]) goto fail;
        }
        n++;
    }
    qsort(keys, (size_t)n, sizeof(SortKey), cmp_keys);
    if (put(&b, "[", 1) < 0) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        const Group *g = keys[i].g;
        if ((i && put(&b, ",", 1) < 0) || put(&b, "[", 1) < 0 || put_time(&b, g->bucket, 0) < 0)
            goto fail;
        for (int k = 1; k <= 4; k++)
            if (put(&b, ",", 1) < 0 || put_str(&b, PyTuple_GET_ITEM(g->key, k)) < 0) goto fail;
        for (int m = 0; m < n_measures; m++) {
            if (put(&b, ",", 1) < 0) goto fail;
            if ((is_money[m] ? put_money(&b, g->m[m]) : put_u128(&b, g->m[m])) < 0) goto fail;
        }
        if (put(&b, "]", 1) < 0) goto fail;
    }
    if (put(&b, "]", 1) < 0) goto fail;
    PyMem_Free(keys);
    return buf_str(&b);
fail:
    PyMem_Free(keys);
    PyMem_Free(b.p);
    return NULL;
}

/* ---- the Summary type ---- */

static Summary *summary_new(int has_since, int64_t since) {
    Summary *s = PyObject_New(Summary, &SummaryType);
    if (!s) return NULL;
    s->has_since = has_since;
    s->since = since;
    s->recs = NULL;
    s->n = s->cap = 0;
    s->hourly.index = s->minute.index = NULL;
    s->hourly.groups = s->minute.groups = NULL;
    s->hourly.n = s->hourly.cap = s->minute.n = s->minute.cap = 0;
    s->txns = PyDict_New();
    if (!s->txns || table_init(&s->hourly) < 0 || table_init(&s->minute) < 0) {
        Py_DECREF(s);
        return NULL;
    }
    return s;
}

static PyObject *Summary_tp_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"since_us", NULL};
    PyObject *since = Py_None;
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "_summary.configure() has not been called");
        return NULL;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O", kwlist, &since)) return NULL;
    int64_t at = 0;
    if (since != Py_None) {
        at = PyLong_AsLongLong(since);
        if (at == -1 && PyErr_Occurred()) return NULL;
    }
    return (PyObject *)summary_new(since != Py_None, at);
}

static void Summary_dealloc(Summary *s) {
    for (Py_ssize_t i = 0; i < s->n; i++) rec_clear(&s->recs[i]);
    PyMem_Free(s->recs);
    table_clear(&s->hourly);
    table_clear(&s->minute);
    Py_XDECREF(s->txns);
    PyObject_Free(s);
}

static PyObject *Summary_feed(Summary *s, PyObject *args) {
    PyObject *values;
    Py_ssize_t start, stop;
    long long lo, hi;
    if (!PyArg_ParseTuple(args, "O!nnLL", &PyList_Type, &values, &start, &stop, &lo, &hi))
        return NULL;
    Py_ssize_t end = PyList_GET_SIZE(values);
    if (stop > end) stop = end;
    int64_t newest = INT64_MIN;
    Py_ssize_t i = start < 0 ? 0 : start;
    for (; i < stop; i++) {
        PyObject *v = PyList_GET_ITEM(values, i);
        if (!PyBytes_CheckExact(v) || PyBytes_GET_SIZE(v) > max_event_bytes) break;
        Rec r;
        int ok = scan_event(PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v), lo, hi, &r);
        if (ok < 0) return NULL;
        if (ok == 0) break;
        int64_t at = r.at;
        int got = accumulate(s, &r);
        if (got < 0) return NULL;
        if (got == 2) break; /* a conflicting duplicate: the caller dead-letters it */
        if (at > newest) newest = at;
    }
    if (newest == INT64_MIN) return Py_BuildValue("nO", i, Py_None);
    return Py_BuildValue("nL", i, (long long)newest);
}

/* Money in the smallest unit, from a Python int: 0 <= units < max_units. */
static int units_of(PyObject *o, uint64_t *out) {
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    if (v >= max_units) {
        PyErr_SetString(PyExc_ValueError, "money out of range");
        return -1;
    }
    *out = v;
    return 0;
}

static PyObject *Summary_add(Summary *s, PyObject *args) {
    Rec r;
    int status, type;
    long long at;
    PyObject *amount, *fee;
    if (!PyArg_ParseTuple(args, "UUOUUULiiO!O!", &r.txn, &r.event, &r.merchant, &r.country,
                          &r.currency, &r.channel, &at, &status, &type, &PyLong_Type, &amount,
                          &PyLong_Type, &fee))
        return NULL;
    /* Exact str only: a subclass's __hash__ or __eq__ would run Python code inside the
     * summary's set and dict updates, which may call back into this summary midway. */
    if (!PyUnicode_CheckExact(r.txn) || !PyUnicode_CheckExact(r.event) ||
        !PyUnicode_CheckExact(r.country) || !PyUnicode_CheckExact(r.currency) ||
        !PyUnicode_CheckExact(r.channel) ||
        (r.merchant != Py_None && !PyUnicode_CheckExact(r.merchant))) {
        PyErr_SetString(PyExc_TypeError, "text fields must be str (merchant_id: str or None)");
        return NULL;
    }
    if (status < 0 || status >= n_statuses || type < 0 || type >= n_types) {
        PyErr_SetString(PyExc_ValueError, "status or type index out of range");
        return NULL;
    }
    /* Bucketing (floor_to) and the output's dates are defined on these instants only. */
    if (at < MIN_AT_US || at > MAX_AT_US) {
        PyErr_SetString(PyExc_ValueError, "at_us out of range (years 1 to 9999)");
        return NULL;
    }
    uint64_t amount_units, fee_units;
    if (units_of(amount, &amount_units) < 0 || units_of(fee, &fee_units) < 0) return NULL;
    rec_hold(&r);
    r.at = at;
    r.amount = amount_units;
    r.fee = fee_units;
    r.status = (uint8_t)status;
    r.type = (uint8_t)type;
    int counted = accumulate(s, &r);
    if (counted < 0) return NULL;
    if (counted == 2) return PyLong_FromLong(2);
    return PyBool_FromLong(counted);
}

/* A new summary without the transactions in ``arg`` (a set of txn ids, or another summary's);
 * this one unchanged, or itself when none of them is here. Their measures are taken away
 * from copies of the groups, which costs what they are, not what the batch is. */
static PyObject *Summary_without(Summary *s, PyObject *arg) {
    PyObject *seen = arg;
    if (PyObject_TypeCheck(arg, &SummaryType)) {
        seen = ((Summary *)arg)->txns;
    } else if (!PyAnySet_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "without() takes a set of txn ids or a Summary");
        return NULL;
    }
    Py_ssize_t dropped = 0;
    for (Py_ssize_t i = 0; i < s->n; i++) {
        int drop = PySequence_Contains(seen, s->recs[i].txn);
        if (drop < 0) return NULL;
        dropped += drop;
    }
    if (!dropped) {
        Py_INCREF(s);
        return (PyObject *)s;
    }
    Summary *out = summary_new(s->has_since, s->since);
    if (!out) return NULL;
    table_clear(&out->hourly);
    table_clear(&out->minute);
    if (table_copy(&out->hourly, &s->hourly) < 0 || table_copy(&out->minute, &s->minute) < 0)
        goto fail;
    void *recs = NULL;
    if (room_for_one(&recs, 0, &out->cap, sizeof(Rec), s->n - dropped + 1) < 0) goto fail;
    out->recs = recs;
    for (Py_ssize_t i = 0; i < s->n; i++) {
        int drop = PySequence_Contains(seen, s->recs[i].txn);
        if (drop < 0) goto fail;
        /* After the lookup: a set member's __eq__ may have run Python code that added to this
         * summary (moving its records), and may answer otherwise than in the first pass. */
        const Rec *r = &s->recs[i];
        if (drop) {
            if (table_remove(&out->hourly, floor_to(r->at, US_PER_HOUR), r) < 0) goto fail;
            if (in_window(s, r->at) &&
                table_remove(&out->minute, floor_to(r->at, US_PER_MINUTE), r) < 0)
                goto fail;
            continue;
        }
        recs = out->recs;
        if (room_for_one(&recs, out->n, &out->cap, sizeof(Rec), 1024) < 0) goto fail;
        out->recs = recs;
        PyObject *pos = PyLong_FromSsize_t(out->n);
        if (!pos) goto fail;
        int added = PyDict_SetItem(out->txns, r->txn, pos);
        Py_DECREF(pos);
        if (added < 0) goto fail;
        Rec *kept = &out->recs[out->n++];
        *kept = *r;
        rec_hold(kept);
    }
    return (PyObject *)out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* FNV-1a, 64 bits, over n bytes, continuing from h. */
static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * UINT64_C(1099511628211);
    return h;
}

/* A record's content (what same_content compares) as one 64-bit hash: what the ledger keeps
 * beside a txn_id, so that a copy arriving in a later batch with other content is told apart. */
static int content_hash(const Rec *r, int64_t *out) {
    uint64_t h = UINT64_C(14695981039346656037);
    int64_t at = r->at;
    uint64_t nums[2] = {r->amount, r->fee};
    unsigned char kinds[2] = {r->status, r->type};
    h = fnv(h, &at, sizeof at);
    h = fnv(h, nums, sizeof nums);
    h = fnv(h, kinds, sizeof kinds);
    PyObject *texts[4] = {r->merchant, r->country, r->currency, r->channel};
    for (int i = 0; i < 4; i++) {
        if (texts[i] == Py_None) {
            h = fnv(h, "\xff", 1); /* never in UTF-8: None differs from every string */
            continue;
        }
        Py_ssize_t n;
        const char *u = PyUnicode_AsUTF8AndSize(texts[i], &n);
        if (!u) return -1;
        h = fnv(h, u, (size_t)n + 1); /* with its NUL: "ab","c" differs from "a","bc" */
    }
    *out = (int64_t)h;
    return 0;
}

static PyObject *Summary_ledger_json(Summary *s, PyObject *unused) {
    Buf b = {0};
    if (put(&b, "[", 1) < 0) goto fail;
    for (Py_ssize_t i = 0; i < s->n; i++) {
        const Rec *r = &s->recs[i];
        int64_t hash;
        char num[24];
        if (content_hash(r, &hash) < 0) goto fail;
        int len = snprintf(num, sizeof num, ",%lld]", (long long)hash);
        if ((i && put(&b, ",", 1) < 0) || put(&b, "[", 1) < 0 || put_str(&b, r->txn) < 0 ||
            put(&b, ",", 1) < 0 || put_str(&b, r->event) < 0 || put(&b, ",", 1) < 0 ||
            put_time(&b, r->at, 1) < 0 || put(&b, num, (size_t)len) < 0)
            goto fail;
    }
    if (put(&b, "]", 1) < 0) goto fail;
    return buf_str(&b);
fail:
    PyMem_Free(b.p);
    return NULL;
}

static PyObject *Summary_hourly_json(Summary *s, PyObject *unused) { return rows_json(&s->hourly); }

static PyObject *Summary_minute_json(Summary *s, PyObject *unused) { return rows_json(&s->minute); }

static PyObject *Summary_hours(Summary *s, PyObject *unused) {
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < s->hourly.n; i++) {
        if (s->hourly.groups[i].m[i_tx] == 0) continue;
        PyObject *v = PyLong_FromLongLong(s->hourly.groups[i].bucket);
        if (!v || PyList_Append(out, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(v);
    }
    return out;
}

static PyObject *Summary_merchants(Summary *s, PyObject *args) {
    long long lo = INT64_MIN, hi = INT64_MAX;
    if (!PyArg_ParseTuple(args, "|LL", &lo, &hi)) return NULL;
    PyObject *out = PySet_New(NULL);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < s->n; i++) {
        const Rec *r = &s->recs[i];
        if (r->at >= lo && r->at < hi && PySet_Add(out, r->merchant) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

/* The txn ids this summary and ``arg`` (another summary) both took, with other content. */
static PyObject *Summary_conflicts(Summary *s, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &SummaryType)) {
        PyErr_SetString(PyExc_TypeError, "conflicts() takes a Summary");
        return NULL;
    }
    const Summary *o = (const Summary *)arg;
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < s->n; i++) {
        const Rec *r = &s->recs[i];
        PyObject *pos = PyDict_GetItemWithError(o->txns, r->txn); /* borrowed; exact str keys */
        if (!pos) {
            if (PyErr_Occurred()) goto fail;
            continue;
        }
        Py_ssize_t j = PyLong_AsSsize_t(pos);
        if (j == -1 && PyErr_Occurred()) goto fail;
        int same = same_content(&o->recs[j], r);
        if (same < 0 || (!same && PyList_Append(out, r->txn) < 0)) goto fail;
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyObject *Summary_txn_ids(Summary *s, PyObject *unused) {
    PyObject *out = PyList_New(s->n);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < s->n; i++) {
        Py_INCREF(s->recs[i].txn);
        PyList_SET_ITEM(out, i, s->recs[i].txn);
    }
    return out;
}

static Py_ssize_t Summary_len(Summary *s) { return s->n; }

static PyObject *Summary_get_since(Summary *s, void *unused) {
    if (!s->has_since) Py_RETURN_NONE;
    return PyLong_FromLongLong(s->since);
}

static PyMethodDef Summary_methods[] = {
    {"feed", (PyCFunction)Summary_feed, METH_VARARGS, NULL},
    {"add", (PyCFunction)Summary_add, METH_VARARGS, NULL},
    {"without", (PyCFunction)Summary_without, METH_O, NULL},
    {"ledger_json", (PyCFunction)Summary_ledger_json, METH_NOARGS, NULL},
    {"hourly_json", (PyCFunction)Summary_hourly_json, METH_NOARGS, NULL},
    {"minute_json", (PyCFunction)Summary_minute_json, METH_NOARGS, NULL},
    {"hours", (PyCFunction)Summary_hours, METH_NOARGS, NULL},
    {"merchants", (PyCFunction)Summary_merchants, METH_VARARGS, NULL},
    {"txn_ids", (PyCFunction)Summary_txn_ids, METH_NOARGS, NULL},
    {"conflicts", (PyCFunction)Summary_conflicts, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Summary_getset[] = {
    {"since_us", (getter)Summary_get_since, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Summary_as_sequence = {.sq_length = (lenfunc)Summary_len};

static PyTypeObject SummaryType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "molam_workloads.ingest._summary.Summary",
    .tp_basicsize = sizeof(Summary),
    .tp_dealloc = (destructor)Summary_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A batch's transactions (unique by txn_id) and their hourly and minute sums.",
    .tp_methods = Summary_methods,
    .tp_getset = Summary_getset,
    .tp_as_sequence = &Summary_as_sequence,
    .tp_new = Summary_tp_new,
};

/* ---- configure(measures, money, statuses, types, currencies) ---- */

static int index_of(PyObject *measures, const char *name) {
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(measures); i++) {
        const char *m = PyUnicode_AsUTF8(PyTuple_GET_ITEM(measures, i));
        if (m && strcmp(m, name) == 0) return (int)i;
    }
    PyErr_Format(PyExc_ValueError, "no measure named %s", name);
    return -1;
}

static int names(PyObject *seq, char out[][16], int *count) {
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    if (n > MAX_KINDS) {
        PyErr_SetString(PyExc_ValueError, "too many kinds");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *s = PyUnicode_AsUTF8(PyTuple_GET_ITEM(seq, i));
        if (!s || strlen(s) >= 16) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "kind name too long");
            return -1;
        }
        strcpy(out[i], s);
    }
    *count = (int)n;
    return 0;
}

static PyObject *configure(PyObject *mod, PyObject *args) {
    PyObject *measures, *money, *statuses, *types, *codes;
    Py_ssize_t event_bytes, id_chars, label_chars;
    int digits, places;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!nnnii", &PyTuple_Type, &measures, &PyFrozenSet_Type,
                          &money, &PyTuple_Type, &statuses, &PyTuple_Type, &types,
                          &PyFrozenSet_Type, &codes, &event_bytes, &id_chars, &label_chars,
                          &digits, &places))
        return NULL;
    /* An event's money in the smallest unit must fit in 64 bits: < 10**(digits + places). */
    if (digits < 1 || places < 0 || digits + places > 19) {
        PyErr_SetString(PyExc_ValueError, "money does not fit 64 bits in its smallest unit");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(measures);
    if (n > MAX_MEASURES) {
        PyErr_SetString(PyExc_ValueError, "too many measures");
        return NULL;
    }
    if (names(statuses, status_name, &n_statuses) < 0 || names(types, type_name, &n_types) < 0)
        return NULL;
    char name[64];
    if ((i_tx = index_of(measures, "tx_count")) < 0 ||
        (i_gross = index_of(measures, "gross_volume_local")) < 0 ||
        (i_fee = index_of(measures, "fee_local")) < 0)
        return NULL;
    succeeded = -1;
    for (int i = 0; i < n_statuses; i++) {
        snprintf(name, sizeof name, "%s_count", status_name[i]);
        if ((i_status_count[i] = index_of(measures, name)) < 0) return NULL;
        if (strcmp(status_name[i], "succeeded") == 0) succeeded = i;
    }
    if (succeeded < 0) {
        PyErr_SetString(PyExc_ValueError, "no succeeded status");
        return NULL;
    }
    for (int i = 0; i < n_types; i++) {
        snprintf(name, sizeof name, "%s_count", type_name[i]);
        if ((i_type_count[i] = index_of(measures, name)) < 0) return NULL;
        snprintf(name, sizeof name, "%s_volume_local", type_name[i]);
        if ((i_type_volume[i] = index_of(measures, name)) < 0) return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int c = PySet_Contains(money, PyTuple_GET_ITEM(measures, i));
        if (c < 0) return NULL;
        is_money[i] = (unsigned char)c;
    }
    n_measures = (int)n;
    max_event_bytes = event_bytes;
    max_id_chars = id_chars;
    max_label_chars = label_chars;
    money_digits = digits;
    money_places = places;
    unit_scale = 1;
    for (int i = 0; i < places; i++) unit_scale *= 10;
    max_units = unit_scale;
    for (int i = 0; i < digits; i++) max_units *= 10;
    Py_INCREF(codes);
    Py_XSETREF(currencies, codes);
    configured = 1;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"configure", configure, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_summary",
    "A batch of transaction events decoded, deduplicated and summed (see aggregation.py).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__summary(void) {
    if (PyType_Ready(&SummaryType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&SummaryType);
    if (PyModule_AddObject(m, "Summary", (PyObject *)&SummaryType) < 0) {
        Py_DECREF(&SummaryType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
