"""The model server: MLflow's own scoring app for a registered model, behind a guard that bounds each request's bytes
and refuses, before MLflow parses it, a body that is not a batch of images, each with a one-line message, and that
keeps stack traces (server paths, library internals) out of every answer.

    make serve     # MODEL_URI="models:/<name>@champion" uvicorn --factory <package>.lib.scoring:app --port 5001

MLflow's scoring server (`mlflow models serve`, uvicorn) has no request size limit and answers a CSV body with its
stack trace; both happen before the model is called, so serving.py cannot help: this ASGI layer can. Limits, from the
server's environment: MODEL_MAX_BYTES (a request body, default: MODEL_MAX_BATCH images of the model's input size as
JSON, at BYTES_PER_NUMBER a number; over it: HTTP 413, before a byte is parsed), MODEL_MAX_BATCH (serving.py) and
MLflow's MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT (seconds, default 60; over it: HTTP 504).
"""

import asyncio
import json
import math
import os

from {{ cookiecutter.package_name }}.lib import serving, stage

MODEL_URI_ENV = "MODEL_URI"
MAX_BYTES_ENV = "MODEL_MAX_BYTES"
# The most a pixel takes in JSON: a float64 written whole, "1.2345678901234567e-05" (22 bytes), ", " and a share of
# the brackets. json.dumps of a random float32 batch measures 20.3 (tests/test_scoring.py).
BYTES_PER_NUMBER = 26
# The JSON keys that carry a tensor in MLflow's scoring protocol (the dataframe ones cannot hold 4-D images).
TENSOR_KEYS = ("inputs", "instances")
NOT_NUMBERS = {bool: "true/false (booleans)", type(None): "null", str: "strings", dict: "objects",
               list: "lists of uneven depth"}


def default_max_bytes(input_shape, max_batch):
    """MODEL_MAX_BYTES unless set: room for max_batch images of input_shape [C, H, W], however they are written."""
    return max_batch * math.prod(input_shape) * BYTES_PER_NUMBER


def expected(input_shape):
    shape = ", ".join(map(str, input_shape))
    return 'application/json {"inputs": [...]} holding float32 (B, ' + shape + ") pixels in [0, 1], B >= 1"


def refusal(body, content_type, input_shape):
    """(HTTP status, message) for a body that is not a batch of images, or None to let MLflow take it."""
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime != "application/json":
        return 415, f"Content-Type {content_type or '(none)'}: this model takes {expected(input_shape)}"
    try:
        data = json.loads(body)
    except ValueError as e:  # UnicodeDecodeError included
        return 400, f"the body is not valid JSON ({str(e)[:200]}); send {expected(input_shape)}"
    keys = [k for k in TENSOR_KEYS if isinstance(data, dict) and k in data]
    if len(keys) != 1:
        found = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        return 400, f"expected a JSON object with one of the keys {', '.join(TENSOR_KEYS)}, got {found}; send " \
                    f"{expected(input_shape)}"
    x = data[keys[0]]
    if x == [] or x is None:
        return 400, f"empty input: the request holds no image; send at least one, as {expected(input_shape)}"
    if bad := leaf_types(x) - {int, float}:
        what = ", ".join(NOT_NUMBERS.get(t, t.__name__) for t in sorted(bad, key=lambda t: t.__name__))
        return 400, f"{keys[0]} hold {what}, not numbers: send {expected(input_shape)}"
    return None


def leaf_types(x, types=None):
    """The Python types of what nested lists hold at their bottom (a list there: uneven depth)."""
    types = set() if types is None else types
    if type(x) is not list:
        types.add(type(x))
    elif x and type(x[0]) is list:
        for item in x:
            leaf_types(item, types)
    else:
        types.update(map(type, x))  # the innermost rows: type() per number at C speed
    return types


async def answer(send, status, message):
    """A JSON error the way MLflow writes them, without a stack trace."""
    body = json.dumps({"error_code": "BAD_REQUEST", "message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def without_stack_trace(send):
    """`send` for an app whose JSON error answers (status >= 400) lose their `stack_trace`."""
    held = {}

    async def sending(message):
        if message["type"] == "http.response.start" and message["status"] >= 400:
            held.update(start=message, body=b"")
            return None
        if message["type"] != "http.response.body" or "start" not in held:
            return await send(message)
        held["body"] += message.get("body", b"")
        if message.get("more_body"):
            return None
        body = held["body"]
        try:
            error = json.loads(body)
            if isinstance(error, dict) and error.pop("stack_trace", None) is not None:
                body = json.dumps(error).encode()
        except ValueError:
            pass  # not JSON: passed on as it is
        headers = [(k, v) for k, v in held["start"]["headers"] if k.lower() != b"content-length"]
        await send({**held["start"], "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        return await send({"type": "http.response.body", "body": body})
    return sending


def guard(app, input_shape, max_bytes):
    """The ASGI app in front of MLflow's: POST /invocations bounded to max_bytes and checked by `refusal`; every
    answer without a stack trace. /ping, /health and /version go straight through."""
    async def guarded(scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/invocations" or scope["method"] != "POST":
            return await app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length", "")
        too_big = (f"request body {'of ' + length + ' bytes ' if length.isdigit() else ''}over the server's limit of "
                   f"{max_bytes} bytes ({MAX_BYTES_ENV}); send fewer images per request")
        if length.isdigit() and int(length) > max_bytes:
            return await answer(send, 413, too_big)  # refused unread
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > max_bytes:  # chunked, without a Content-Length
                return await answer(send, 413, too_big)
        # In a thread, as MLflow parses: the event loop keeps answering /ping meanwhile.
        refused = await asyncio.to_thread(refusal, bytes(body), headers.get("content-type"), input_shape)
        if refused:
            return await answer(send, *refused)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}
        return await app(scope, replay, without_stack_trace(send))
    return guarded


def app(env=os.environ):
    """The ASGI app uvicorn serves (--factory): the model at MODEL_URI, loaded by MLflow, in MLflow's scoring app,
    guarded. A model that cannot be loaded stops the server with one line."""
    from mlflow.pyfunc import scoring_server

    uri = env.get(MODEL_URI_ENV)
    if not uri:
        raise SystemExit(f"serve: set {MODEL_URI_ENV} to the model to serve, e.g. models:/<name>@champion")
    try:
        model = scoring_server.load_model_with_mlflow_config(uri)
    except Exception as e:
        if not stage.handled(e):
            raise
        raise SystemExit(f"serve: {uri}: {' '.join(str(e).split())[:500]}") from None
    shape = list(model.metadata.get_input_schema().inputs[0].shape[1:])  # (-1, C, H, W) -> [C, H, W]
    max_batch = int(env.get(serving.MAX_BATCH_ENV, serving.MAX_BATCH_DEFAULT))
    max_bytes = int(env.get(MAX_BYTES_ENV) or default_max_bytes(shape, max_batch))
    print(f"serve: {uri}, inputs (B, {', '.join(map(str, shape))}), at most {max_batch} images and {max_bytes} bytes "
          "a request", flush=True)
    return guard(scoring_server.init(model), shape, max_bytes)
