/* The hot loops of the record format (vault_core/format.py is the reference, and the fallback
 * where this module is not built): encoding a batch of messages into records, encoding the HTTP
 * API's binary batch straight into records, decoding a verified batch into messages, and the
 * client's binary encoding.
 *
 * Each function handles the common case and answers None for anything unusual (a wrong type, a
 * limit passed, bytes that do not parse): the Python code then does the work and raises the
 * error it always raised. So both paths give the same results and the same errors.
 *
 * Layouts (little-endian), as format.py defines them:
 *   batch header  magic "MVB\xff", crc u32, version u8, flags u8, id length u8, reserved u8,
 *                 length u32, position u64, timestamp ms u64, count u32, reserved u32 (40 bytes)
 *   record        back-pointer to the batch start u32, value length u32, key length u8, key, value
 *   binary body   per message: key length u8, value length u32, key, value
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BATCH_HEADER 40
#define RECORD_HEADER 9
#define BINARY_HEADER 5
#define VERSION 1
#define MAX_KEY 255
#define MAX_VALUE (1024 * 1024)
#define MAX_MESSAGES 10000
#define MAX_BATCH (64 * 1024 * 1024)
#define KEY_CACHE 32

static void put32(unsigned char *at, uint32_t value) {
    at[0] = value & 0xff;
    at[1] = (value >> 8) & 0xff;
    at[2] = (value >> 16) & 0xff;
    at[3] = (value >> 24) & 0xff;
}

static uint32_t get32(const unsigned char *at) {
    return (uint32_t)at[0] | (uint32_t)at[1] << 8 | (uint32_t)at[2] << 16 | (uint32_t)at[3] << 24;
}

/* The batch header of a batch not yet placed: position, timestamp and crc stay zero. */
static void put_header(unsigned char *buffer, Py_ssize_t id_length, Py_ssize_t length, Py_ssize_t count) {
    memset(buffer, 0, BATCH_HEADER);
    memcpy(buffer, "MVB\xff", 4);
    buffer[8] = VERSION;
    buffer[10] = (unsigned char)id_length;
    put32(buffer + 12, (uint32_t)length);
    put32(buffer + 32, (uint32_t)count);
}

/* Whether bytes are UTF-8 as Python's strict codec takes it: no overlong forms, no surrogates,
 * nothing above U+10FFFF. */
static int valid_utf8(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int need;
        unsigned char low = 0x80, high = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            if (c == 0xe0) low = 0xa0;
            if (c == 0xed) high = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            if (c == 0xf0) low = 0x90;
            if (c == 0xf4) high = 0x8f;
        } else {
            return 0;
        }
        if (i + need >= n) return 0; /* cut short */
        if (s[i + 1] < low || s[i + 1] > high) return 0;
        for (int k = 2; k <= need; k++) {
            if (s[i + k] < 0x80 || s[i + k] > 0xbf) return 0;
        }
        i += need + 1;
    }
    return 1;
}

/* A new batch of `total` bytes: a bytearray with its header and id written, and an offsets list
 * of `count` slots to fill. Returns where the records start, or -1 with an exception set. */
static Py_ssize_t new_batch(Py_buffer *id, Py_ssize_t total, Py_ssize_t count, PyObject **buffer,
                            PyObject **offsets) {
    *buffer = PyByteArray_FromStringAndSize(NULL, total);
    if (*buffer == NULL) return -1;
    *offsets = PyList_New(count);
    if (*offsets == NULL) {
        Py_CLEAR(*buffer);
        return -1;
    }
    unsigned char *out = (unsigned char *)PyByteArray_AS_STRING(*buffer);
    put_header(out, id->len, total, count);
    memcpy(out + BATCH_HEADER, id->buf, id->len);
    return BATCH_HEADER + id->len;
}

/* (bytearray, count, offsets), taking the references to buffer and offsets. */
static PyObject *prepared(PyObject *buffer, Py_ssize_t count, PyObject *offsets) {
    return Py_BuildValue("(NnN)", buffer, count, offsets);
}

