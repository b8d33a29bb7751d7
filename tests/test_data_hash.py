"""One data hash (``hwloop.provenance.data_sha256``): the run store's resume key (bytes) and the check caches' key
(bytes, dtypes and shapes), each the same value as before they were one function, so stores resume and caches hit."""

import hashlib

import numpy as np

from hwloop.check.settings import data_sha256 as check_key
from hwloop.data import Dataset
from hwloop.provenance import data_sha256


def spelled_out(arrays, layout: bool) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if layout:
            h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def test_resume_key_is_the_bytes_and_check_key_adds_dtype_and_shape():
    x, y = np.arange(12, dtype=np.float32).reshape(4, 3), np.array([0, 1, 1, 0])
    ds, reshaped = Dataset("d", x, y, 2), Dataset("d", x.reshape(4, 3, 1), y, 2)
    assert data_sha256([x, y]) == spelled_out([x, y], False) == data_sha256([x.reshape(4, 3, 1), y])
    assert check_key(ds) == spelled_out([x, y], True) == data_sha256([x, y], layout=True)
    assert check_key(reshaped) != check_key(ds)                       # same bytes, other shape: other data
    assert check_key(Dataset("d", x.view(np.int32), y, 2)) != check_key(ds)      # same bytes, other dtype
    assert data_sha256([x[:, ::2], y]) == spelled_out([np.ascontiguousarray(x[:, ::2]), y], False)


def test_every_input_of_a_several_input_data_set_and_empty_arrays_are_hashed():
    x, y = np.ones((3, 2), np.float32), np.zeros(3, np.int64)
    one = Dataset("d", x, y, 2, {"a": x, "b": np.zeros((3, 5), np.float32)})
    other = Dataset("d", x, y, 2, {"a": x, "b": np.ones((3, 5), np.float32)})
    assert check_key(one) != check_key(other)
    assert check_key(Dataset("d", x, y, 2)) == spelled_out([x, y], True)
    assert data_sha256([np.empty((0, 3), np.float32)]) == hashlib.sha256(b"").hexdigest()
