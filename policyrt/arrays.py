"""Arrays in JSON as base64 of their little-endian bytes: exact, compact, readable from any language."""

from __future__ import annotations

import base64

import numpy as np


def encode_array(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    return {
        "dtype": str(dtype),
        "shape": list(array.shape),
        "b64": base64.b64encode(array.astype(dtype, copy=False).tobytes()).decode("ascii"),
    }


def decode_array(doc: dict) -> np.ndarray:
    try:
        raw = base64.b64decode(doc["b64"], validate=True)
        dtype = np.dtype(doc["dtype"]).newbyteorder("<")
        array = np.frombuffer(raw, dtype=dtype).reshape(doc["shape"])
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"malformed array record: {err}") from err
    return array.astype(array.dtype.newbyteorder("="))
