"""A local HTTP server speaking the AWS Price List Query API's JSON protocol (AWS JSON 1.1) for
`GetProducts`, the one call the AWS adapter makes: moto has no Pricing API. The real boto3
`pricing` client is pointed at it through `endpoint_url`.

What it does as AWS does:
- `POST /` with `X-Amz-Target: AWSPriceListService.GetProducts` and a SigV4 `Authorization`
  header (an unsigned request is refused, `MissingAuthenticationTokenException`);
- `TERM_MATCH` filters on the products' attributes; only `AmazonEC2` is known;
- the products of each type in each region include variants the adapter's filters must exclude
  (Windows, dedicated tenancy, SQL pre-installed, a reservation's unused capacity), each with its
  own price, so a missing filter gives a wrong price;
- `PriceList` entries are JSON documents sent as strings, the price at
  terms.OnDemand.<offer>.priceDimensions.<dimension>.pricePerUnit.USD (a decimal string, "Hrs");
- pages of at most `page_size` (and `MaxResults`) entries, `NextToken` for the next one; the
  first match of `reserved_only_first` types has no on-demand term, so the price is on page 2;
- `throttle` (a set of types, or "*" for all): `ThrottlingException` (HTTP 400), as AWS answers
  past its rate limit.
Every request is recorded (target, filters, the region of the signing scope).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# On-demand Linux prices of the stand-in, USD/hour, by region then type: region-specific on
# purpose (us-east-1's are AWS's list prices, the static table's; the others differ).
PRICES: dict[str, dict[str, float]] = {
    "us-east-1": {
        "t3.medium": 0.0416,
        "g6.xlarge": 0.8048,
        "g5.xlarge": 1.006,
        "g6e.xlarge": 1.861,
        "p4d.24xlarge": 21.96,
        "p5.48xlarge": 55.04,
    },
    "eu-west-3": {
        "t3.medium": 0.0472,
        "g6.xlarge": 0.9817,
        "g5.xlarge": 1.258,
        "g6e.xlarge": 2.2702,
        "p4d.24xlarge": 27.4500,
        "p5.48xlarge": 68.8,
    },
}
# The variants a correct query must not match: (attribute, value, price factor).
VARIANTS = (
    ("operatingSystem", "Windows", 1.9),
    ("tenancy", "Dedicated", 1.1),
    ("preInstalledSw", "SQL Web", 1.4),
    ("capacitystatus", "UnusedCapacityReservation", 1.0),
)
TARGET = "AWSPriceListService.GetProducts"


@dataclass
class PricingCall:
    target: str
    signing_region: str | None
    body: dict[str, Any]

    def filters(self) -> dict[str, str]:
        return {f["Field"]: f["Value"] for f in self.body.get("Filters", [])}


@dataclass
class FakePricing:
    prices: dict[str, dict[str, float]] = field(
        default_factory=lambda: json.loads(json.dumps(PRICES))
    )
    page_size: int = 100
    throttle: set[str] | str = field(default_factory=set)
    reserved_only_first: set[str] = field(default_factory=set)
    calls: list[PricingCall] = field(default_factory=list)
    url: str = ""
    _pages: dict[str, list[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------------ the products

    def _products(self) -> list[dict[str, Any]]:
        products = []
        for region, types in self.prices.items():
            for instance_type, price in types.items():
                base = {
                    "instanceType": instance_type,
                    "regionCode": region,
                    "operatingSystem": "Linux",
                    "tenancy": "Shared",
                    "preInstalledSw": "NA",
                    "capacitystatus": "Used",
                    "licenseModel": "No License required",
                    "servicecode": "AmazonEC2",
                }
                if instance_type in self.reserved_only_first:
                    products.append(_product(base, None))
                products.append(_product(base, price))
                for attribute, value, factor in VARIANTS:
                    products.append(_product({**base, attribute: value}, round(price * factor, 4)))
        return products

    def get_products(self, body: dict[str, Any]) -> dict[str, Any]:
        token = body.get("NextToken")
        with self._lock:
            if token:
                if token not in self._pages:
                    raise ApiError("InvalidNextTokenException", "The next token is invalid")
                remaining = self._pages.pop(token)
            else:
                if body.get("ServiceCode") != "AmazonEC2":
                    raise ApiError("NotFoundException", f"no service {body.get('ServiceCode')!r}")
                wanted = {f["Field"]: f["Value"] for f in body.get("Filters", [])}
                for f in body.get("Filters", []):
                    if f.get("Type") != "TERM_MATCH":
                        raise ApiError("InvalidParameterException", f"filter type {f.get('Type')}")
                throttled = self.throttle == "*" or wanted.get("instanceType") in self.throttle
                if throttled:
                    raise ApiError("ThrottlingException", "Rate exceeded")
                remaining = [
                    json.dumps(p)
                    for p in self._products()
                    if all(p["product"]["attributes"].get(k) == v for k, v in wanted.items())
                ]
            size = min(self.page_size, int(body.get("MaxResults") or 100))
            page, rest = remaining[:size], remaining[size:]
            answer: dict[str, Any] = {"FormatVersion": "aws_v1", "PriceList": page}
            if rest:
                next_token = uuid.uuid4().hex
                self._pages[next_token] = rest
                answer["NextToken"] = next_token
        return answer


def _product(attributes: dict[str, str], price: float | None) -> dict[str, Any]:
    sku = uuid.uuid4().hex[:16].upper()
    terms: dict[str, Any] = {
        "Reserved": {
            f"{sku}.4NA7Y494T4": {
                "priceDimensions": {
                    f"{sku}.4NA7Y494T4.6YS6EN2CT7": {
                        "unit": "Hrs",
                        "pricePerUnit": {"USD": f"{(price or 1.0) * 0.6:.10f}"},
                    }
                },
                "termAttributes": {"LeaseContractLength": "1yr", "PurchaseOption": "No Upfront"},
            }
        }
    }
    if price is not None:
        terms["OnDemand"] = {
            f"{sku}.JRTCKXETXF": {
                "offerTermCode": "JRTCKXETXF",
                "sku": sku,
                "priceDimensions": {
                    f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                        "unit": "Hrs",
                        "description": f"${price} per On Demand Linux {attributes['instanceType']}",
                        "pricePerUnit": {"USD": f"{price:.10f}"},
                    }
                },
            }
        }
    return {
        "product": {"productFamily": "Compute Instance", "attributes": attributes, "sku": sku},
        "serviceCode": "AmazonEC2",
        "terms": terms,
        "version": "20240101000000",
        "publicationDate": "2024-01-01T00:00:00Z",
    }


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/pricing/aws4_request")


def serve(fake: FakePricing) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            target = self.headers.get("X-Amz-Target", "")
            auth = self.headers.get("Authorization", "")
            scope = _SCOPE.search(auth)
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {}
            fake.calls.append(PricingCall(target, scope.group(1) if scope else None, body))
            try:
                if not auth.startswith("AWS4-HMAC-SHA256"):
                    raise ApiError(
                        "MissingAuthenticationTokenException", "Missing Authentication Token", 403
                    )
                if target != TARGET:
                    raise ApiError("UnknownOperationException", f"unknown target {target!r}")
                self._send(200, fake.get_products(body))
            except ApiError as exc:
                self._send(exc.status, {"__type": exc.code, "message": exc.message})

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@contextmanager
def running() -> Iterator[FakePricing]:
    """A fresh stand-in, served on loopback until the block ends."""
    fake = FakePricing()
    server = serve(fake)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