/* prepare(messages, batch_id) -> (bytearray, count, offsets) | None, as format.prepare_batch. */
static PyObject *prepare(PyObject *self, PyObject *args) {
    PyObject *messages;
    Py_buffer id;
    if (!PyArg_ParseTuple(args, "Oy*", &messages, &id)) return NULL;
    PyObject *result = NULL;
    if (!PyList_CheckExact(messages) && !PyTuple_Check(messages)) goto none;
    PyObject *seq = messages;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (count < 1 || count > MAX_MESSAGES) goto none;
    Py_ssize_t total = BATCH_HEADER + id.len;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) goto none;
        PyObject *key = PyTuple_GET_ITEM(item, 0), *value = PyTuple_GET_ITEM(item, 1);
        if (!PyUnicode_CheckExact(key) || !PyBytes_CheckExact(value)) goto none;
        Py_ssize_t key_length;
        if (PyUnicode_AsUTF8AndSize(key, &key_length) == NULL) {
            PyErr_Clear(); /* not UTF-8 (a lone surrogate): the reference says so */
            goto none;
        }
        Py_ssize_t value_length = PyBytes_GET_SIZE(value);
        if (key_length > MAX_KEY || value_length > MAX_VALUE) goto none;
        total += RECORD_HEADER + key_length + value_length;
        if (total > MAX_BATCH) goto none;
    }
    PyObject *buffer, *offsets;
    Py_ssize_t at = new_batch(&id, total, count, &buffer, &offsets);
    if (at < 0) goto done;
    unsigned char *out = (unsigned char *)PyByteArray_AS_STRING(buffer);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        PyObject *key = PyTuple_GET_ITEM(item, 0), *value = PyTuple_GET_ITEM(item, 1);
        Py_ssize_t key_length, value_length = PyBytes_GET_SIZE(value);
        const char *key_bytes = PyUnicode_AsUTF8AndSize(key, &key_length);
        PyObject *offset = PyLong_FromSsize_t(at);
        if (offset == NULL) {
            Py_DECREF(buffer);
            Py_DECREF(offsets);
            goto done;
        }
        PyList_SET_ITEM(offsets, i, offset);
        put32(out + at, (uint32_t)at);
        put32(out + at + 4, (uint32_t)value_length);
        out[at + 8] = (unsigned char)key_length;
        memcpy(out + at + RECORD_HEADER, key_bytes, key_length);
        memcpy(out + at + RECORD_HEADER + key_length, PyBytes_AS_STRING(value), value_length);
        at += RECORD_HEADER + key_length + value_length;
    }
    result = prepared(buffer, count, offsets);
    goto done;
none:
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&id);
    return result;
}

/* prepare_binary(body, batch_id) -> (bytearray, count, offsets) | None: the HTTP API's binary
 * batch encoding straight to records, in one validating pass over the body (then one copying
 * pass), with no Python object per message. */
