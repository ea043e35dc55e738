"""examples/hosted_agent/src/agent/main.py starts the way the image starts it in Foundry.

agent-framework-foundry 1.15 reads the model from ``FOUNDRY_MODEL`` (no longer
``AZURE_AI_MODEL_DEPLOYMENT_NAME``) and refuses to start without a credential: a
``FoundryChatClient()`` with no arguments stopped the container at start-up. ``main.py`` now
passes ``project_endpoint``, ``model`` and an async managed identity credential, and the
Dockerfile pins the range that is tested here.

The fast tests run on every run, with a stand-in for ``agent_framework_foundry`` (it is not in
the project's environment). The real start-up builds a throwaway venv as the Dockerfile does
(this repository's wheel ``[agent-framework,redis]`` and the Dockerfile's
``agent-framework-foundry`` requirement) and runs ``python main.py`` with what ``azure.yaml``
sets and Foundry injects, until ``/readiness`` answers: slow, so only with
``ENTRA_PASSTHROUGH_RELEASE_TESTS=1``.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
import venv
from pathlib import Path
from typing import Any

import pytest
import yaml

from ._azd import CONNECTION_REF, envsubst, foundry_expand

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "hosted_agent"
MAIN = EXAMPLE / "src" / "agent" / "main.py"
DOCKERFILE = EXAMPLE / "src" / "agent" / "Dockerfile"
DEV_AGENT = ROOT / "examples" / "local_dev" / "dev_agent.py"
ENDPOINT = "https://acct.services.ai.azure.com/api/projects/proj"
PIP_TIMEOUT = 900


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class _FoundryChatClient:
    """Stands in for ``agent_framework_foundry.FoundryChatClient`` 1.15: its keyword-only
    arguments and its refusals (``RawFoundryChatClient.__init__``)."""

    def __init__(
        self,
        *,
        project_endpoint: str | None = None,
        project_client: Any = None,
        model: str | None = None,
        credential: Any = None,
        **_: Any,
    ) -> None:
        model = model or os.environ.get("FOUNDRY_MODEL")
        if not model:
            raise ValueError(
                "Model is required. Set via 'model' parameter or 'FOUNDRY_MODEL' environment "
                "variable."
            )
        project_endpoint = project_endpoint or os.environ.get("FOUNDRY_PROJECT_ENDPOINT")
        if project_client is None and not credential:
            raise ValueError(
                "Azure credential is required when using project_endpoint without a project_client."
            )
        self.model = model
        self.project_endpoint = project_endpoint
        self.credential = credential
        self.function_invocation_configuration: dict[str, Any] = {}


@pytest.fixture
def foundry_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """``agent_framework.foundry.FoundryChatClient`` resolves to the stand-in; the variables
    the real package reads are unset."""
    fake = types.ModuleType("agent_framework_foundry")
    fake.FoundryChatClient = _FoundryChatClient  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "agent_framework_foundry", fake)
    for name in (
        "FOUNDRY_MODEL",
        "AZURE_AI_MODEL_DEPLOYMENT_NAME",
        "MICROSOFT_FOUNDRY_MODEL_DEPLOYMENT_NAME",
        "FOUNDRY_PROJECT_ENDPOINT",
        "FOUNDRY_HOSTING_ENVIRONMENT",
        "AZURE_CLIENT_ID",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("foundry_package")
def test_the_model_client_gets_the_deployment_and_a_managed_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from azure.identity.aio import ManagedIdentityCredential

    main = _load(MAIN, "hosted_agent_main_startup")
    # What azure.yaml sets and Foundry injects.
    monkeypatch.setenv("FOUNDRY_PROJECT_ENDPOINT", ENDPOINT)
    monkeypatch.setenv("FOUNDRY_HOSTING_ENVIRONMENT", "production")
    monkeypatch.setenv("MICROSOFT_FOUNDRY_MODEL_DEPLOYMENT_NAME", "gpt-4.1-mini")
    monkeypatch.setenv("AZURE_CLIENT_ID", "44444444-4444-4444-4444-444444444444")
    client = main.default_chat_client()
    assert isinstance(client, _FoundryChatClient)
    assert client.model == "gpt-4.1-mini"
    assert client.project_endpoint == ENDPOINT
    # Async (the package's AIProjectClient is azure.ai.projects.aio), the container's identity.
    assert isinstance(client.credential, ManagedIdentityCredential)
    assert client.function_invocation_configuration["include_detailed_errors"] is True
    asyncio.run(client.credential.close())


@pytest.mark.usefixtures("foundry_package")
def test_inside_foundry_without_a_deployment_the_agent_does_not_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Never the scripted stand-in answering real users because a variable was left unset.
    main = _load(MAIN, "hosted_agent_main_startup")
    monkeypatch.setenv("FOUNDRY_PROJECT_ENDPOINT", ENDPOINT)
    monkeypatch.setenv("FOUNDRY_HOSTING_ENVIRONMENT", "production")
    with pytest.raises(SystemExit, match="MICROSOFT_FOUNDRY_MODEL_DEPLOYMENT_NAME"):
        main.default_chat_client()


@pytest.mark.usefixtures("foundry_package")
def test_the_local_dev_agent_passes_its_model_and_credential(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dev = _load(DEV_AGENT, "local_dev_agent_startup")
    monkeypatch.setenv("FOUNDRY_PROJECT_ENDPOINT", ENDPOINT)
    monkeypatch.setenv("FOUNDRY_MODEL", "gpt-4.1-mini")
    credential = object()
    client = dev.chat_client(credential)
    assert isinstance(client, _FoundryChatClient)
    assert (client.model, client.project_endpoint) == ("gpt-4.1-mini", ENDPOINT)
    assert client.credential is credential


def _foundry_requirement() -> str:
    """The agent-framework-foundry requirement the Dockerfile installs."""
    match = re.search(r'"(agent-framework-foundry\b[^"]*)"', DOCKERFILE.read_text())
    assert match, "the Dockerfile installs agent-framework-foundry, quoted with its range"
    return match.group(1)


def test_the_image_pins_agent_framework_foundry() -> None:
    requirement = _foundry_requirement()
    assert re.fullmatch(r"agent-framework-foundry>=[\d.]+,<[\d.]+", requirement), requirement
    # The docs' layout table names the same range.
    assert (
        requirement.removeprefix("agent-framework-foundry")
        in (ROOT / "docs" / "hosted-agent.md").read_text()
    )


def _image_env() -> dict[str, str]:
    """The ``ENV`` lines of the Dockerfile (``ENV A=1 B=2``), as the container gets them."""
    found: dict[str, str] = {}
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("ENV "):
            found.update(pair.split("=", 1) for pair in line[4:].split())
    return found


def test_the_image_gives_its_user_a_writable_state_folder() -> None:
    # uid 1000 has no passwd entry: with no HOME the agent host's local response store went to
    # /.agentserver (PermissionError at start outside Foundry, e.g. a `docker run` on a laptop).
    env = _image_env()
    assert env.get("HOME", "").startswith("/tmp"), env
    assert env.get("AGENTSERVER_STATE_ROOT", "").startswith("/tmp/"), env


# --- the real start-up ------------------------------------------------------------------------


def _azd_env() -> dict[str, str]:
    """Values for the README's ``azd env set`` steps (endpoints that nobody answers)."""
    key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    values = {
        "MICROSOFT_FOUNDRY_MODEL_DEPLOYMENT_NAME": "gpt-4.1-mini",
        "AZURE_TENANT_ID": "22222222-2222-2222-2222-222222222222",
        "AGENT_APP_CLIENT_ID": "33333333-3333-3333-3333-333333333333",
        "AGENT_IDENTITY_CLIENT_ID": "44444444-4444-4444-4444-444444444444",
        "MCP_URL": "https://mcp.contoso.com/mcp",
        "MCP_SCOPE": "api://11111111-1111-1111-1111-111111111111/.default",
        "REDIS_URL": "rediss://127.0.0.1:9/0",
        "CONSENT_BROKER_URL": "https://consent.contoso.com/consent",
        "CONSENT_KEYS": f"k1:{key}",
    }
    readme = (EXAMPLE / "README.md").read_text()
    names = set(re.findall(r"^\s*azd env set ([A-Z][A-Z0-9_]*) ", readme, re.MULTILINE))
    assert names == set(values), "the README's azd env set steps changed: update this test"
    return values


