"""Send the locally running agent (run_local.py) a request as a user, and print its answer.

    python examples/hosted_agent/ask.py alice ["who am I?"]

Like a real client, it signs the user in first (here: the emulator's password grant for its test
users, with the front-end app) and calls the agent with a token *for the agent app*: the
client-supplied assertion the agent exchanges on-behalf-of. It never prints the token.

It also plays Foundry's front door, which adds the platform's user id (``x-agent-user-id``) to
every request it forwards to a hosted agent: here the user's object id (``oid``), a stable
per-user value. ``DelegatedConsent`` binds a user's grant to that id (never to the claims of a
token the agent has not verified), so a user with no consent yet (carol) gets the consent
broker's link.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx2

HERE = Path(__file__).resolve().parent
DEFAULT_STATE = HERE / ".local" / "state.json"


#: The header Foundry's front door adds to every request for a hosted agent (the platform's user
#: id). A local run has no front door: this script adds it, as Foundry would.
USER_ID_HEADER = "x-agent-user-id"


def platform_user_id(emulator: dict[str, Any], user: str) -> str:
    """The id Foundry's front door would send for ``user``: stable per user (here the user's
    object id in the emulator's tenant)."""
    return str(emulator["users"][user]["oid"])


def sign_in(emulator: dict[str, Any], user: str) -> str:
    """A token for the agent app, as the front end would get it after the user signs in."""
    users, apps = emulator["users"], emulator["apps"]
    if user not in users:
        raise SystemExit(
            f"no user {user!r} who signs in at the emulator's tenant; try one of {', '.join(users)}"
        )
    frontend, agent = apps["frontend"], apps["agent"]
    data = {
        "grant_type": "password",
        "client_id": frontend["client_id"],
        "username": users[user]["upn"],
        "password": users[user]["password"],
        "scope": f"{agent['app_id_uri']}/{agent['scope']}",
    }
    if frontend.get("secret"):
        data["client_secret"] = frontend["secret"]
    url = f"{emulator['url']}/{emulator['tenant_id']}/oauth2/v2.0/token"
    with httpx2.Client(verify=emulator["ca_file"], trust_env=False, timeout=30) as client:
        answer = client.post(url, data=data)
    if answer.status_code != 200:
        # Entra's description says why (its AADSTS code first); its first line, bounded.
        try:
            body = answer.json()
        except ValueError:
            body = {}
        reason = str(body.get("error_description") or "").splitlines()[:1]
        raise SystemExit(
            f"sign-in failed: HTTP {answer.status_code} {body.get('error')}"
            + (f": {reason[0][:300]}" if reason else "")
        )
    return str(answer.json()["access_token"])


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    user, question = argv[0], (argv[1] if len(argv) > 1 else "who am I?")
    state_file = Path(os.environ.get("LOCAL_STATE_FILE") or DEFAULT_STATE)
    if not state_file.exists():
        raise SystemExit(f"{state_file} not found: start python examples/hosted_agent/run_local.py")
    state = json.loads(state_file.read_text(encoding="utf-8"))
    try:
        token = sign_in(state["emulator"], user)
        headers = {
            "Authorization": f"Bearer {token}",
            USER_ID_HEADER: platform_user_id(state["emulator"], user),  # Foundry's front door
        }
        with httpx2.Client(base_url=state["agent"], trust_env=False, timeout=60) as client:
            answer = client.post(
                "/responses", json={"input": question, "store": True}, headers=headers
            )
    except (OSError, httpx2.TransportError) as exc:
        # A state file left by a local run that is gone (killed): its CA file and ports too.
        raise SystemExit(
            f"the local run in {state_file} does not answer ({type(exc).__name__}): start "
            "python examples/hosted_agent/run_local.py (again)"
        ) from None
    if answer.status_code != 200:
        print(f"HTTP {answer.status_code}: {answer.text[:500]}")
        return 1
    payload = answer.json()
    printed = False
    for item in payload.get("output", []):
        if item.get("type") == "message":
            for part in item.get("content", []):
                if part.get("text"):
                    print(part["text"])
                    printed = True
        elif item.get("type") == "oauth_consent_request":
            print(f"consent needed: open {item.get('consent_link')}")
            printed = True
    if not printed:
        print(json.dumps(payload.get("error") or payload, indent=2)[:2000])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
