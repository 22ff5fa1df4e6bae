"""Property-based fuzz of the OpenAPI document: generated requests for every operation get
no 500 and answers that conform to the documented shapes. Bounded to a few seconds."""
import tempfile

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from schemathesis.checks import (  # noqa: E402
    content_type_conformance, not_a_server_error, response_schema_conformance, status_code_conformance)

from server_helpers import make_app  # noqa: E402

_app = make_app(tempfile.mkdtemp(prefix="simmerge-fuzz-") + "/fuzz.db", start_workers=False)


async def _without_lifespan(scope, receive, send):
    """The app for every generated call: schemathesis runs the lifespan around each call,
    but the server opens its database once (in create_app) and closes it at shutdown."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await _app(scope, receive, send)


schema = schemathesis.openapi.from_asgi("/openapi.json", _without_lifespan)


@schema.parametrize()
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck), database=None)
def test_no_500_and_documented_answers(case):
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text)
    # The facade checks more than the schema states (a blank task name, a seed's range, an
    # unknown model): refusing schema-valid data with a 4xx is its job, not a failure.
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                             content_type_conformance, response_schema_conformance])
