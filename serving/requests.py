"""Request parsing and validation for both servers, and the one error shape they answer with.

Every malformed request becomes a :class:`RequestError` (a 4xx) carrying a machine-readable
code, a message that says what to fix, and the offending field; the servers render it (and
KServe's own errors) as ``{"error": {"code": ..., "message": ..., "field": ...}}``.

Wire formats:

* transformer (business request): ``{"instances": [{"user_id": 1, "ad_id": 2, ...}, ...]}``
  with the fields of :data:`BUSINESS_FIELDS`; the contract's optional fields and
  ``request_id`` may be left out.
* predictor v1: ``{"instances": [row, ...]}`` where a row is either the flat list
  ``[cat..., num...]`` or the object ``{"cat": [C ints], "num": [M numbers]}``.
* predictor v2 (Open Inference Protocol): tensors ``cat`` INT64 [N, C] and ``num`` FP32 [N, M].

C and M are the model's input widths: a categorical input per contract field, a number per stat.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import numpy as np
import orjson

from mlref.onnx_model import INPUT_CAT, INPUT_NUM
from mlref.schema import FIELDS, MAX_REQUEST_ID, MAX_TEXT

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# name -> (required, accepted python type, description for messages): the contract's fields
# and the optional request id.
BUSINESS_FIELDS: dict[str, tuple[bool, type, str]] = {
    **{f.name: (f.required, f.python_type, f.description) for f in FIELDS},
    "request_id": (False, str, f"a string of at most {MAX_REQUEST_ID} characters"),
}
REQUIRED_FIELDS = tuple(name for name, (required, _, _) in BUSINESS_FIELDS.items() if required)
# What an optional field left out becomes: its fill from the time of scoring, or None (null:
# the model reads it as out-of-vocabulary).
FILLS = {f.name: f.fill for f in FIELDS if not f.required}
# Inclusive bounds: of ints (ids are non-negative int64), and of text lengths.
BOUNDS = {
    **{f.name: (f.low, f.high) for f in FIELDS if f.python_type is int},
    **{f.name: (0, MAX_TEXT) for f in FIELDS if f.python_type is str},
    "request_id": (0, MAX_REQUEST_ID),
}


class RequestError(Exception):
    """An error with a known cause, rendered in the one error shape (a 4xx unless told).

    ``headers`` go out with the response (the transformer names the variant that failed).
    """

    def __init__(self, message: str, field: str | None = None, status: int = 400, code: str = ""):
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status
        self.headers: dict[str, str] = {}
        self.code = code or {404: "not_found", 413: "batch_too_large"}.get(
            status, "invalid_request"
        )


# Which model built a request / answered it: a transformer sends it, a server answers with it.
VERSION_HEADER = "x-mlref-model-version"
VARIANT_HEADER = "x-mlref-variant"
MODEL_CHANGED = "model_changed"  # the predictor serves another model than the request was built for


def label_headers(model_version: str, variant: str) -> dict[str, str]:
    """Response headers naming the model that answered (the request metrics read them)."""
    return {VERSION_HEADER: model_version, VARIANT_HEADER: variant}


def error_body(code: str, message: str, field: str | None = None) -> dict:
    """The one error shape every response of both servers uses."""
    return {"error": {"code": code, "message": message, "field": field}}


def parse_json(body: bytes) -> Any:
    """Strict JSON (NaN / Infinity literals are rejected by orjson, as RFC 8259 says)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"request body is not valid JSON: {exc}", code="malformed_json") from exc


def instances_of(payload: Any, max_batch: int) -> list:
    """The non-empty, bounded ``instances`` list of a request object (or its raw JSON)."""
    if isinstance(payload, bytes | str):  # KServe passes bodies of non-JSON content types raw
        payload = parse_json(payload)
    if not isinstance(payload, dict):
        raise RequestError(
            f'request body must be a JSON object {{"instances": [...]}}, got {_kind(payload)}'
        )
    extra = sorted(set(payload) - {"instances"})
    if extra:
        raise RequestError(
            f"unknown top-level field(s) {extra}; only 'instances' is accepted", field=extra[0]
        )
    if "instances" not in payload:
        raise RequestError("missing field 'instances'", field="instances")
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise RequestError(f"'instances' must be a list, got {_kind(instances)}", field="instances")
    _check_size(len(instances), max_batch, "instances")
    return instances


