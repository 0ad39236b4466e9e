"""Random requests for every REST route of /openapi.json, through the real
Envoy: random path parameters (percent-encodings included), query parameters
and JSON bodies that mostly fit the schema. Nothing answers 5xx, every error
is the one JSON shape, nothing hangs, every service stays up."""
from __future__ import annotations

import http.client
import json
import os
import random
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from fuzz_generators import random_json, random_string, random_value_for

SEED = 3939
CASES_PER_ROUTE = 100
READ_TIMEOUT = 60.0  # headers not back after this: a hang
HOSTILE_SEGMENTS = ("%FF", "%00", "%2F..%2F", "%C0%AF", "..", "%", "%zz", "a%20b", "%E2%80%AE", "~" * 300)


def routes(openapi: dict) -> list[tuple[str, str, dict]]:
    return [(method.upper(), path, operation) for path, operations in openapi["paths"].items()
            for method, operation in operations.items()]


def build_request(method: str, path: str, operation: dict, components: dict, rng: random.Random,
                  ids: list[str], images: list[bytes]) -> tuple[str, bytes | None]:
    for parameter in operation.get("parameters", []):
        if parameter["in"] != "path":
            continue
        roll = rng.random()
        value = rng.choice(ids) if roll < 0.3 and ids else random_string(rng, 30)
        encoded = rng.choice(HOSTILE_SEGMENTS) if roll > 0.85 else urllib.parse.quote(value, safe="")
        path = path.replace("{" + parameter["name"] + "}", encoded)
    query = {}
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "query" and rng.random() < 0.6:
            query[parameter["name"]] = str(random_value_for(parameter.get("schema", {}), components, rng, ids, []))
    if rng.random() < 0.1:
        query[random_string(rng, 8) or "x"] = random_string(rng)
    url = path + ("?" + urllib.parse.urlencode(query) if query else "")
    body = None
    if "requestBody" in operation:
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        value = random_value_for(schema, components, rng, ids, images) if rng.random() < 0.85 else random_json(rng)
        body = json.dumps(value).encode() if rng.random() < 0.95 else rng.randbytes(rng.randint(0, 64))
    return url, body


def send(port: int, method: str, url: str, body: bytes | None) -> tuple[int, bytes] | str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=READ_TIMEOUT)
    try:
        headers = {"authorization": f"Bearer {os.environ['VISAGE_TOKEN']}",  # the session's admin (tests/conftest.py)
                   **({"content-type": "application/json"} if body is not None else {})}
        connection.request(method, url, body=body, headers=headers)
        response = connection.getresponse()
        if response.getheader("content-type", "").startswith("text/event-stream"):
            return response.status, b""  # a watch that opened: enough
        return response.status, response.read()
    except TimeoutError:
        return "hang"
    finally:
        connection.close()


def test_random_requests_for_every_rest_route(fuzz_stack):
    status, _, spec = fuzz_stack.gateway.request("GET", "/openapi.json")
    assert status == 200
    openapi = json.loads(spec)
    components = openapi["components"]["schemas"]
    rng = random.Random(SEED)
    cases = [(method, *build_request(method, path, operation, components, rng, fuzz_stack.ids, fuzz_stack.images))
             for method, path, operation in routes(openapi) for _ in range(CASES_PER_ROUTE)]
    assert len({path for _, path, _ in routes(openapi)}) >= 20  # every route of the API, not a subset
    with ThreadPoolExecutor(max_workers=16) as threads:
        results = list(threads.map(lambda case: send(fuzz_stack.gateway.port, *case), cases))
    failures = []
    for (method, url, _body), result in zip(cases, results):
        if result == "hang" or result[0] >= 500:
            failures.append((method, url[:80], result if result == "hang" else result[0],
                             "" if result == "hang" else result[1][:200]))
        elif result[0] >= 400:
            error = json.loads(result[1])
            if set(error) != {"code", "message", "details"} or not isinstance(error["code"], int) \
                    or not isinstance(error["details"], list) or not error["message"]:
                failures.append((method, url[:80], result[0], result[1][:200]))
    statuses = Counter(result[0] for result in results if result != "hang")
    print(f"REST fuzz: {len(cases)} cases, statuses {dict(sorted(statuses.items()))}")
    assert not failures, f"seed {SEED}: {len(failures)} bad answers, e.g. {failures[:8]}"
    assert statuses[200] and statuses[400] and statuses[404], statuses  # cases reached the services
    fuzz_stack.assert_all_healthy()
