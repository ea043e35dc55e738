"""Sign-out lands on ``post_logout_redirect_uri``: the pages' Content-Security-Policy lets the
sign-out form's redirect chain (the broker, Entra's logout, that page) through, since browsers
check ``form-action`` on every hop; and a URI that could not be a safe CSP source is refused."""

from __future__ import annotations

import pytest

from _support.consent import ConsentEnv
from entra_passthrough import ConfigurationError
from entra_passthrough.consent import ConsentBroker


def test_the_logout_page_origin_is_an_allowed_form_action(consent_env: ConsentEnv) -> None:
    source, _ = consent_env.make()
    broker = ConsentBroker.for_source(
        source,
        redirect_uris=[consent_env.redirect_uri],
        post_logout_redirect_uri="https://agent.contoso.com:8443/signed-out",
    )
    assert broker._form_action.split() == [
        "'self'",
        consent_env.idp.url,
        "https://agent.contoso.com:8443",
    ]


@pytest.mark.parametrize(
    "uri",
    [
        "http://agent.contoso.com/bye",  # plain HTTP off loopback
        "https://agent.contoso.com;script-src/bye",
        "https://user@agent.contoso.com/bye",
        "javascript:alert(1)",
        "https:///bye",
    ],
)
def test_a_logout_uri_that_is_no_plain_https_origin_is_refused(
    consent_env: ConsentEnv, uri: str
) -> None:
    source, _ = consent_env.make()
    with pytest.raises(ConfigurationError, match="post_logout_redirect_uri"):
        ConsentBroker.for_source(
            source, redirect_uris=[consent_env.redirect_uri], post_logout_redirect_uri=uri
        )