def _check_size(n: int, max_batch: int, name: str) -> None:
    if n == 0:
        raise RequestError(f"'{name}' is empty: send at least one row", field=name)
    if n > max_batch:
        raise RequestError(
            f"batch of {n} rows exceeds the limit of {max_batch} (serving.max_batch); split it",
            field=name,
            status=413,
        )


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


@dataclass
class BusinessBatch:
    """Parsed business instances, column-wise (what lookup and transform consume)."""

    columns: dict[str, list] = field(default_factory=dict)
    request_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.request_ids)

    def take(self, rows: list[int]) -> BusinessBatch:
        """The rows at positions ``rows``, in that order."""
        return BusinessBatch(
            {name: [values[i] for i in rows] for name, values in self.columns.items()},
            [self.request_ids[i] for i in rows],
        )

    @classmethod
    def join(cls, batches: list[BusinessBatch]) -> BusinessBatch:
        """One batch holding ``batches`` in order (the batch itself when there is one)."""
        if len(batches) == 1:
            return batches[0]
        return cls(
            {name: [v for b in batches for v in b.columns[name]] for name in batches[0].columns},
            [r for b in batches for r in b.request_ids],
        )


def parse_business(payload: Any, max_batch: int, now: datetime | None = None) -> BusinessBatch:
    """Validate a transformer request; fill the optional fields (:data:`FILLS`) and
    ``request_id``.

    Every check is a C-level pass over a whole column (``map``, ``set``, ``min``/``max``),
    not a Python loop per row and field; only a request that fails one looks for the first
    offending row, so an error still names the first offending row of the first bad field.
    """
    instances = instances_of(payload, max_batch)
    if set(map(type, instances)) != {dict}:
        _reject_row(*next((r, i) for i, r in enumerate(instances) if type(r) is not dict))
    shapes = set(map(tuple, instances))  # rows usually share one key order: one check
    if not all(REQUIRED_SET <= set(keys) <= FIELD_SET for keys in shapes):
        _reject_row(
            *next(
                (row, i)
                for i, row in enumerate(instances)
                if not REQUIRED_SET <= row.keys() <= FIELD_SET
            )
        )
    batch = BusinessBatch()
    for name, (_, kind, text) in BUSINESS_FIELDS.items():
        if all(name in keys for keys in shapes):
            values, given = list(map(itemgetter(name), instances)), None
        else:
            values = [row.get(name, _ABSENT) for row in instances]
            given = [v for v in values if v is not _ABSENT]
        checked = values if given is None else given
        if name in NULLABLE_SET and None in checked:  # null: unknown, as if left out
            values = [_ABSENT if v is None else v for v in values]
            checked = given = [v for v in values if v is not _ABSENT]
        if not set(map(type, checked)) <= {kind} or _out_of_range(name, kind, checked):
            i, value = next(
                (i, v)
                for i, v in enumerate(values)
                if v is not _ABSENT and (type(v) is not kind or _out_of_range(name, kind, [v]))
            )
            where = f"instances[{i}].{name}"
            got = "null" if value is None else f"{_kind(value)} {value!r}"
            if kind is str and type(value) is str:
                got = f"{len(value)} characters"
            raise RequestError(f"{where} must be {text}, got {got}"[:300], field=where)
        if name == "request_id":  # absent or empty: a fresh id
            batch.request_ids = (
                values
                if given is None and all(values)
                else [v if v is not _ABSENT and v else uuid.uuid4().hex for v in values]
            )
        elif given is not None:  # an optional field some rows left out
            fill = FILLS[name]
            value = fill(now or datetime.now(UTC)) if fill else None
            batch.columns[name] = [value if v is _ABSENT else v for v in values]
        else:
            batch.columns[name] = values
    return batch


_ABSENT = object()
FIELD_SET = frozenset(BUSINESS_FIELDS)
REQUIRED_SET = frozenset(REQUIRED_FIELDS)
NULLABLE_SET = frozenset(f.name for f in FIELDS if f.nullable)


def _reject_row(row: Any, i: int) -> None:
    """The error for row ``i``: it is no object, has unknown fields or lacks required ones."""
    where = f"instances[{i}]"
    if not isinstance(row, dict):
        raise RequestError(f"{where} must be an object, got {_kind(row)}", field=where)
    extra = sorted(set(row) - FIELD_SET)
    if extra:
        raise RequestError(
            f"{where}: unknown field(s) {extra}; accepted: {sorted(BUSINESS_FIELDS)}",
            field=f"{where}.{extra[0]}",
        )
    name = next(name for name in REQUIRED_FIELDS if name not in row)
    raise RequestError(f"{where}: missing field '{name}'", field=f"{where}.{name}")


