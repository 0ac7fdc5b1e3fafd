#!/usr/bin/env python3
"""A minimal S3 client (standard library only) for the end-to-end benchmark.

    python3 benches/e2e/s3list.py http://127.0.0.1:8333 BUCKET [PREFIX]

(keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) prints the number of objects and
their total size under PREFIX, from ListObjectsV2 pages of 1,000 keys signed with SigV4.

bench.py uses it to measure an S3 repository's shape (objects and bytes) the way any
client sees it, whatever the server keeps on its disk (SeaweedFS stores objects in
volume files and a filer database, so its data folder says nothing about them), and to
wait until a server answers signed requests.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import os
import sys
import urllib.parse
import xml.etree.ElementTree as ET

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _quote(s: str, safe: str = "") -> str:
    # SigV4 wants RFC 3986 encoding: only A-Z a-z 0-9 - _ . ~ stay as they are.
    return urllib.parse.quote(s, safe="-_.~" + safe)


def request(endpoint: str, access_key: str, secret_key: str, method: str, path: str,
            query: dict[str, str] | None = None, region: str = "us-east-1", timeout: float = 30.0
            ) -> tuple[int, bytes]:
    """One SigV4-signed request with an empty body (path-style: `/BUCKET/KEY`)."""
    url = urllib.parse.urlsplit(endpoint)
    host = url.netloc
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    canonical_path = _quote(path, safe="/")
    canonical_query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted((query or {}).items()))
    headers = {"host": host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([method, canonical_path, canonical_query,
                           "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)), signed, EMPTY_SHA256])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret_key).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                                f"SignedHeaders={signed}, Signature={signature}")
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)
    try:
        conn.request(method, canonical_path + ("?" + canonical_query if canonical_query else ""), headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def list_objects(endpoint: str, access_key: str, secret_key: str, bucket: str, prefix: str = ""
                 ) -> tuple[int, int]:
    """(number of objects, sum of their sizes) under prefix, from every ListObjectsV2 page."""
    count = total = 0
    token = None
    while True:
        query = {"list-type": "2", "max-keys": "1000"}
        if prefix:
            query["prefix"] = prefix
        if token:
            query["continuation-token"] = token
        status, body = request(endpoint, access_key, secret_key, "GET", f"/{bucket}", query)
        if status != 200:
            raise RuntimeError(f"ListObjectsV2 {bucket}/{prefix}: HTTP {status}: {body[:300]!r}")
        root = ET.fromstring(body)
        for c in root.iter(f"{NS}Contents"):
            count += 1
            total += int(c.findtext(f"{NS}Size") or 0)
        token = root.findtext(f"{NS}NextContinuationToken")
        if (root.findtext(f"{NS}IsTruncated") or "false").lower() != "true" or not token:
            return count, total


def main() -> None:
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__.strip().splitlines()[2])
    n, size = list_objects(sys.argv[1], os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"],
                           sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else "")
    print(f"{n} objects, {size} bytes")


if __name__ == "__main__":
    main()
