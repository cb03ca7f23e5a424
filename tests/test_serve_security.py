"""Bad input and attacks against a real 'tomeray serve' process: traversal in every spelling, links
out of the corpus, unknown ids, the bearer token, limits, malformed bodies, non-UTF-8, CORS. Every
case is answered with a clear 4xx JSON error: never a file it should not serve, a 500 or a traceback."""

from __future__ import annotations

import http.client
import json
import os
from urllib.parse import urlsplit

import pytest
import requests
from serving import TOKEN, InProcessServer

AUTH = {"Authorization": f"Bearer {TOKEN}"}
slow = pytest.mark.slow


def raw(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """A request with the path exactly as given (no client-side normalisation or encoding)."""
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.putrequest(method, path, skip_accept_encoding=True)
    for key, value in {**AUTH, **(headers or {})}.items():
        connection.putheader(key, value)
    if body is not None:
        connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), data


def assert_clean_4xx(status: int, data: bytes, expected: int | tuple | None = None) -> dict:
    assert 400 <= status < 500, (status, data[:300])
    if expected is not None:
        assert status in (expected if isinstance(expected, tuple) else (expected,)), (status, data[:300])
    assert b"root:" not in data and b"Traceback" not in data and b'File "' not in data
    body = json.loads(data)
    assert body["status"] == status and body["error"]
    return body


TRAVERSAL = [
    "/media/..%2F..%2Fetc%2Fpasswd", "/media/../../etc/passwd", "/media/%2e%2e/%2e%2e/etc/passwd",
    "/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/media/%252e%252e%252fetc%252fpasswd", "/media/%2Fetc%2Fpasswd",
    "/media//etc/passwd", "/media/..\\..\\etc\\passwd", "/media/1%00", "/media/%00", "/media/",
    "/api/videos/..%2F..%2Fetc%2Fpasswd/thumbnail", "/api/videos/%2Fetc%2Fpasswd", "/static/",
    "/static/..%2F..%2F..%2Fetc%2Fpasswd", "/static/../app.py", "/static/%2e%2e/serve/app.py",
    "/static/index.html%00.js", "/static/app.js/../../app.py", "/etc/passwd", "/..%2F..%2Fetc%2Fpasswd",
]


@slow
@pytest.mark.parametrize("path", TRAVERSAL)
def test_traversal_never_reaches_a_file(server, path):
    status, _, data = raw(server, "GET", path)
    assert_clean_4xx(status, data)


UNKNOWN_IDS = ["1", "0", "9223372036854775807", "99999999999999999999", "-5", "12abc", "abc", "1e5", "٣"]


@slow
@pytest.mark.parametrize("video_id", UNKNOWN_IDS)
@pytest.mark.parametrize("route", ["/media/{}", "/api/videos/{}", "/api/videos/{}/thumbnail"])
def test_unknown_ids_are_404(server, route, video_id):
    status, _, data = raw(server, "GET", route.format(requests.utils.quote(video_id)))
    assert_clean_4xx(status, data, 404)


def _hit(server, name: str) -> dict:
    response = requests.get(server.url + "/api/search", params={"q": "x", "k": 1, "path_glob": name},
                            headers=AUTH, timeout=60)
    return response.json()["results"][0]


@slow
def test_an_indexed_file_replaced_by_a_link_outside_is_refused(server, served_corpus):
    hit = _hit(server, "replaced.avi")
    target = served_corpus / "replaced.avi"
    saved = target.read_bytes()
    target.unlink()
    os.symlink("/etc/passwd", target)
    try:
        status, _, data = raw(server, "GET", hit["media_url"])
        assert_clean_4xx(status, data, 403)
        status, _, data = raw(server, "GET", hit["media_url"], headers={"Range": "bytes=0-100"})
        assert_clean_4xx(status, data, 403)
    finally:
        target.unlink()
        target.write_bytes(saved)
    assert raw(server, "GET", hit["media_url"])[0] == 200


@slow
@pytest.mark.parametrize("path", ["/api/search?q=x", "/api/stats", "/metrics", "/openapi.json",
                                  "/api/videos/1", "/media/1", "/api/videos/1/thumbnail"])
@pytest.mark.parametrize("credentials", [{}, {"Authorization": "Bearer wrong-token-123"},
                                         {"Authorization": TOKEN}, {"Cookie": "tomeray_session=forged"}])
def test_requests_without_the_token_get_401(server, path, credentials):
    response = requests.get(server.url + path, headers=credentials, timeout=60)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert "token" in response.json()["error"]


@slow
def test_the_page_is_public_and_login_sets_a_session_cookie(server):
    for path in ("/", "/static/app.js", "/api/health", "/docs"):
        assert requests.get(server.url + path, timeout=60).status_code == 200
    assert requests.post(server.url + "/api/login", timeout=60).status_code == 401
    login = requests.post(server.url + "/api/login", headers=AUTH, timeout=60)
    cookie = login.headers["set-cookie"]
    assert login.status_code == 200 and "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    assert TOKEN not in cookie  # derived from the token, not the token
    jar = login.cookies
    hit = requests.get(server.url + "/api/search", params={"q": "x", "k": 1}, cookies=jar, timeout=60).json()
    thumbnail = requests.get(server.url + hit["results"][0]["thumbnail_url"], cookies=jar, timeout=60)
    assert thumbnail.status_code == 200


