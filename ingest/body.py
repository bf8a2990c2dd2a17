"""Decoding an ingest request body (JSON or msgpack) into a list of events.

A body is a JSON array of event objects, ``{"events": [...]}``, or the same
in msgpack.  JSON is decoded by orjson (several times faster than the
standard library); the standard library decoder remains the reference for
everything unusual:

* anything orjson refuses is decoded again by the standard library, which
  either accepts it (integers beyond 64 bits, lone surrogate escapes, which
  validation then rejects with a precise message) or raises the error the
  client sees;
* repeated keys in one object (which orjson silently collapses) are found by
  counting colons: outside strings, JSON has exactly one ``:`` per key/value
  pair, so a body re-encoded from what was decoded has as many colons as the
  raw body only if no pair was dropped.  A ``\\u003a`` escape would make a
  colon appear in a decoded string only, so such bodies take the reference
  path, which names the repeated key;
* orjson reads an integer beyond 64 bits as a float, where the reference
  keeps the integer (which validation then refuses): a body with a run of 19
  or more digits anywhere (every integer of 18 digits fits) takes the
  reference path.

msgpack gets the same refusal of repeated map keys, at any depth.  The
decoder's ``object_pairs_hook`` sees every pair but makes decoding about 1.6
times slower, so it is the reference path only: a body is decoded into dicts,
packed again, and taken as it is when the result is the very same bytes.
Equal bytes decode to equal pair counts, so no map of the body lost a pair.
Anything else (a repeated key, or an encoder that is not minimal, such as
float32 values or long headers for short strings) is decoded again with the
hook, which names the repeated key.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
import orjson

from auditlog.ingest.errors import IngestError
from auditlog.ingest.event import DuplicateKeyError, reject_duplicate_keys, validate_batch
from auditlog.ingest.limits import Limits

__all__ = ["BodyError", "UnsupportedMediaError", "decode_body", "decode_and_validate", "JSON_TYPES", "MSGPACK_TYPES"]

JSON_TYPES = ("application/json", "", "text/json")
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack")


class BodyError(IngestError):
    """The body is not a readable batch (bad JSON/msgpack, wrong shape)."""


class UnsupportedMediaError(IngestError):
    http_status = 415


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed in JSON")


def _loads_reference(raw: bytes) -> Any:
    """The standard library's reading, which rejects repeated keys by name."""
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=reject_duplicate_keys, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise BodyError("body is not UTF-8") from None
    except (ValueError, RecursionError) as e:
        raise BodyError(f"body is not valid JSON: {str(e)[:200]}") from None


# bytes.translate table: digits stay '0', everything else becomes a space
_DIGITS = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_DIGIT_RUN = b"0" * 19


def loads_json(raw: bytes) -> Any:
    """Decode a JSON body, refusing repeated keys and NaN/Infinity."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _loads_reference(raw)
    if b"\\u003" in raw and (b"\\u003a" in raw or b"\\u003A" in raw):
        return _loads_reference(raw)
    if _LONG_DIGIT_RUN in raw.translate(_DIGITS):
        return _loads_reference(raw)
    try:
        same = orjson.dumps(data).count(b":") == raw.count(b":")
    except (orjson.JSONEncodeError, TypeError):
        same = False
    return data if same else _loads_reference(raw)


_MSGPACK_OPTIONS = {"raw": False, "strict_map_key": True, "max_bin_len": 0, "max_ext_len": 0}
_repack = msgpack.Packer(use_bin_type=True).pack


def loads_msgpack(raw: bytes) -> Any:
    """Decode a msgpack body, refusing repeated map keys at any depth."""
    try:
        data = msgpack.unpackb(raw, **_MSGPACK_OPTIONS)
    except Exception as e:  # msgpack raises several unrelated types
        raise BodyError(f"body is not valid msgpack: {type(e).__name__}") from None
    try:
        if _repack(data) == raw:
            return data
    except (ValueError, TypeError, OverflowError):  # nested past the packer's limit
        pass
    try:
        return msgpack.unpackb(raw, object_pairs_hook=reject_duplicate_keys, **_MSGPACK_OPTIONS)
    except DuplicateKeyError as e:
        raise BodyError(f"body is not valid msgpack: {e}") from None
    except Exception as e:
        raise BodyError(f"body is not valid msgpack: {type(e).__name__}") from None


def decode_body(raw: bytes, content_type: str) -> list:
    """The events of a request body (JSON array, {"events": [...]}, or msgpack)."""
    if content_type in MSGPACK_TYPES:
        data = loads_msgpack(raw)
    elif content_type in JSON_TYPES:
        data = loads_json(raw)
    else:
        raise UnsupportedMediaError(
            f"unsupported Content-Type {content_type!r}: use application/json or application/msgpack"
        )
    if isinstance(data, dict):
        if set(data) != {"events"}:
            raise BodyError('a JSON object body must be {"events": [...]} and nothing else')
        data = data["events"]
    if not isinstance(data, (list, tuple)):
        raise BodyError('body must be an array of events or {"events": [...]}')
    return list(data)


def decode_and_validate(raw: bytes, content_type: str, limits: Limits) -> list:
    """Validated drafts of a body, all or nothing (raises an ``IngestError``)."""
    return validate_batch(decode_body(raw, content_type), limits)
