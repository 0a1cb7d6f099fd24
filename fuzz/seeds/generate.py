#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/seeds/<target>/.

Run it from anywhere: `python3 fuzz/seeds/generate.py`. It removes the seeds
it wrote before (files named `seed-*`) and writes them anew; other files in
those folders (crash reproducers, named `crash-*`) are left alone.

The input layout of each target is described at the top of its source in
fuzz/fuzz_targets/. PLANTED is the secret-looking marker of fuzz/src/lib.rs.
"""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
PLANTED = "QPLANTEDs3cr3t"

# --- helpers -----------------------------------------------------------------


def write(target, name, data):
    folder = os.path.join(HERE, target)
    os.makedirs(folder, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(folder, "seed-" + name), "wb") as f:
        f.write(data)


def clear(target):
    folder = os.path.join(HERE, target)
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith("seed-"):
                os.remove(os.path.join(folder, name))


def compact(value):
    """JSON as serde_json writes it: no spaces."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# The three HTTP-date forms (RFC 9110 §5.6.7) and some tricky dates.
DATES = {
    "imf": "Sun, 06 Nov 1994 08:49:37 GMT",
    "rfc850": "Sunday, 06-Nov-94 08:49:37 GMT",
    "asctime": "Sun Nov  6 08:49:37 1994",
    "epoch": "Thu, 01 Jan 1970 00:00:00 GMT",
    "before-epoch": "Wed, 31 Dec 1969 23:59:59 GMT",
    "leap-second": "Sat, 31 Dec 2016 23:59:60 GMT",
    "feb-30": "Mon, 30 Feb 2026 12:00:00 GMT",
    "rfc850-69": "Thursday, 01-Jan-69 00:00:00 GMT",
    "rfc850-70": "Thursday, 01-Jan-70 00:00:00 GMT",
    "lowercase": "sun, 06 nov 1994 08:49:37 GMT",
    "utc-not-gmt": "Sun, 06 Nov 1994 08:49:37 UTC",
    "year-9999": "Fri, 31 Dec 9999 23:59:59 GMT",
    "year-1e12": "Sun, 06 Nov 1000000000000 08:49:37 GMT",
    "year-i64-max": "Sun, 31 Dec 9223372036854775807 23:59:60 GMT",
    "asctime-huge": "Sun Dec 31 23:59:59 9223372036854775807",
    "year-u64-max": "Sun, 06 Nov 18446744073709551615 08:49:37 GMT",
    # Whole seconds fit in 64 bits, milliseconds do not: saturates to the last
    # millisecond, which is no whole second.
    "year-ms-overflow": "Sun Nov  6 08:49:37 19949999999",
    "hour-24": "Sun, 06 Nov 1994 24:00:00 GMT",
    "bad-time": "Sun, 06 Nov 1994 08:49 GMT",
}

# (The year 10^12 and larger ones overflowed the date arithmetic of the core
# before 9499f70; they saturate now.)


def dates():
    return dict(DATES)


# --- token_response ----------------------------------------------------------
# [status index][limit byte][Retry-After length][Retry-After][body]

STATUSES = [200, 201, 203, 204, 299, 400, 401, 403, 404, 408, 409, 429, 500,
            502, 503, 504, 599, 0, 99, 100, 199, 300, 302, 65535]


def token_response(name, status, body, retry_after=b"", limit_byte=0):
    if isinstance(body, str):
        body = body.encode("utf-8")
    if isinstance(retry_after, str):
        retry_after = retry_after.encode("latin-1")
    assert len(retry_after) < 64
    head = bytes([STATUSES.index(status), limit_byte, len(retry_after)])
    write("token_response", name, head + retry_after + body)