def _container_env(port: int, state: Path, home: Path) -> dict[str, str]:
    """What the container gets: azure.yaml's env: as azd expands it, its Foundry connection
    references resolved as Foundry resolves them, and what Foundry injects."""
    azd_env = _azd_env()
    services = yaml.safe_load((EXAMPLE / "azure.yaml").read_text())["services"]
    (agent,) = [s for s in services.values() if s["host"] == "azure.ai.agent"]

    def credential(match: re.Match[str]) -> str:
        conn = services[match.group(1)]
        scoped = {k: envsubst(v, azd_env.__getitem__) for k, v in conn["env"].items()}
        value = conn["credentials"]["keys"][match.group(2)]
        return foundry_expand(value, scoped.__getitem__)

    env = {
        name: CONNECTION_REF.sub(credential, envsubst(raw, azd_env.__getitem__))
        for name, raw in agent["env"].items()
    }
    assert env["ENTRA_PASSTHROUGH_CONSENT_KEYS"] == azd_env["CONSENT_KEYS"]
    env.update(
        {
            "FOUNDRY_HOSTING_ENVIRONMENT": "production",
            "FOUNDRY_PROJECT_ENDPOINT": ENDPOINT,
            "FOUNDRY_AGENT_NAME": agent["name"],
            "IDENTITY_ENDPOINT": "http://127.0.0.1:9/msi/token",
            "IDENTITY_HEADER": "h",
            "PORT": str(port),
            "AGENTSERVER_STATE_ROOT": str(state),
            "PATH": "/usr/bin:/bin",
            "HOME": str(home),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    return env


def _run(args: list[str], *, timeout: float) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} -> {done.returncode}\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def image_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv installed as the Dockerfile's RUN line installs the image."""
    root = tmp_path_factory.mktemp("image")
    wheels = root / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        timeout=PIP_TIMEOUT,
    )
    (wheel,) = wheels.glob("entra_passthrough-*.whl")
    venv.EnvBuilder(with_pip=False, clear=True).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    _run(
        [
            *(sys.executable, "-m", "pip", "--python", str(python), "install", "-q"),
            f"{wheel}[agent-framework,redis]",
            _foundry_requirement(),
        ],
        timeout=PIP_TIMEOUT,
    )
    return python


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readiness", timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("ENTRA_PASSTHROUGH_RELEASE_TESTS") != "1",
    reason="builds the image's venv: set ENTRA_PASSTHROUGH_RELEASE_TESTS=1",
)
def test_main_starts_as_in_foundry(image_python: Path, tmp_path: Path) -> None:
    app = tmp_path / "app"  # COPY main.py /app/main.py; WORKDIR /app
    app.mkdir()
    shutil.copy(MAIN, app / "main.py")
    (tmp_path / "state").mkdir()
    port = _free_port()
    env = _container_env(port, tmp_path / "state", tmp_path)

    # The model client main.py builds there: the real FoundryChatClient, for the deployment.
    probe = (
        "import main\n"
        "client = main.default_chat_client()\n"
        "print(type(client).__module__, type(client).__name__, client.model)\n"
    )
    done = subprocess.run(
        [str(image_python), "-c", probe],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [
        "agent_framework_foundry._chat_client",
        "FoundryChatClient",
        "gpt-4.1-mini",
    ]

    # CMD ["python", "main.py"]: it listens and answers /readiness.
    log = tmp_path / "main.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(image_python), "main.py"], cwd=app, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None and not _ready(port):
                time.sleep(0.5)
            ready = proc.poll() is None and _ready(port)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    assert ready, f"main.py did not start (exit {proc.returncode}):\n{log.read_text()[-3000:]}"


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("ENTRA_PASSTHROUGH_RELEASE_TESTS") != "1",
    reason="builds the image's venv: set ENTRA_PASSTHROUGH_RELEASE_TESTS=1",
)
def test_main_builds_outside_foundry_with_the_image_environment(
    image_python: Path, tmp_path: Path
) -> None:
    # A `docker run` of the image with its configuration, no Foundry: the host keeps its
    # responses in the local store, under the image's AGENTSERVER_STATE_ROOT (moved into
    # tmp_path here, as the Dockerfile's value names a folder of the machine's /tmp).
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(MAIN, app / "main.py")
    image = _image_env()
    root = tmp_path / image["AGENTSERVER_STATE_ROOT"].lstrip("/")
    env = {
        **image,
        "HOME": str(tmp_path / image["HOME"].lstrip("/")),
        "AGENTSERVER_STATE_ROOT": str(root),
        "PATH": "/usr/bin:/bin",
        "MCP_URL": "https://mcp.contoso.com/mcp",
        "MCP_SCOPE": "api://11111111-1111-1111-1111-111111111111/.default",
        "AZURE_TENANT_ID": "22222222-2222-2222-2222-222222222222",
        "ENTRA_PASSTHROUGH_CLIENT_ID": "33333333-3333-3333-3333-333333333333",
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": "not-a-secret",
        "HOST_TELEMETRY": "off",
    }
    Path(env["HOME"]).mkdir(parents=True)
    done = subprocess.run(
        [str(image_python), "-c", "import main; main.create_app(); print('built')"],
        cwd=app,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["built"]
    assert root.is_dir()  # the local store is where the image puts it
