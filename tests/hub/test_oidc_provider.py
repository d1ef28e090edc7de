"""The local OpenID Connect provider (deploy/oidc/provider.mjs), tested over real HTTP: no mocks.

The hub's login depends on exactly what is checked here: discovery, the code flow with either client
authentication, the claims in the id_token and from userinfo, and refusals that hand out no code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import shutil
import socket
import subprocess
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import requests
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import _serialize_state
from traitlets.config import Config

from support.oidc import OidcProvider, follow_on_provider, free_port, login_with_requests

pytestmark = pytest.mark.hub

CLIENT_ID = "teachlab-hub"
CLIENT_SECRET = "test-client-secret"
REDIRECT_URI = "http://127.0.0.1:9/hub/oauth_callback"  # nothing listens there: the code is read off the redirect
SCOPE = "openid profile email groups"
ALICE = {
    "username": "student-alice",
    "password": "alice-password",
    "name": "Alice Student",
    "email": "alice@example.edu",
    "groups": ["cs101-students"],
}
BOB = {
    "username": "teacher-bob",
    "password": "bob-password",
    "name": "Bob Teacher",
    "email": "bob@example.edu",
    "groups": ["cs101-instructors", "staff"],
}
CAROL = {
    "username": "guest-carol",
    "password": "carol-password",
    "name": "Carol Guest",
    "email": "carol@example.org",
    "groups": ["visitors"],
}
CLIENT = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": [REDIRECT_URI]}


@pytest.fixture(scope="module")
def provider(repo_root, tmp_path_factory):
    with OidcProvider([ALICE, BOB, CAROL], [CLIENT], repo_root=repo_root, workdir=tmp_path_factory.mktemp("oidc")) as running:
        yield running
        print(f"--- {running.log_path}\n{running.log_tail()}")


@pytest.fixture(scope="module")
def discovery(provider):
    response = requests.get(provider.discovery_url, timeout=10)
    response.raise_for_status()
    return response.json()


def authorize_url(discovery: dict, **overrides: str) -> str:
    """A standard authorization request from the hub's client; tests override single parameters."""
    params = {
        "client_id": CLIENT_ID,
        "response_type": "code",
        "scope": SCOPE,
        "redirect_uri": REDIRECT_URI,
        "state": secrets.token_urlsafe(16),
        "nonce": secrets.token_urlsafe(16),
        **overrides,
    }
    return f"{discovery['authorization_endpoint']}?{urlencode(params)}"


def pkce_pair() -> tuple[str, str]:
    """A PKCE verifier and its S256 challenge, as oauthenticator sends them."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def callback_params(response: requests.Response) -> dict[str, str]:
    """The query of the redirect to the client's callback, or {} when the flow did not get there."""
    location = response.headers.get("Location", "") if response.is_redirect else ""
    if not location.startswith(REDIRECT_URI):
        return {}
    return {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}


def test_discovery_advertises_endpoints_and_groups_claim(provider, discovery):
    assert discovery["issuer"] == provider.issuer
    for endpoint in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri"):
        assert discovery[endpoint].startswith(f"{provider.issuer}/"), endpoint
    assert {"sub", "preferred_username", "name", "email", "groups"} <= set(discovery["claims_supported"])
    assert {"openid", "profile", "email", "groups"} <= set(discovery["scopes_supported"])
    assert {"client_secret_basic", "client_secret_post"} <= set(discovery["token_endpoint_auth_methods_supported"])
    assert "code" in discovery["response_types_supported"]
    assert "S256" in discovery["code_challenge_methods_supported"]