def _out_of_range(name: str, kind: type, values: list) -> bool:
    """Whether any of ``values`` is outside its :data:`BOUNDS`: the value of an int, the
    length of a string. One C-level pass (``min``/``max`` over ``map``)."""
    if not values:
        return False
    low, high = BOUNDS[name]
    if kind is str:
        return max(map(len, values)) > high
    return min(values) < low or max(values) > high


def parse_v1_rows(payload: Any, max_batch: int, n_cat: int, n_num: int):
    """Predictor v1 instances -> (cat int64 [N, n_cat], num float32 [N, n_num])."""
    instances = instances_of(payload, max_batch)
    cat = np.empty((len(instances), n_cat), dtype=np.int64)
    num = np.empty((len(instances), n_num), dtype=np.float32)
    for i, row in enumerate(instances):
        where = f"instances[{i}]"
        if isinstance(row, dict):
            if set(row) != {INPUT_CAT, INPUT_NUM}:
                raise RequestError(
                    f"{where} must have exactly the keys '{INPUT_CAT}' and '{INPUT_NUM}', "
                    f"got {sorted(row)}",
                    field=where,
                )
            cat_values, num_values = row[INPUT_CAT], row[INPUT_NUM]
            _check_list(cat_values, n_cat, f"{where}.{INPUT_CAT}")
            _check_list(num_values, n_num, f"{where}.{INPUT_NUM}")
        else:
            _check_list(row, n_cat + n_num, where)
            cat_values, num_values = row[:n_cat], row[n_cat:]
        cat[i] = _ints(cat_values, where)
        num[i] = _floats(num_values, where)
    return cat, num


def _check_list(value: Any, length: int, where: str) -> None:
    if not isinstance(value, list):
        raise RequestError(
            f"{where} must be a list of {length} numbers, got {_kind(value)}", field=where
        )
    if len(value) != length:
        raise RequestError(f"{where} must hold {length} values, got {len(value)}", field=where)


def _ints(values: list, where: str) -> list[int]:
    """Int64 values; integral floats pass too (a flat row of numpy floats sends 3.0)."""
    for value in values:
        integral = type(value) is int or (type(value) is float and value.is_integer())
        if not integral or not INT64_MIN <= value <= INT64_MAX:
            raise RequestError(
                f"{where}: categorical inputs must be int64, got {value!r}", field=where
            )
    return values


def _floats(values: list, where: str) -> list[float]:
    for value in values:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise RequestError(
                f"{where}: numeric inputs must be finite numbers, got {value!r}", field=where
            )
    return values


V2_INPUTS = {INPUT_CAT: ("INT64", np.int64), INPUT_NUM: ("FP32", np.float32)}


def parse_v2_inputs(inputs: list, max_batch: int, widths: dict[str, int]) -> dict[str, np.ndarray]:
    """Open Inference Protocol inputs (KServe ``InferInput``s) -> validated arrays by name."""
    names = [i.name for i in inputs]
    if sorted(names) != sorted(V2_INPUTS):
        raise RequestError(
            f"inputs must be exactly {sorted(V2_INPUTS)}, got {names}", field="inputs"
        )
    arrays = {}
    for item in inputs:
        where = f"inputs[{item.name}]"
        datatype, dtype = V2_INPUTS[item.name]
        if item.datatype != datatype:
            raise RequestError(
                f"{where}: datatype must be {datatype}, got {item.datatype}",
                field=f"{where}.datatype",
            )
        shape = list(item.shape)
        if len(shape) != 2 or shape[1] != widths[item.name] or shape[0] < 0:
            raise RequestError(
                f"{where}: shape must be [N, {widths[item.name]}], got {shape}",
                field=f"{where}.shape",
            )
        try:
            array = item.as_numpy()
        except (ValueError, TypeError) as exc:
            raise RequestError(
                f"{where}: data does not match shape {shape}: {exc}", field=f"{where}.data"
            ) from exc
        array = array.astype(dtype, copy=False)
        if dtype is np.float32 and not np.isfinite(array).all():
            raise RequestError(f"{where}: values must be finite", field=f"{where}.data")
        arrays[item.name] = array
    rows = {a.shape[0] for a in arrays.values()}
    if len(rows) != 1:
        raise RequestError(f"inputs disagree on the batch size: {sorted(rows)}", field="inputs")
    _check_size(rows.pop(), max_batch, "inputs")
    return arrays
