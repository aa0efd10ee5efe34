import asyncio
import json
import re

import numpy as np
import pytest

from {{ cookiecutter.package_name }}.lib import scoring, serving

SHAPE = [3, 32, 32]


def _body(x):
    return json.dumps({"inputs": x}).encode()


def test_a_full_batch_fits_the_default_byte_limit_however_its_numbers_are_written():
    x = np.random.default_rng(0).random((serving.MAX_BATCH_DEFAULT, *SHAPE), dtype=np.float32)
    body = _body(x.tolist())
    assert 20 < len(body) / x.size < 21  # BYTES_PER_NUMBER's measured figure
    assert len(body) <= scoring.default_max_bytes(SHAPE, serving.MAX_BATCH_DEFAULT)
    tiny = np.full(x.shape, 1.2345678901234567e-05).tolist()  # the longest a float64 is written
    assert len(_body(tiny)) <= scoring.default_max_bytes(SHAPE, serving.MAX_BATCH_DEFAULT)


@pytest.mark.parametrize("body, content_type, status, message", [
    (b"a,b\n1,2", "text/csv", 415, r"Content-Type text/csv: this model takes application/json"),
    (b"{}", None, 415, r"Content-Type \(none\)"),
    (_body([[[[True, False]]]]), "application/json", 400, r"inputs hold true/false \(booleans\), not numbers"),
    (_body([[[[0.5, None]]]]), "application/json", 400, r"inputs hold null"),
    (_body([[[["0.5"]]]]), "application/json", 400, r"inputs hold strings"),
    (_body([[[0.5, [0.5]]]]), "application/json", 400, r"lists of uneven depth"),
    (_body([]), "application/json; charset=utf-8", 400, r"empty input: the request holds no image; send at least one"),
    (b'{"inputs": [1', "application/json", 400, r"not valid JSON"),
    (b'{"dataframe_split": {}}', "application/json", 400, r"one of the keys inputs, instances, got \['dataframe_"),
    (b"[1, 2]", "application/json", 400, r"one of the keys inputs, instances, got list"),
])
def test_what_is_not_a_batch_of_images_is_refused_naming_the_expected_input(body, content_type, status, message):
    code, text = scoring.refusal(body, content_type, SHAPE)
    assert code == status
    assert re.search(message, text), text
    assert "float32 (B, 3, 32, 32) pixels in [0, 1]" in text


def test_numbers_of_any_json_form_pass_to_mlflow():
    assert scoring.refusal(_body([[[[0, 1, 0.5, 1e-05]]]]), "application/json", SHAPE) is None
    assert scoring.refusal(b'{"instances": [[[[0.5]]]]}', "application/json", SHAPE) is None


def _mlflow_like(received):
    """An ASGI app standing in for MLflow's: records the body it gets, answers 400 with a stack trace for
    /invocations, 200 otherwise."""
    async def app(scope, receive, send):
        body = b""
        if scope["path"] == "/invocations":
            message = await receive()
            body = message["body"]
            received.append(body)
        status = 400 if scope["path"] == "/invocations" else 200
        answer = json.dumps({"error_code": "X", "message": "m", "stack_trace": 'File "/srv/secret.py"'}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]})
        await send({"type": "http.response.body", "body": answer[:10], "more_body": True})
        await send({"type": "http.response.body", "body": answer[10:]})
    return app


def _call(app, path, chunks, headers=()):
    """(status, body) of one request through an ASGI app; `chunks`: the body as the server receives it."""
    scope = {"type": "http", "method": "POST" if path == "/invocations" else "GET", "path": path,
             "headers": [(k.encode(), v.encode()) for k, v in headers]}
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert int(dict(start["headers"])[b"content-length"]) == len(body)
    return start["status"], body


def test_the_guard_bounds_bytes_refuses_bad_bodies_and_keeps_stack_traces_out():
    received = []
    app = scoring.guard(_mlflow_like(received), SHAPE, max_bytes=1000)
    json_type = [("content-type", "application/json")]
    status, body = _call(app, "/invocations", [b"x"], [*json_type, ("content-length", "5000000")])
    assert status == 413 and "request body of 5000000 bytes over the server's limit of 1000 bytes" in body.decode()
    status, body = _call(app, "/invocations", [b"[" * 600, b"[" * 600], json_type)  # chunked: counted as it comes
    assert status == 413 and "over the server's limit of 1000 bytes (MODEL_MAX_BYTES)" in body.decode()
    status, body = _call(app, "/invocations", [b"a,b\n1,2"], [("content-type", "text/csv")])
    assert status == 415 and received == []  # refused before MLflow saw it
    good = _body([[[[0.5]]]])
    status, body = _call(app, "/invocations", [good[:5], good[5:]], json_type)
    assert received == [good]  # MLflow gets the body whole, as sent
    assert status == 400 and json.loads(body) == {"error_code": "X", "message": "m"}  # its stack trace dropped
    assert _call(app, "/ping", [b""])[0] == 200  # the rest goes straight through