static PyObject *prepare_binary(PyObject *self, PyObject *args) {
    Py_buffer body, id;
    if (!PyArg_ParseTuple(args, "y*y*", &body, &id)) return NULL;
    PyObject *result = NULL;
    const unsigned char *in = body.buf;
    Py_ssize_t end = body.len, at = 0, count = 0, total = BATCH_HEADER + id.len;
    /* The keys of a batch are few (contract names): remember the ones found valid. */
    const unsigned char *seen[KEY_CACHE];
    unsigned char seen_length[KEY_CACHE];
    int seen_count = 0;
    int valid = 1;
    Py_BEGIN_ALLOW_THREADS
    while (at < end) {
        if (end - at < BINARY_HEADER) { valid = 0; break; }
        Py_ssize_t key_length = in[at];
        Py_ssize_t value_length = get32(in + at + 1);
        if (value_length > MAX_VALUE || end - at - BINARY_HEADER < key_length + value_length) { valid = 0; break; }
        const unsigned char *key = in + at + BINARY_HEADER;
        int known = 0;
        for (int k = 0; k < seen_count; k++) {
            if (seen_length[k] == key_length && memcmp(seen[k], key, key_length) == 0) { known = 1; break; }
        }
        if (!known) {
            if (!valid_utf8(key, key_length)) { valid = 0; break; }
            if (seen_count < KEY_CACHE) {
                seen[seen_count] = key;
                seen_length[seen_count++] = (unsigned char)key_length;
            }
        }
        count++;
        total += RECORD_HEADER + key_length + value_length;
        if (count > MAX_MESSAGES || total > MAX_BATCH) { valid = 0; break; }
        at += BINARY_HEADER + key_length + value_length;
    }
    Py_END_ALLOW_THREADS
    if (!valid || count == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *buffer, *offsets;
    Py_ssize_t to = new_batch(&id, total, count, &buffer, &offsets);
    if (to < 0) goto done;
    unsigned char *out = (unsigned char *)PyByteArray_AS_STRING(buffer);
    at = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t key_length = in[at];
        Py_ssize_t value_length = get32(in + at + 1);
        PyObject *offset = PyLong_FromSsize_t(to);
        if (offset == NULL) {
            Py_DECREF(buffer);
            Py_DECREF(offsets);
            goto done;
        }
        PyList_SET_ITEM(offsets, i, offset);
        put32(out + to, (uint32_t)to);
        put32(out + to + 4, (uint32_t)value_length);
        out[to + 8] = (unsigned char)key_length;
        memcpy(out + to + RECORD_HEADER, in + at + BINARY_HEADER, key_length + value_length);
        to += RECORD_HEADER + key_length + value_length;
        at += BINARY_HEADER + key_length + value_length;
    }
    result = prepared(buffer, count, offsets);
done:
    PyBuffer_Release(&body);
    PyBuffer_Release(&id);
    return result;
}

/* decode(buffer, at, end, base, timestamp_ms, count, message_type) -> list | None: the records of
 * a verified batch, buffer[at:end], as message_type(offset, timestamp_ms, key, value) tuples; the
 * offset of buffer[i] is base + i. None if they do not parse or fill it exactly. */