BAD_SEARCHES = {
    "no query": ("", 400), "empty q": ("q=", 400), "blank q": ("q=%20%20", 400),
    "q and like": ("q=a&like=5", 400),
    "q too long": ("q=" + "a" * 501, 400), "NUL in q": ("q=a%00b", 400), "k zero": ("q=a&k=0", 400),
    "k too big": ("q=a&k=1001", 400), "k negative": ("q=a&k=-3", 400), "k fraction": ("q=a&k=1.5", 400),
    "k text": ("q=a&k=many", 400), "offset negative": ("q=a&offset=-1", 400),
    "offset too big": ("q=a&offset=10001", 400), "like text": ("like=abc", 400),
    "like unknown": ("like=77", 404),
    "duration text": ("q=a&duration_min=long", 400), "duration nan": ("q=a&duration_min=nan", 400),
    "duration inf": ("q=a&duration_max=inf", 400), "inverted range": ("q=a&time_min=9&time_max=2", 400),
    "negative time": ("q=a&time_min=-1", 400), "glob too long": ("q=a&path_glob=" + "*" * 1001, 400),
    "non-UTF-8 query": ("q=%FF%FE", 400), "overlong UTF-8": ("q=%C0%AF", 400),
}


@slow
@pytest.mark.parametrize("name", list(BAD_SEARCHES))
def test_bad_search_parameters_are_400(server, name):
    query, expected = BAD_SEARCHES[name]
    status, _, data = raw(server, "GET", f"/api/search?{query}")
    assert_clean_4xx(status, data, expected)


BAD_BODIES = {
    "malformed JSON": (b'{"q": "a", ', "application/json", 400),
    "JSON list": (b'["q"]', "application/json", 400), "JSON string": (b'"q"', "application/json", 400),
    "unknown field": (b'{"q": "a", "limit": 3}', "application/json", 400),
    "k text in JSON": (b'{"q": "a", "k": "many"}', "application/json", 400),
    "NaN filter": (b'{"q": "a", "filters": {"time_min": NaN}}', "application/json", 400),
    "unknown filter": (b'{"q": "a", "filters": {"colour": "red"}}', "application/json", 400),
    "non-UTF-8 JSON": (b'{"q": "\xff\xfe"}', "application/json", 400),
    "JSON too large": (b'{"q": "' + b"a" * 70_000 + b'"}', "application/json", 413),
    "plain text": (b"people", "text/plain", 415), "no content type": (b"people", "", 415),
    "not an image": (b"hello, I am not a JPEG", "image/jpeg", 415),
    "truncated JPEG": (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 40, "image/jpeg", 400),
    "not a video": (b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200, "video/mp4", 400),
    "empty upload": (b"", "video/mp4", 400),
    "broken multipart": (b"--xx\r\nContent-Disposition: form-data; name=",
                         "multipart/form-data; boundary=xx", 400),
    "multipart without file": (b'--xx\r\nContent-Disposition: form-data; name="k"\r\n\r\n3\r\n--xx--\r\n',
                               "multipart/form-data; boundary=xx", 400),
}


@slow
@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_search_bodies_are_4xx(server, name):
    body, kind, expected = BAD_BODIES[name]
    status, _, data = raw(server, "POST", "/api/search", body, {"Content-Type": kind} if kind else {})
    assert_clean_4xx(status, data, expected)


@slow
def test_oversized_uploads_are_refused_declared_or_streamed(server):
    big = 33 * 2**20
    declared = requests.post(server.url + "/api/search", data=b"\xff\xd8\xff" + bytes(big), timeout=60,
                             headers={**AUTH, "Content-Type": "image/jpeg"})
    assert declared.status_code == 413 and "larger than" in declared.json()["error"]

    def chunks():
        yield b"\x1a\x45\xdf\xa3"
        for _ in range(40):
            yield bytes(2**20)

    streamed = requests.post(server.url + "/api/search", data=chunks(), timeout=60,
                             headers={**AUTH, "Content-Type": "video/webm"})
    assert streamed.status_code == 413


@slow
def test_non_utf8_paths_and_wrong_methods_are_4xx(server):
    assert_clean_4xx(*raw(server, "GET", "/media/%FF%FE")[::2], 400)
    assert_clean_4xx(*raw(server, "DELETE", "/api/search?q=a")[::2], 405)
    assert_clean_4xx(*raw(server, "PUT", "/media/1")[::2], 405)


@slow
def test_cors_is_off_unless_origins_are_given(server, served_index):
    origin = {"Origin": "http://elsewhere.example"}
    plain = requests.get(server.url + "/api/search", params={"q": "a", "k": 1}, headers={**AUTH, **origin},
                         timeout=60)
    assert "access-control-allow-origin" not in plain.headers
    preflight = requests.options(server.url + "/api/search", timeout=60, headers={
        **origin, "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in preflight.headers
    options = ["server.cors_origins=[http://good.example]", "server.reload_s=0"]
    with InProcessServer([served_index], options) as allowed:
        good = requests.get(allowed.url + "/api/health", headers={"Origin": "http://good.example"},
                            timeout=60)
        assert good.headers["access-control-allow-origin"] == "http://good.example"
        bad = requests.get(allowed.url + "/api/health", headers=origin, timeout=60)
        assert "access-control-allow-origin" not in bad.headers