def seed_token_response():
    clear("token_response")
    # RFC 6749 §4.4.3 / §5.1 (token_type "example": unsupported here).
    token_response("rfc6749-5.1", 200, json.dumps({
        "access_token": "2YotnFZFEjr1zCsicMWpAA",
        "token_type": "example",
        "expires_in": 3600,
        "refresh_token": "tGzv3JOkF0XG5Qx2TlKWIA",
        "example_parameter": "example_value",
    }, indent=2))
    token_response("rfc6749-4.4.3", 200, json.dumps({
        "access_token": "2YotnFZFEjr1zCsicMWpAA",
        "token_type": "example",
        "expires_in": 3600,
        "example_parameter": "example_value",
    }, indent=2))
    # RFC 6750 bearer, with every field the parser reads and planted secrets.
    token_response("bearer-full", 200, compact({
        "access_token": "at-" + PLANTED,
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_in": 1800,
        "refresh_token": "rt-" + PLANTED,
        "id_token": "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0." + PLANTED,
        "scope": "read write",
        "ext_expires_in": 3599,
        "nested": {"a": [1, 2.5, None, True]},
    }))
    token_response("bearer-minimal", 200, '{"access_token":"abc"}')
    token_response("bearer-lowercase", 201, '{"access_token":"abc","token_type":"bearer","expires_in":"120"}')
    token_response("expires-float", 200, '{"access_token":"a","expires_in":59.9}')
    token_response("expires-null", 200, '{"access_token":"a","expires_in":null,"token_type":null}')
    token_response("expires-zero", 200, '{"access_token":"a","expires_in":0}')
    token_response("expires-negative", 200, '{"access_token":"a","expires_in":-1}')
    token_response("expires-huge-int", 200, '{"access_token":"a","expires_in":18446744073709551616}')
    token_response("expires-1e308", 200, '{"access_token":"a","expires_in":1e308}')
    token_response("expires-1e400", 200, '{"access_token":"a","expires_in":1e400}')
    token_response("expires-string-inf", 200, '{"access_token":"a","expires_in":" inf "}')
    token_response("expires-string-nan", 200, '{"access_token":"a","expires_in":"NaN"}')
    token_response("expires-string-exp", 200, '{"access_token":"a","expires_in":"1e999"}')
    token_response("expires-bad-type", 200, '{"access_token":"a","expires_in":[3600]}')
    token_response("refresh-in-string", 200, '{"access_token":"a","expires_in":60,"refresh_in":"30"}')
    token_response("mac-type", 200, '{"access_token":"a","token_type":"MAC"}')
    token_response("type-not-string", 200, '{"access_token":"a","token_type":7}')
    token_response("empty-token", 200, '{"access_token":""}')
    token_response("token-not-string", 200, '{"access_token":{"v":"' + PLANTED + '"}}')
    token_response("no-token", 200, '{"token_type":"Bearer","refresh_token":"' + PLANTED + '"}')
    token_response("duplicate-keys", 200, '{"access_token":"' + PLANTED + '","access_token":"b"}')
    token_response("escaped-key", 200, '{"acc\\u0065ss_token":"a\\"b\\\\c\\u00e9\\ud83d\\ude00"}')
    token_response("lone-surrogate", 200, '{"access_token":"\\ud800"}')
    token_response("bom", 200, b"\xef\xbb\xbf" + b'{"access_token":"a"}')
    token_response("invalid-utf8", 200, b'{"access_token":"\xff\xfe"}')
    token_response("error-with-200", 200, '{"error":"invalid_client","access_token":"' + PLANTED + '"}')
    token_response("error-not-string", 400, '{"error":42,"access_token":"' + PLANTED + '"}')
    token_response("empty", 200, "")
    token_response("whitespace", 200, " \r\n\t ")
    token_response("truncated", 200, '{"access_token": "' + PLANTED + '", "expires_in": ')
    token_response("array", 200, "[1,2]")
    token_response("scalar", 200, "3600")
    token_response("deep-nesting", 200, "[" * 200 + "]" * 200)
    token_response("deep-nesting-over", 200, '{"access_token":"a","x":' + "[" * 130 + "]" * 130 + "}")
    token_response("control-chars", 200, "\x00\x01garbage")
    html = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
    token_response("html-502", 502, html)
    token_response("html-200", 200, html)
    token_response("html-long-503", 503, "<html>" + "x" * 600 + "\n\t</html>", "120")
    token_response("text-429", 429, "Too Many Requests", "30")
    token_response("empty-500", 500, "")
    token_response("multibyte-snippet", 500, "é" * 200)
    # RFC 6749 §5.2.
    token_response("rfc6749-5.2", 400, json.dumps({"error": "invalid_request"}, indent=2))
    token_response("error-full", 401, compact({
        "error": "invalid_client",
        "error_description": "Client authentication failed",
        "error_uri": "https://auth.example/errors/invalid_client",
    }))
    token_response("error-503-retry", 503, '{"error":"temporarily_unavailable"}', "120")
    for name, date in dates().items():
        token_response("retry-after-" + name, 429, '{"error":"slow_down"}', date)
    token_response("retry-after-huge-delta", 503, "", "99999999999999999999999")
    token_response("retry-after-negative", 503, "", "-5")
    token_response("retry-after-fraction", 503, "", "1.5")
    token_response("retry-after-non-ascii", 503, "", b"\xe9t\xe9")
    # Over a small cap (limit byte 224 + 1: 32 bytes).
    token_response("over-limit", 200, '{"access_token":"' + "a" * 64 + '"}', limit_byte=225)
    token_response("at-limit", 200, '{"access_token":"a234567890ab"}', limit_byte=225)
    token_response("zero-limit", 200, "", limit_byte=224)
    for status in [0, 99, 100, 199, 204, 299, 300, 302, 65535]:
        token_response("status-%d" % status, status, '{"access_token":"a"}')