@pytest.mark.parametrize(
    "account, client_auth, use_pkce",
    [
        pytest.param(ALICE, "client_secret_basic", False, id="basic-auth"),
        pytest.param(ALICE, "client_secret_basic", True, id="basic-auth-pkce"),
        pytest.param(BOB, "client_secret_post", True, id="post-auth-pkce-two-groups"),
    ],
)
def test_code_flow_gives_username_and_groups_in_id_token_and_userinfo(provider, discovery, account, client_auth, use_pkce):
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    verifier, challenge = pkce_pair()
    pkce_params = {"code_challenge": challenge, "code_challenge_method": "S256"} if use_pkce else {}
    session = requests.Session()

    response = login_with_requests(
        session,
        authorize_url(discovery, state=state, nonce=nonce, **pkce_params),
        account["username"],
        account["password"],
    )
    callback = callback_params(response)
    assert callback.get("code"), f"no code, provider answered {response.status_code} at {response.url}"
    assert callback["state"] == state
    assert callback["iss"] == provider.issuer

    token_request = {"grant_type": "authorization_code", "code": callback["code"], "redirect_uri": REDIRECT_URI}
    if use_pkce:
        token_request["code_verifier"] = verifier
    auth = None
    if client_auth == "client_secret_basic":
        auth = (CLIENT_ID, CLIENT_SECRET)
    else:
        token_request |= {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    token_response = requests.post(discovery["token_endpoint"], data=token_request, auth=auth, timeout=10)
    assert token_response.status_code == 200, token_response.text
    tokens = token_response.json()

    signing_key = jwt.PyJWKClient(discovery["jwks_uri"]).get_signing_key_from_jwt(tokens["id_token"])
    id_claims = jwt.decode(
        tokens["id_token"],
        signing_key.key,
        algorithms=discovery["id_token_signing_alg_values_supported"],
        audience=CLIENT_ID,
        issuer=provider.issuer,
    )
    expected = {
        "sub": account["username"],
        "preferred_username": account["username"],
        "name": account["name"],
        "email": account["email"],
        "groups": account["groups"],
    }
    assert {key: id_claims.get(key) for key in expected} == expected
    assert id_claims["nonce"] == nonce

    userinfo = requests.get(
        discovery["userinfo_endpoint"], headers={"Authorization": f"Bearer {tokens['access_token']}"}, timeout=10
    )
    assert userinfo.status_code == 200, userinfo.text
    assert {key: userinfo.json().get(key) for key in expected} == expected


@pytest.mark.parametrize(
    "username, password",
    [
        pytest.param(ALICE["username"], "not-alice-password", id="wrong-password"),
        pytest.param(ALICE["username"], BOB["password"], id="another-users-password"),
        pytest.param("student-nobody", "anything", id="unknown-user"),
    ],
)
def test_wrong_credentials_show_error_and_give_no_code(provider, discovery, username, password):
    session = requests.Session()
    url = authorize_url(discovery)

    refused = login_with_requests(session, url, username, password)

    assert callback_params(refused) == {}
    assert refused.status_code in (200, 401)
    assert "Wrong username or password" in refused.text
    assert 'id="login"' in refused.text, "the login form must be shown again"
    # The failed attempt started no session: a new authorization request asks for a password again.
    again = login_with_requests(session, url, ALICE["username"], "still-wrong")
    assert "Wrong username or password" in again.text


def test_form_accepts_the_right_password_after_a_wrong_one(provider, discovery):
    session = requests.Session()
    refused = login_with_requests(session, authorize_url(discovery), ALICE["username"], "typo")
    assert "Wrong username or password" in refused.text

    retried = session.post(refused.url, data=_alice_login(), allow_redirects=False)
    assert callback_params(follow_on_provider(session, retried, provider.issuer)).get("code")


@pytest.mark.parametrize(
    "overrides, error",
    [
        pytest.param({"client_id": "not-registered"}, "invalid_client", id="unknown-client"),
        pytest.param({"redirect_uri": "http://127.0.0.1:8000/elsewhere"}, "invalid_redirect_uri", id="unregistered-redirect-uri"),
        pytest.param(
            {"redirect_uri": "http://evil.example/hub/oauth_callback"}, "invalid_redirect_uri", id="foreign-redirect-uri"
        ),
    ],
)
def test_unknown_client_or_redirect_uri_is_refused_without_code(provider, discovery, overrides, error):
    response = login_with_requests(requests.Session(), authorize_url(discovery, **overrides), **_alice_login())

    assert not response.is_redirect, f"must not redirect, got Location {response.headers.get('Location')}"
    assert response.status_code == 400
    assert error in response.text
    assert "code=" not in response.text


def _alice_login() -> dict[str, str]:
    """Alice's valid credentials, so a refusal can only come from the client check."""
    return {"username": ALICE["username"], "password": ALICE["password"]}


@pytest.mark.parametrize(
    "client_auth",
    [
        pytest.param(("teachlab-hub", "wrong-secret"), id="wrong-secret"),
        pytest.param(("not-registered", CLIENT_SECRET), id="unknown-client"),
    ],
)
def test_token_endpoint_refuses_bad_client_credentials(provider, discovery, client_auth):
    session = requests.Session()
    callback = callback_params(login_with_requests(session, authorize_url(discovery), **_alice_login()))
    assert callback.get("code")

    response = requests.post(
        discovery["token_endpoint"],
        data={"grant_type": "authorization_code", "code": callback["code"], "redirect_uri": REDIRECT_URI},
        auth=client_auth,
        timeout=10,
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_second_login_in_same_session_skips_the_form(provider, discovery):
    """The provider keeps a session cookie over plain http, as a browser would after the first login."""
    session = requests.Session()
    assert callback_params(login_with_requests(session, authorize_url(discovery), **_alice_login())).get("code")

    second = session.get(authorize_url(discovery), allow_redirects=False)
    assert callback_params(follow_on_provider(session, second, provider.issuer)).get("code")


@pytest.mark.parametrize(
    "config, message",
    [
        pytest.param("{not json", "cannot read", id="not-json"),
        pytest.param(
            {"issuer": "http://127.0.0.1:1", "port": "80", "clients": [], "accounts": []}, '"port"', id="port-not-a-number"
        ),
        pytest.param({"issuer": "http://127.0.0.1:1", "port": 1, "clients": [], "accounts": []}, '"clients"', id="no-clients"),
        pytest.param(
            {"issuer": "http://127.0.0.1:1", "port": 1, "clients": [{"client_id": "x", "client_secret": "y"}], "accounts": []},
            "clients[0].redirect_uris",
            id="client-without-redirect-uris",
        ),
        pytest.param(
            {"issuer": "http://127.0.0.1:1", "port": 1, "clients": [CLIENT], "accounts": [ALICE, ALICE]},
            "appears twice",
            id="duplicate-username",
        ),
        pytest.param(
            {"issuer": "http://127.0.0.1:1", "port": 1, "clients": [CLIENT | {"redirect_uris": ["not a url"]}], "accounts": []},
            "redirect_uris must only contain valid uris",
            id="client-rejected-by-oidc-provider",
        ),
    ],
)
def test_bad_config_exits_with_one_line_message(repo_root, tmp_path, config, message):
    config_path = tmp_path / "provider.json"
    config_path.write_text(config if isinstance(config, str) else json.dumps(config))

    result = subprocess.run(
        ["node", "deploy/oidc/provider.mjs", "--config", str(config_path)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    assert result.stdout == ""
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("oidc-provider: bad config:")
    assert message in last_line and str(config_path) in last_line


@contextlib.contextmanager
def busy_port():
    """Holds a port busy, so the provider's start fails the way a port clash does in real use."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port()))
        holder.listen()
        yield holder.getsockname()[1]


def test_start_failure_raises_with_log_tail(repo_root, tmp_path):
    with busy_port() as port:
        starting = OidcProvider([ALICE], [CLIENT], port=port, repo_root=repo_root, workdir=tmp_path)
        with pytest.raises(RuntimeError, match="cannot listen") as failure:
            starting.start()
    assert "exited with code 1" in str(failure.value)


@pytest.mark.browser
def test_browser_signs_in_over_plain_http(provider, discovery):
    """Chromium keeps the provider's cookies on http://127.0.0.1, so a student's login works without TLS."""
    from playwright.sync_api import sync_playwright  # a test dependency: missing means a broken setup, not a skip

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: run `make system-packages` (make test does)")
    state = secrets.token_urlsafe(16)
    callbacks = []

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
        )
        try:
            page = browser.new_page()
            page.on("request", lambda request: callbacks.append(request.url) if request.url.startswith(REDIRECT_URI) else None)
            page.goto(authorize_url(discovery, state=state))
            assert page.title() == "University login"

            page.fill("#username", ALICE["username"])
            page.fill("#password", "typo")
            page.click("#login")
            assert page.locator("#error").inner_text() == "Wrong username or password"
            assert not callbacks

            page.fill("#username", ALICE["username"])
            page.fill("#password", ALICE["password"])
            with page.expect_request(f"{REDIRECT_URI}**"):
                page.click("#login")
        finally:
            browser.close()

    query = parse_qs(urlsplit(callbacks[-1]).query)
    assert query["state"] == [state]
    assert query["code"][0]


class CallbackRequest:
    """What GenericOAuthenticator.authenticate reads from the hub's callback handler: the code and the state cookie.

    The hub itself is not needed to check that docs/oidc.md's settings fit this provider's tokens and claims.
    """

    def __init__(self, code: str, code_verifier: str) -> None:
        self.code = code
        self.state_cookie = _serialize_state({"state_id": "test", "next_url": None, "code_verifier": code_verifier})

    def get_argument(self, name: str, default=None):
        return self.code if name == "code" else default

    def get_state_cookie(self) -> str:
        return self.state_cookie


@pytest.mark.parametrize(
    "account, read_claims_from, basic_auth, expected_admin, expected_allowed",
    [
        pytest.param(ALICE, "userinfo", False, False, True, id="student-userinfo-post-auth"),
        pytest.param(BOB, "userinfo", True, True, True, id="admin-group-userinfo-basic-auth"),
        pytest.param(BOB, "id_token", False, True, True, id="admin-group-id-token"),
        pytest.param(CAROL, "userinfo", False, False, False, id="no-allowed-group"),
    ],
)
def test_documented_hub_settings_sign_users_in_with_groups(
    provider, discovery, account, read_claims_from, basic_auth, expected_admin, expected_allowed
):
    settings = Config()
    hub_auth = settings.GenericOAuthenticator
    hub_auth.client_id = CLIENT_ID
    hub_auth.client_secret = CLIENT_SECRET
    hub_auth.oauth_callback_url = REDIRECT_URI
    hub_auth.authorize_url = discovery["authorization_endpoint"]
    hub_auth.token_url = discovery["token_endpoint"]
    if read_claims_from == "userinfo":
        hub_auth.userdata_url = discovery["userinfo_endpoint"]
    else:
        hub_auth.userdata_from_id_token = True
    hub_auth.basic_auth = basic_auth
    hub_auth.scope = SCOPE.split()
    hub_auth.username_claim = "preferred_username"
    hub_auth.manage_groups = True
    hub_auth.auth_state_groups_key = "oauth_user.groups"
    hub_auth.admin_groups = {"staff"}
    hub_auth.allowed_groups = {"cs101-students", "cs101-instructors"}
    authenticator = GenericOAuthenticator(config=settings)

    verifier, challenge = pkce_pair()
    response = login_with_requests(
        requests.Session(),
        authorize_url(discovery, code_challenge=challenge, code_challenge_method="S256"),
        account["username"],
        account["password"],
    )
    auth_model = asyncio.run(authenticator.authenticate(CallbackRequest(callback_params(response)["code"], verifier)))

    assert auth_model["name"] == account["username"]
    assert auth_model["groups"] == sorted(account["groups"])
    assert auth_model["admin"] is expected_admin
    assert asyncio.run(authenticator.check_allowed(auth_model["name"], auth_model)) is expected_allowed
