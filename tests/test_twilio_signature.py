"""X-Twilio-Signature validation: the vectors of twilio-python's
tests/unit/test_request_validator.py (and a few more), the port variants
Twilio's own validator accepts (and nothing looser), JSON bodies with
bodySHA256, and the wss:// URL of a Media Streams upgrade."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicecalld.providers.twilio_signature import (
    body_sha256,
    compute_signature,
    port_variants,
    signing_string,
    validate,
)
from voicecalld.testing._twilio_signing import compute_signature as independent_signature

TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
          "From": "+14158675309", "To": "+18005551212"}
EXTRA = {**PARAMS, "Caller": "+12349013030", "From": "+12349013030"}
MULTI = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
JSON_BODY = b'{"property": "value", "boolean": true}'
JSON_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"


@pytest.mark.parametrize(("url", "params", "expected"), [
    (URL, PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
    (URL.replace(".com", ".com:443"), PARAMS, "kvajT1Ptam85bY51eRf/AJRuM3w="),
    ("http://mycompany.com:80/myapp.php?foo=1&bar=2", PARAMS, "0ZXoZLH/DfblKGATFgpif+LLRf4="),
    ("http://mycompany.com:1234/myapp.php?foo=1&bar=2", PARAMS, "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
    (URL, MULTI, "IK+Dwps556ElfBT0I3Rgjkr1wJU="),
    (URL, {"Sid": "CA123", "SidAccount": "AC123", "Digits": ["5678", "1234"]}, "IK+Dwps556ElfBT0I3Rgjkr1wJU="),
    (URL, EXTRA, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="),
    (f"{URL}&bodySHA256={JSON_HASH}", None, "a9nBmqA0ju/hNViExpshrM61xv4="),
    ("wss://example.com/media", None, "7PR3qMkpDyEJtMrVOY/LDyNq8J8="),
])
def test_protocol_vectors(url: str, params, expected: str) -> None:
    assert compute_signature(TOKEN, url, params) == expected
    assert validate(TOKEN, url, expected, params)


@pytest.mark.parametrize(("url", "signature", "ok"), [
    # twilio-python's own cases: the URL as configured vs. the URL signed.
    (URL, "kvajT1Ptam85bY51eRf/AJRuM3w=", True),                           # adds :443
    (URL.replace(".com", ".com:443"), "RSOYDt4T1cUTdK1PDd93/VVr8B8=", True),  # removes :443
    (URL.replace("https", "http"), "0ZXoZLH/DfblKGATFgpif+LLRf4=", True),   # adds :80 on http
    ("http://mycompany.com:1234/myapp.php?foo=1&bar=2", "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=", True),
    ("http://mycompany.com:1234/myapp.php?foo=1&bar=2",
     compute_signature(TOKEN, "http://mycompany.com/myapp.php?foo=1&bar=2", PARAMS), True),
    # ... and nothing looser: another scheme, port, host, path or query fails.
    (URL, "0ZXoZLH/DfblKGATFgpif+LLRf4=", False),                           # http :80 for an https URL
    (URL, "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=", False),                           # a port the URL does not name
    (URL.replace("https", "http"), "kvajT1Ptam85bY51eRf/AJRuM3w=", False),
    (URL.replace("mycompany", "evilcompany"), "RSOYDt4T1cUTdK1PDd93/VVr8B8=", False),
    (URL.replace("foo=1", "foo=2"), "RSOYDt4T1cUTdK1PDd93/VVr8B8=", False),
    (URL.replace("myapp", "other"), "RSOYDt4T1cUTdK1PDd93/VVr8B8=", False),
    (URL + "&x=1", "RSOYDt4T1cUTdK1PDd93/VVr8B8=", False),
])
def test_port_variants(url: str, signature: str, ok: bool) -> None:
    assert validate(TOKEN, url, signature, PARAMS) is ok


@pytest.mark.parametrize("change", [
    lambda p: {**p, "Digits": "1235"},                     # a value
    lambda p: {**p, "Extra": ""},                           # a parameter added, even empty
    lambda p: {k: v for k, v in p.items() if k != "To"},    # one removed
    lambda p: {k.lower(): v for k, v in p.items()},         # names are case-sensitive
])
def test_tampered_params_fail(change) -> None:
    assert not validate(TOKEN, URL, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", change(PARAMS))


@pytest.mark.parametrize(("token", "signature"), [
    ("54321", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),   # another account's token
    (TOKEN, ""), (TOKEN, None), ("", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
    (TOKEN, "RSOYDt4T1cUTdK1PDd93/VVr8B8"),      # truncated
    (TOKEN, "rsoydt4t1cutdk1pdd93/vvr8b8="),      # base64 is case-sensitive
    (TOKEN, "RSOYDt4T1cUTdK1PDd93/VVr8B8=é"),
])
def test_bad_signatures_fail(token: str, signature: str | None) -> None:
    assert not validate(token, URL, signature, PARAMS)


def test_json_body_with_body_sha256() -> None:
    assert body_sha256(JSON_BODY) == JSON_HASH
    url = f"{URL}&bodySHA256={JSON_HASH}"
    signature = "a9nBmqA0ju/hNViExpshrM61xv4="
    assert validate(TOKEN, url, signature, body=JSON_BODY)
    # The body must match the hash, the hash must be there, and form params
    # play no part (the URL alone is signed).
    assert not validate(TOKEN, url, signature, body=JSON_BODY.replace(b"true", b"false"))
    assert not validate(TOKEN, URL, compute_signature(TOKEN, URL), body=JSON_BODY)
    assert validate(TOKEN, url, signature, PARAMS, body=JSON_BODY)
    # The port variants apply here too.
    assert validate(TOKEN, url.replace(".com", ".com:443"), signature, body=JSON_BODY)


def test_wss_stream_url_and_its_port_variant() -> None:
    url = "wss://example.com/media"
    assert validate(TOKEN, url, "7PR3qMkpDyEJtMrVOY/LDyNq8J8=")
    # wss is not https: the port variant Twilio's validator tries is :80.
    assert port_variants(url) == ("wss://example.com/media", "wss://example.com:80/media")
    assert validate(TOKEN, url, compute_signature(TOKEN, "wss://example.com:80/media"))
    assert not validate(TOKEN, url, compute_signature(TOKEN, "https://example.com/media"))


@pytest.mark.parametrize(("url", "without", "with_port"), [
    ("https://h.example/p?q=1", "https://h.example/p?q=1", "https://h.example:443/p?q=1"),
    ("http://h.example/p", "http://h.example/p", "http://h.example:80/p"),
    ("http://h.example:8080/p", "http://h.example/p", "http://h.example:8080/p"),
    ("https://user:pw@h.example/p", "https://user:pw@h.example/p", "https://user:pw@h.example:443/p"),
    ("https://user:pw@h.example:444/p", "https://user:pw@h.example/p", "https://user:pw@h.example:444/p"),
    ("https://[::1]:8443/p", "https://[::1]/p", "https://[::1]:8443/p"),
    ("https://[::1]/p", "https://[::1]/p", "https://[::1]:443/p"),
    ("https://h.example", "https://h.example", "https://h.example:443"),
    ("https://h.example?x=1#f", "https://h.example?x=1#f", "https://h.example:443?x=1#f"),
    ("https://h.example/a\tb\r", "https://h.example/a\tb\r", "https://h.example:443/a\tb\r"),  # byte for byte
    ("not a url", "not a url", "not a url"),
])
def test_port_variant_forms(url: str, without: str, with_port: str) -> None:
    assert port_variants(url) == (without, with_port)


def test_signing_string_sorts_by_code_point_and_values() -> None:
    assert signing_string("u", [("b", "2"), ("B", "1"), ("a", "z"), ("a", "y")]) == "uB1ay" + "az" + "b2"


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@given(st.lists(st.tuples(_text, _text), max_size=8), _text)
def test_agrees_with_the_fakes_independent_signer(pairs: list[tuple[str, str]], path: str) -> None:
    url = "https://example.com/hook?x=" + path
    signature = independent_signature(TOKEN, url, pairs)
    assert compute_signature(TOKEN, url, pairs) == signature
    assert validate(TOKEN, url, signature, pairs)