# --- oauth_error -------------------------------------------------------------


def seed_oauth_error():
    clear("oauth_error")
    write("oauth_error", "rfc6749-5.2", "status: 400\nerror: invalid_request\n")
    write("oauth_error", "invalid-grant", (
        "status: 400\n"
        "error: invalid_grant\n"
        'error_description: "The refresh token was revoked."\n'
        "error_uri: https://auth.example/errors#invalid_grant\n"
        "plant: access_token refresh_token id_token\n"
    ))
    for code in ["invalid_client", "unauthorized_client", "invalid_scope",
                 "unsupported_grant_type", "temporarily_unavailable", "server_error",
                 "slow_down", "access_denied", ""]:
        write("oauth_error", "code-" + (code or "empty"),
              "status: 400\nerror: %s\nplant: client_secret assertion\n" % code)
    for status in [200, 302, 401, 403, 408, 429, 500, 503, 599, 600, 0, 65535]:
        write("oauth_error", "status-%d" % status,
              "status: %d\nerror: temporarily_unavailable\n" % status)
    write("oauth_error", "retry-delta", "status: 503\nerror: temporarily_unavailable\nretry-after: delta 120\nnow: 1700000000\n")
    write("oauth_error", "retry-delta-huge", "status: 429\nerror: slow_down\nretry-after: delta 18446744073709551615\n")
    for form in ["imf", "rfc850", "asctime"]:
        write("oauth_error", "retry-date-" + form,
              "status: 503\nerror: temporarily_unavailable\nretry-after: date 784111777 %s\n" % form)
    write("oauth_error", "retry-date-far", "status: 503\nerror: x\nretry-after: date 18446744073709551 imf\n")
    for name, date in dates().items():
        write("oauth_error", "retry-raw-" + name, "status: 429\nerror: slow_down\nretry-after: raw %s\n" % date)
    write("oauth_error", "unicode", (
        'status: 400\nerror: "inv\\u00e1lid_gr\\u00e4nt"\n'
        'error_description: "line one\\nline two\\u0000\\ud83d\\ude00"\n'
        'error_uri: "javascript:alert(1)"\n'
    ))
    write("oauth_error", "members", (
        "status: 400\nerror: invalid_request\n"
        'member: {"error_codes":[70011],"timestamp":"2026-01-01 00:00:00Z","trace_id":"x",'
        '"correlation_id":null,"expires_in":3600,"access_token":"' + PLANTED + '"}\n'
    ))


# --- retry_after -------------------------------------------------------------
# [now: u64 LE milliseconds][knobs][value]