static PyObject *decode(PyObject *self, PyObject *args) {
    PyObject *buffer_object, *type_object, *timestamp;
    Py_ssize_t at, end, count;
    long long base;
    if (!PyArg_ParseTuple(args, "OnnLOnO", &buffer_object, &at, &end, &base, &timestamp, &count, &type_object))
        return NULL;
    if (!PyBytes_CheckExact(buffer_object) || !PyType_Check(type_object) ||
        !PyType_IsSubtype((PyTypeObject *)type_object, &PyTuple_Type)) {
        Py_RETURN_NONE;
    }
    PyTypeObject *type = (PyTypeObject *)type_object;
    const unsigned char *in = (const unsigned char *)PyBytes_AS_STRING(buffer_object);
    Py_ssize_t size = PyBytes_GET_SIZE(buffer_object);
    if (at < 0 || end > size || at > end || count < 0 || count > MAX_MESSAGES) Py_RETURN_NONE;
    PyObject *out = PyList_New(count);
    if (out == NULL) return NULL;
    const unsigned char *seen[KEY_CACHE];
    unsigned char seen_length[KEY_CACHE];
    PyObject *seen_key[KEY_CACHE];
    int seen_count = 0;
    Py_ssize_t index = at, made = 0;
    int valid = 1;
    while (index < end) {
        if (end - index < RECORD_HEADER || made == count) { valid = 0; break; }
        Py_ssize_t value_length = get32(in + index + 4), key_length = in[index + 8];
        if (end - index - RECORD_HEADER < key_length + value_length) { valid = 0; break; }
        const unsigned char *raw = in + index + RECORD_HEADER;
        PyObject *key = NULL;
        for (int k = 0; k < seen_count; k++) {
            if (seen_length[k] == key_length && memcmp(seen[k], raw, key_length) == 0) {
                key = Py_NewRef(seen_key[k]);
                break;
            }
        }
        if (key == NULL) {
            key = PyUnicode_DecodeUTF8((const char *)raw, key_length, "strict");
            if (key == NULL) {
                PyErr_Clear();
                valid = 0;
                break;
            }
            if (seen_count < KEY_CACHE) {
                seen[seen_count] = raw;
                seen_length[seen_count] = (unsigned char)key_length;
                seen_key[seen_count++] = key; /* borrowed: `out` holds a reference */
            }
        }
        PyObject *offset = PyLong_FromLongLong(base + index);
        PyObject *value = PyBytes_FromStringAndSize((const char *)raw + key_length, value_length);
        PyObject *message = type->tp_alloc(type, 4);
        if (offset == NULL || value == NULL || message == NULL) {
            Py_XDECREF(offset);
            Py_XDECREF(value);
            Py_XDECREF(message);
            Py_DECREF(key);
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(message, 0, offset);
        PyTuple_SET_ITEM(message, 1, Py_NewRef(timestamp));
        PyTuple_SET_ITEM(message, 2, key);
        PyTuple_SET_ITEM(message, 3, value);
        /* It holds only an int, a str and bytes: no cycle can pass through it, so the cyclic
         * collector need not walk the many a replay makes. */
        PyObject_GC_UnTrack(message);
        PyList_SET_ITEM(out, made++, message);
        index += RECORD_HEADER + key_length + value_length;
    }
    if (!valid || index != end || made != count) {
        /* Unfilled slots are NULL, which a list being freed skips. */
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    return out;
}

/* encode_binary(messages) -> bytes | None, as http_models.encode_binary. */
static PyObject *encode_binary(PyObject *self, PyObject *messages) {
    if (!PyList_CheckExact(messages) && !PyTuple_Check(messages)) Py_RETURN_NONE;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(messages), total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(messages, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) Py_RETURN_NONE;
        PyObject *key = PyTuple_GET_ITEM(item, 0), *value = PyTuple_GET_ITEM(item, 1);
        if (!PyUnicode_CheckExact(key) || !PyBytes_CheckExact(value)) Py_RETURN_NONE;
        Py_ssize_t key_length;
        if (PyUnicode_AsUTF8AndSize(key, &key_length) == NULL) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        if (key_length > 255 || PyBytes_GET_SIZE(value) > UINT32_MAX) Py_RETURN_NONE;
        total += BINARY_HEADER + key_length + PyBytes_GET_SIZE(value);
    }
    PyObject *body = PyBytes_FromStringAndSize(NULL, total);
    if (body == NULL) return NULL;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(body);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(messages, i);
        PyObject *value = PyTuple_GET_ITEM(item, 1);
        Py_ssize_t key_length, value_length = PyBytes_GET_SIZE(value);
        const char *key = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(item, 0), &key_length);
        out[0] = (unsigned char)key_length;
        put32(out + 1, (uint32_t)value_length);
        memcpy(out + BINARY_HEADER, key, key_length);
        memcpy(out + BINARY_HEADER + key_length, PyBytes_AS_STRING(value), value_length);
        out += BINARY_HEADER + key_length + value_length;
    }
    return body;
}

static PyMethodDef methods[] = {
    {"prepare", prepare, METH_VARARGS, "prepare(messages, batch_id) -> (bytearray, count, offsets) | None"},
    {"prepare_binary", prepare_binary, METH_VARARGS,
     "prepare_binary(body, batch_id) -> (bytearray, count, offsets) | None"},
    {"decode", decode, METH_VARARGS,
     "decode(buffer, at, end, base, timestamp_ms, count, message_type) -> list | None"},
    {"encode_binary", encode_binary, METH_O, "encode_binary(messages) -> bytes | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_records", "The record format's hot loops, compiled (see format.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__records(void) { return PyModule_Create(&module); }