def retry_after(name, value, now_ms=1_700_000_000_000, knobs=1):
    if isinstance(value, str):
        value = value.encode("latin-1")
    write("retry_after", name, struct.pack("<Q", now_ms) + bytes([knobs]) + value)


def seed_retry_after():
    clear("retry_after")
    for value in ["120", "0", " 0 ", "\t42\t", "-5", "+5", "1.5", "1e3", "", " ",
                  "18446744073709551615", "18446744073709551616",
                  "99999999999999999999999999999999999999"]:
        retry_after("delta-" + (value.strip() or "empty"), value)
    retry_after("delta-at-max-now", "120", now_ms=2**64 - 1)
    retry_after("delta-at-epoch", "120", now_ms=0, knobs=0x80)
    retry_after("many-failures", "soon", knobs=0x7f)
    retry_after("many-failures-large", "", knobs=0x7f | 0x40)
    for name, date in dates().items():
        retry_after("date-" + name, date)
    retry_after("date-permanent", DATES["imf"], knobs=0x81)
    retry_after("non-ascii", "Sun, 06 Nov 1994 08:49:37 GMT\u00a0".encode("utf-8"))
    retry_after("now-far", "Sun, 06 Nov 1994 08:49:37 GMT", now_ms=253402300799000)
    retry_after("now-max", "", now_ms=2**64 - 1)


# --- cache_record ------------------------------------------------------------
# The key of fuzz_targets/cache_record.rs: client_credentials at
# https://auth.example/token?tenant=t1&key=PLANTED, client "fuzz-client", scope
# "read write", extra parameter client_assertion=jwt-PLANTED. Its id hashes the
# full description; records store the redacted one (older versions stored the
# full one, which still decodes).

FNV128_OFFSET = 0x6C62272E07BB014262B821756295C58D
FNV128_PRIME = 0x0000000001000000000000000000013B


def fnv1a_128(data):
    h = FNV128_OFFSET
    for b in data:
        h = ((h ^ b) * FNV128_PRIME) % (1 << 128)
    return h


FULL_SOURCE = compact(["v1", "https://auth.example/token?tenant=t1&key=" + PLANTED, "fuzz-client",
                       "client_credentials", "read write", "", [],
                       [["client_assertion", "jwt-" + PLANTED]]])
SOURCE = compact(["v1", "https://auth.example/token?<redacted>", "fuzz-client",
                  "client_credentials", "read write", "", [], ["client_assertion"]])
KEY_ID = "%032x" % fnv1a_128(FULL_SOURCE.encode("utf-8"))


def record(token, **overrides):
    doc = {"format": "tokenkeeper-cache-record", "version": 1, "key": KEY_ID,
           "source": SOURCE, "token": token}
    doc.update(overrides)
    return doc


def token(**fields):
    t = {"access_token": "at-" + PLANTED, "token_type": "Bearer",
         "refresh_token": "rt-" + PLANTED, "id_token": None, "scope": "read write",
         "issued_ms": 1_700_000_000_000, "stale_ms": 1_700_002_700_000,
         "expiry_ms": 1_700_003_600_000, "extra": {"ext_expires_in": 3599}}
    t.update(fields)
    return {k: v for k, v in t.items() if v is not OMIT}


OMIT = object()


def seed_cache_record():
    clear("cache_record")
    w = lambda name, doc: write("cache_record", name, doc if isinstance(doc, (str, bytes)) else compact(doc))
    w("valid", record(token()))
    w("valid-legacy-source", record(token(), source=FULL_SOURCE))
    w("legacy-other-query", record(token(), source=FULL_SOURCE.replace("tenant=t1", "tenant=t2")))
    w("source-odd-shapes", record(token(), source=compact(["v1", "no url?" + PLANTED, 1, None, [], {}, "x",
                                                          [["a"], [], "b", ["c", "d", PLANTED]]])))
    w("source-not-json", record(token(), source="v1 https://h/?" + PLANTED))
    write("cache_record", "valid-pretty", json.dumps(record(token()), indent=2))
    w("valid-minimal", record(token(refresh_token=OMIT, id_token=OMIT, scope=OMIT, extra=OMIT)))
    w("valid-id-token", record(token(id_token="eyJ." + PLANTED)))
    w("valid-extra-floats", record(token(extra={"f": 0.1, "g": 1e300, "h": -0.0, "i": 5e-324,
                                                "j": 123456789.123456789, "k": 1.7976931348623157e308})))
    w("valid-extra-big-ints", record(token(extra={"u": 18446744073709551615, "i": -9223372036854775808})))
    w("valid-unicode", record(token(access_token="\u00e9\U0001F600\u0000", scope="\u2028")))
    w("times-equal", record(token(issued_ms=5, stale_ms=5, expiry_ms=5)))
    w("times-max", record(token(issued_ms=0, stale_ms=2**64 - 1, expiry_ms=2**64 - 1)))
    w("times-disordered", record(token(stale_ms=1_800_000_000_000)))
    w("times-negative", record(token(issued_ms=-1)))
    w("times-too-big", record(token(expiry_ms=2**64)))
    w("times-float", record(token(issued_ms=1.5)))
    w("times-string", record(token(issued_ms="secret-" + PLANTED)))
    w("empty-token", record(token(access_token="")))
    w("token-not-string", record(token(access_token=12345)))
    w("no-token", {k: v for k, v in record(token()).items() if k != "token"})
    w("token-array", record([1, 2]))
    w("future-version", record(token(), version=7))
    w("huge-version", record(token(), version=18446744073709551615))
    w("version-zero", record(token(), version=0))
    w("version-string", record(token(), version="1"))
    w("foreign-format", record(token(), format="other-" + PLANTED))
    w("no-format", {k: v for k, v in record(token()).items() if k != "format"})
    w("other-key", record(token(), key="0" * 32))
    w("other-source", record(token(), source="[\"v1\"]"))
    w("key-not-string", record(token(), key=None))
    w("unknown-fields", record(token(unknown="x"), extra_top={"a": 1}))
    write("cache_record", "duplicate-token", compact(record(token()))[:-1] + ',"token":' + compact(token(access_token="b")) + "}")
    text = compact(record(token()))
    write("cache_record", "truncated", text[: len(text) // 2])
    write("cache_record", "truncated-1", text[:-1])
    write("cache_record", "trailing-garbage", text + "x")
    write("cache_record", "trailing-whitespace", text + "\n\n")
    write("cache_record", "empty", "")
    write("cache_record", "not-json", b"\xff\xfe garbage")
    write("cache_record", "array", "[]")
    write("cache_record", "null", "null")
    write("cache_record", "nested", "[" * 200 + "]" * 200)


# --- token_url ---------------------------------------------------------------
# [flags: bit 0 allows insecure http][URL]


def seed_token_url():
    clear("token_url")
    urls = {
        "https": "https://auth.example.com/oauth/token",
        "https-port": "https://auth.example.com:8443/t",
        "http-127": "http://127.0.0.1:8080/token",
        "http-127-other": "http://127.9.9.9/token",
        "http-localhost": "http://localhost/token",
        "http-localhost-upper": "http://LOCALHOST/token",
        "http-localhost-dot": "http://localhost./token",
        "http-ipv6": "http://[::1]:9/token",
        "http-ipv6-long": "http://[0:0:0:0:0:0:0:1]/token",
        "http-ipv4-mapped": "http://[::ffff:127.0.0.1]/token",
        "http-hex-ip": "http://0x7f.1/token",
        "http-decimal-ip": "http://2130706433/token",
        "http-percent-host": "http://%6c%6fcalhost/token",
        "http-remote": "http://auth.example.com/token",
        "http-loopback-lookalike": "http://127.0.0.1.evil.example/token",
        "userinfo": "https://user:" + PLANTED + "@auth.example.com/token",
        "user-only": "https://" + PLANTED + "@auth.example.com/token",
        "query-key": "https://auth.example.com/token?api_key=" + PLANTED + "#frag",
        "query-empty": "https://auth.example.com/token?",
        "fragment": "https://auth.example.com/token#" + PLANTED,
        "ftp": "ftp://auth.example.com/",
        "file": "file:///etc/passwd",
        "data": "data:text/plain," + PLANTED,
        "no-slashes": "https:auth.example.com/token",
        "no-host": "https:///token",
        "empty": "",
        "not-a-url": "not a url",
        "bad-port": "http://[::1]:65536/token",
        "port-zero": "https://auth.example.com:0/token",
        "idn": "https://b\u00fccher.example/token",
        "punycode": "https://xn--bcher-kva.example/token",
        "whitespace": " \thttps://auth.example.com/to\nken \n",
        "backslashes": "https:\\\\auth.example.com\\token",
        "dot-segments": "https://auth.example.com/a/./b/../../token/%2e%2E/x",
        "ipv6-zone": "http://[fe80::1%25eth0]/token",
        "long-path": "https://auth.example.com/" + "a/" * 300,
    }
    for name, url in urls.items():
        write("token_url", name, b"\x00" + url.encode("utf-8"))
        if url.startswith("http:"):
            write("token_url", name + "-insecure", b"\x01" + url.encode("utf-8"))


# --- cli_config ----------------------------------------------------------------

FULL_PROFILE = """\
# Every setting a profile can hold.
[profiles.default]
token_url = "https://auth.example.com/oauth/token?api_key=%(p)s"
client_id = "my-service"
client_secret_file = "secret.txt"
auth_method = "post"
scope = "read write"
audience = "https://api.example.com"
resources = ["https://api.example.com/a", "https://api.example.com/b"]
params = { client_assertion = "jwt-%(p)s", tenant = "t1" }
grant = "refresh_token"
refresh_token_file = "/var/lib/tokenkeeper/rt"
cache = "cache/token.json"
no_cache = false
redis = "redis://user:%(p)s@127.0.0.1:6379/0"
allow_insecure_http = false
min_valid = 60
timeout = 30

[profiles.other]
token_url = "http://127.0.0.1:8080/token"
client_id = "other"
""" % {"p": PLANTED}


def seed_cli_config():
    clear("cli_config")
    c = lambda name, text: write("cli_config", name, text)
    c("full", FULL_PROFILE)
    c("full-crlf", FULL_PROFILE.replace("\n", "\r\n"))
    c("minimal", '[profiles.default]\ntoken_url = "https://a.example/t"\nclient_id = "c"\n')
    c("empty", "")
    c("no-default", '[profiles.prod]\ntoken_url = "https://a.example/t"\nclient_id = "c"\n')
    c("only-profiles", "[profiles]\n")
    c("unknown-field", '[profiles.default]\ntoken_url = "https://a.example/t"\nclient_id = "c"\nclient_secret = "%s"\n' % PLANTED)
    c("unknown-top", 'secret = "%s"\n[profiles.default]\n' % PLANTED)
    c("wrong-types", '[profiles.default]\ntoken_url = 5\nclient_id = ["c"]\nmin_valid = "soon"\n')
    c("negative", '[profiles.default]\ntoken_url = "https://a.example/t"\nclient_id = "c"\nmin_valid = -1\ntimeout = 18446744073709551615\n')
    c("huge-int", '[profiles.default]\nmin_valid = 99999999999999999999\n')
    c("float-int", '[profiles.default]\ntimeout = 1.5\nmin_valid = inf\n')
    c("bad-enum", '[profiles.default]\ntoken_url = "https://a.example/t"\nclient_id = "c"\nauth_method = "private_key_jwt"\ngrant = "password"\n')
    c("http-remote", '[profiles.default]\ntoken_url = "http://auth.example.com/t?k=%s"\nclient_id = "c"\n' % PLANTED)
    c("http-allowed", '[profiles.default]\ntoken_url = "http://auth.example.com/t"\nclient_id = "c"\nallow_insecure_http = true\n')
    c("userinfo-url", '[profiles.default]\ntoken_url = "https://u:%s@auth.example.com/t"\nclient_id = "c"\n' % PLANTED)
    c("bad-url", '[profiles.default]\ntoken_url = "not a url %s"\nclient_id = "c"\n' % PLANTED)
    c("reserved-param", '[profiles.default]\ntoken_url = "https://a.example/t"\nclient_id = "c"\nparams = { grant_type = "%s" }\n' % PLANTED)
    c("param-wrong-type", '[profiles.default]\ntoken_url = "https://a.example/t"\nclient_id = "c"\nparams = { n = 5, t = { x = "%s" } }\n' % PLANTED)
    c("params-dotted", '[profiles.default]\ntoken_url = "https://a.example/t"\nclient_id = "c"\nparams.client_assertion = "%s"\nparams."a b" = ""\n' % PLANTED)
    c("params-table", '[profiles.default]\ntoken_url = "https://a.example/t"\nclient_id = "c"\n[profiles.default.params]\nassertion = """\n%s\n"""\n' % PLANTED)
    c("bad-redis", '[profiles.default]\ntoken_url = "https://a.example/t"\nclient_id = "c"\nredis = "redis://:%s@[::1:6379/x"\n' % PLANTED)
    c("redis-unix", '[profiles.default]\ntoken_url = "https://a.example/t"\nclient_id = "c"\nredis = "redis+unix:///run/redis.sock?pass=%s"\n' % PLANTED)
    c("rediss", '[profiles.default]\ntoken_url = "https://a.example/t"\nclient_id = "c"\nredis = "rediss://default:%s@redis.example:6380/2"\n' % PLANTED)
    c("redis-no-host", '[profiles.default]\ntoken_url = "https://a.example/t"\nclient_id = "c"\nredis = "redis://"\n')
    c("duplicate-key", '[profiles.default]\nclient_id = "a"\nclient_id = "b"\n')
    c("duplicate-table", '[profiles.default]\n[profiles.default]\n')
    c("array-of-tables", '[[profiles]]\nname = "x"\n')
    c("unterminated", '[profiles.default]\ntoken_url = "https://a.example/t\n')
    c("bad-escape", '[profiles.default]\nclient_id = "\\uD800 \\x41"\n')
    c("literal-strings", "[profiles.default]\ntoken_url = 'https://a.example/t'\nclient_id = '''c\n'''\n")
    c("datetime", '[profiles.default]\nclient_id = 1979-05-27T07:32:00-08:00\n')
    c("bom", "\ufeff[profiles.default]\nclient_id = \"c\"\n")
    c("nul", '[profiles.default]\nclient_id = "c\x00"\n')
    c("quoted-profile", '[profiles."default"]\ntoken_url = "https://a.example/t"\nclient_id = "c"\n[profiles."with space"]\n[profiles.""]\n')
    c("relative-paths", '[profiles.default]\ntoken_url = "https://a.example/t"\nclient_id = "c"\ncache = "../x"\nclient_secret_file = ""\nrefresh_token_file = "."\n')
    c("no-cache", '[profiles.default]\ntoken_url = "https://a.example/t"\nclient_id = "c"\nno_cache = true\ncache = "/tmp/x"\n')
    c("deep-inline", "[profiles.default]\nresources = " + "[" * 100 + "]" * 100 + "\n")


# --- discovery_metadata ------------------------------------------------------


def seed_discovery_metadata():
    clear("discovery_metadata")
    # Flags: low two bits the issuer (see the target), the next two the status.
    issuers = [
        "https://idp.example",
        "https://idp.example/tenants/t1",
        "http://127.0.0.1:8080",
        "https://idp.example/",
    ]

    def m(name, flags, body):
        if not isinstance(body, str):
            body = compact(body)
        write("discovery_metadata", name, bytes([flags]) + body.encode("utf-8"))

    for i, issuer in enumerate(issuers):
        base = issuer.rstrip("/")
        m("ok-%d" % i, i, {
            "issuer": issuer,
            "token_endpoint": base + "/oauth2/token",
            "device_authorization_endpoint": base + "/device",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            "grant_types_supported": ["client_credentials"],
        })
        m("mismatch-%d" % i, i, {"issuer": PLANTED + issuer, "token_endpoint": base + "/t"})
        m("not-found-%d" % i, i | 4, "")
        m("down-%d" % i, i | 8, "<html>503</html>")
    m("http-endpoint", 0, {"issuer": "https://idp.example", "token_endpoint": "http://idp.example/t"})
    m("insecure-allowed", 3, {"issuer": "https://idp.example/", "token_endpoint": "http://idp.example/t"})
    m("no-endpoint", 0, {"issuer": "https://idp.example"})
    m("wrong-types", 0, '{"issuer":"https://idp.example","token_endpoint":["x"],"grant_types_supported":{}}')
    m("endpoint-with-key", 0, '{"issuer":"https://idp.example","token_endpoint":"https://idp.example/t?key=%s"}' % PLANTED)
    m("tiny-cap", 12, {"issuer": "https://idp.example", "token_endpoint": "https://idp.example/t"})
    m("escapes", 0, '{"issuer":"https://idp.example\u001b[31m","token_endpoint":"https://idp.example/t"}')
    m("truncated", 0, '{"issuer":"https://idp.example","token_endpoint":"https://idp')
    m("array", 0, "[]")
    m("nested", 0, "[" * 200 + "]" * 200)


# --- device_flow -------------------------------------------------------------
# status index (0 = 200, 3 = 400, 4 = 401, 8 = 500), limit byte, mode byte
# (even: the device authorization answer; odd: a poll's answer), body.


def seed_device_flow():
    clear("device_flow")

    def d(name, status_index, mode, body, limit_byte=0):
        if not isinstance(body, str):
            body = compact(body)
        write("device_flow", name, bytes([status_index, limit_byte, mode]) + body.encode("utf-8"))

    good = {
        "device_code": "dc-" + PLANTED,
        "user_code": "WDJB-MJHT",
        "verification_uri": "https://auth.example/device",
        "verification_uri_complete": "https://auth.example/device?user_code=WDJB-MJHT",
        "expires_in": 1800,
        "interval": 5,
    }
    d("codes", 0, 0, good)
    d("codes-no-interval", 0, 0, {k: v for k, v in good.items() if k != "interval"})
    d("codes-old-name", 0, 0, {"device_code": "d", "user_code": "U", "verification_url": "https://x.example/", "expires_in": "60"})
    d("codes-control", 0, 0, dict(good, user_code="A\u001b[2JB"))
    d("codes-bad-uri", 0, 0, dict(good, verification_uri="javascript:alert(1)"))
    d("codes-zero", 0, 0, dict(good, expires_in=0, interval=0))
    d("codes-huge", 0, 0, dict(good, expires_in=1e300, interval=1e300))
    d("codes-error", 4, 0, {"error": "invalid_client", "error_description": "bad " + PLANTED})
    d("codes-page", 8, 0, "<html>503</html>")
    d("codes-tiny-cap", 0, 0, good, limit_byte=226)
    for i, error in enumerate(["authorization_pending", "slow_down", "access_denied", "expired_token", "invalid_grant", "invalid_client"]):
        for shape in (1, 3, 15):
            d("poll-%s-%d" % (error, shape), 3, shape, {"error": error})
    d("poll-quoted", 3, 1, {"error": "invalid_grant", "error_description": "device_code DEVCODEq7Zk2Lw9 unknown"})
    d("poll-granted", 0, 1, {"access_token": "at-" + PLANTED, "token_type": "Bearer", "expires_in": 60, "refresh_token": "rt-" + PLANTED})
    d("poll-down", 8, 5, "")
    d("poll-rate", 7, 7, {"error": "slow_down"})


if __name__ == "__main__":
    seed_token_response()
    seed_oauth_error()
    seed_retry_after()
    seed_cache_record()
    seed_token_url()
    seed_cli_config()
    seed_discovery_metadata()
    seed_device_flow()
    for target in sorted(os.listdir(HERE)):
        folder = os.path.join(HERE, target)
        if os.path.isdir(folder):
            print("%-16s %3d seeds" % (target, len(os.listdir(folder))))
