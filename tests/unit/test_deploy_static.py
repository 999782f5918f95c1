"""Static checks of the deployment artifacts: Dockerfile, docker-compose.yml, deploy/k8s, .env.example.

No Docker engine or cluster is needed: the files are parsed and cross-checked against the repository
and against `connector.config.Settings`. `python tests/unit/test_deploy_static.py` rewrites
deploy/.env.example from the Settings fields (run it after adding a config key).
"""

from __future__ import annotations

import fnmatch
import functools
import io
import json
import re
import shlex
import sys
import time
import tomllib
import types
import typing
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from connector.config import ENV_PREFIX, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
K8S = REPO / "deploy" / "k8s"
ENV_EXAMPLE = REPO / "deploy" / ".env.example"
COMPOSE_CONFIG = REPO / "deploy" / "connector.compose.yaml"
REPO_CONFIG = REPO / "deploy" / "connector.yaml"
CONFIG_MOUNT = "/etc/yespo-connector"
STAGES = {"merge", "deliver", "all"}

# Keys that legitimately differ between the example config and a deployment's copy of it.
DEPLOYMENT_SPECIFIC = {
    ("kafka", "bootstrap_servers"),
    ("kafka", "topic_replication_factor"),
    ("yespo", "base_url"),
    ("observability", "metrics_host"),
}


# ---------------------------------------------------------------------------------------------------
# Settings -> environment variable names (also the generator of deploy/.env.example)


@dataclass(frozen=True, slots=True)
class EnvVar:
    name: str
    path: tuple[str, ...]
    field: FieldInfo
    default: Any


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a `Model` or `Model | None` field; None for leaves (scalars, lists, dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(models) == 1:
            return models[0]
    return None


def _walk(
    model: type[BaseModel], path: tuple[str, ...], defaults: BaseModel | None
) -> Iterator[tuple[str, tuple[str, ...], type[BaseModel] | None, FieldInfo, Any]]:
    for name, field in model.model_fields.items():
        if defaults is not None:
            default = getattr(defaults, name)
        elif field.is_required():
            default = None
        else:
            default = field.get_default(call_default_factory=True)
        yield name, (*path, name), _nested_model(field.annotation), field, default


def settings_env_vars(
    model: type[BaseModel] = Settings, path: tuple[str, ...] = (), defaults: BaseModel | None = None
) -> list[EnvVar]:
    """Every leaf field of `model` as YESPO_CONNECTOR_<A>__<B>, recursing into nested models.

    A nested model (also `Model | None`) is split into its fields; lists and dicts are leaves (their
    environment value is JSON).
    """
    out: list[EnvVar] = []
    nested = []
    for name, sub_path, sub, field, default in _walk(model, path, defaults):
        if sub is None:
            env = ENV_PREFIX + "__".join(p.upper() for p in sub_path)
            out.append(EnvVar(env, sub_path, field, default))
        else:
            nested.append((name, sub_path, sub, default))
    for _name, sub_path, sub, default in nested:
        out.extend(settings_env_vars(sub, sub_path, default if isinstance(default, BaseModel) else None))
    return out


def settings_env_names_with_sections() -> set[str]:
    """Leaf names plus the names of nested sections (a section may be given whole, as JSON)."""
    names = {v.name for v in settings_env_vars()}
    for var in settings_env_vars():
        for i in range(1, len(var.path)):
            names.add(ENV_PREFIX + "__".join(p.upper() for p in var.path[:i]))
    return names


@dataclass(frozen=True, slots=True)
class CliEnvVar:
    name: str
    command: str
    help: str


@functools.cache
def cli_env_vars() -> list[CliEnvVar]:
    """YESPO_CONNECTOR_* variables read by command-line options (not Settings fields), e.g. run's."""
    import typer.main

    from connector.cli import app

    found: dict[str, CliEnvVar] = {}

    def walk(command: Any, path: list[str]) -> None:
        for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
            walk(sub, [*path, name])
        for param in getattr(command, "params", []):
            envvars = param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar]
            for envvar in envvars:
                if envvar and envvar.startswith(ENV_PREFIX) and envvar not in found:
                    help_text = " ".join(str(getattr(param, "help", "") or "").split())
                    found[envvar] = CliEnvVar(envvar, " ".join(path), help_text)

    walk(typer.main.get_command(app), [])
    return sorted(found.values(), key=lambda v: v.name)


@functools.cache
def process_env_names() -> frozenset[str]:
    """Every YESPO_CONNECTOR_* name a connector process reads: Settings paths and CLI options."""
    return frozenset(settings_env_names_with_sections() | {v.name for v in cli_env_vars()})


def _render(value: Any) -> str:
    if value is None or isinstance(value, SecretStr):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_ENV_HEAD = """\
# yespo-connector: every environment variable, with its default. Generated from
# connector.config.Settings by `python tests/unit/test_deploy_static.py`; a unit test checks that this
# list matches the Settings fields (and the CLI options' variables) exactly.
#
# Names: YESPO_CONNECTOR_<SECTION>__<KEY>, `__` between nesting levels. Precedence: environment >
# the YAML config file (--config) > defaults. Lists and maps are JSON; a map given in the environment
# is merged into the one from the YAML file. A name is read lower-cased, so one that sets a single key
# of a map (..._YESPO__FIELD_IDS__BIRTHDATE) replaces the YAML file's key equal to it when capitals are
# ignored (birthDate), and one that matches no key is refused (except in kafka.extra): add it in
# the map's JSON. Uncomment only what you override: an uncommented line overrides the config file for
# every process that reads this file.
#
# Where they go: a Kubernetes Deployment's env, `docker run --env-file`, a systemd EnvironmentFile, or
# the `environment:` of a connector service in docker-compose.yml. (Compose reads ./.env only to fill
# the ${...} in that file: YESPO_API_KEY, POSTGRES_PASSWORD, LOG_LEVEL, GRAFANA_ADMIN_PASSWORD.)
# Never commit a file that holds a real key.

# The Yespo API key: read from the variable that yespo.api_key_env names (default YESPO_API_KEY).
# docker-compose.yml passes it to the deliver stage and to the stand-in, which accepts only this key.
YESPO_API_KEY=dev-key
"""


def render_env_example() -> str:
    """The text of deploy/.env.example for the current Settings model."""
    lines = [_ENV_HEAD.rstrip("\n")]
    section: tuple[str, ...] | None = None
    for var in settings_env_vars():
        if var.path[:-1] != section:
            section = var.path[:-1]
            model: type[BaseModel] = Settings
            optional = False
            for part in section:
                info = model.model_fields[part]
                optional = optional or info.default is None
                sub = _nested_model(info.annotation)
                assert sub is not None
                model = sub
            doc = (model.__doc__ or "").strip().splitlines()[0]
            note = " Optional section, unset by default." if optional else ""
            lines += ["", f"# --- {'.'.join(section)}: {doc}{note}"]
        if var.field.description:
            lines.append(f"# {var.field.description}")
        if var.path == ("yespo", "api_key"):
            lines.append("# prefer YESPO_API_KEY (above) or yespo.api_key_file")
        if var.field.is_required() and var.default is None:
            lines.append("# required when the section is set")
        lines.append(f"#{var.name}={_render(var.default)}")
    cli = cli_env_vars()
    if cli:
        lines += ["", "# --- command-line options that also read the environment (not config keys)"]
        for option in cli:
            lines.append(f"# yespo-connector {option.command}: {option.help}")
            lines.append(f"#{option.name}=")
    return "\n".join(lines) + "\n"


_ENV_LINE = re.compile(r"^#?\s*((?:YESPO_CONNECTOR_|YESPO_API_KEY)\w*)=(.*)$")


def _env_example_entries() -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = _ENV_LINE.match(line)
        if match:
            assert match.group(1) not in entries, f"{match.group(1)} is listed twice"
            entries[match.group(1)] = match.group(2)
    return entries


def test_env_example_lists_exactly_the_settings_fields() -> None:
    listed = set(_env_example_entries()) - {"YESPO_API_KEY"}
    expected = {v.name for v in settings_env_vars()} | {v.name for v in cli_env_vars()}
    hint = "regenerate with `python tests/unit/test_deploy_static.py`"
    assert not expected - listed, f"missing from deploy/.env.example ({hint}): {sorted(expected - listed)}"
    assert not listed - expected, f"not Settings fields ({hint}): {sorted(listed - expected)}"
    assert "YESPO_API_KEY" in _env_example_entries()


def test_env_example_walk_covers_nested_sections() -> None:
    names = {v.name for v in settings_env_vars()}
    # A section nested two levels deep, an optional section, a list leaf and a dict leaf.
    assert "YESPO_CONNECTOR_SOURCE__CUSTOMERS__TOPIC" in names
    assert "YESPO_CONNECTOR_CONTACT__ADDRESS__CITY" in names
    assert "YESPO_CONNECTOR_SOURCE__CHILDREN" in names
    assert "YESPO_CONNECTOR_KAFKA__EXTRA" in names
    assert "YESPO_CONNECTOR_KAFKA" not in names


def test_env_example_values_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each documented default, set on its own through the real environment, loads and lands on its
    # field: the names are ones pydantic-settings actually reads.
    by_name = {v.name: v for v in settings_env_vars()}
    for name, value in _env_example_entries().items():
        if name == "YESPO_API_KEY" or value == "" or name not in by_name:
            continue
        monkeypatch.setenv(name, value)
        settings = load_settings(None)
        node: Any = settings
        for part in by_name[name].path:
            node = getattr(node, part)
        assert _render(node) == value, name
        monkeypatch.delenv(name)


# ---------------------------------------------------------------------------------------------------
# Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list), f"use the exec (JSON) form: {rest}"
    return [str(v) for v in value]


def _console_script() -> tuple[str, str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    scripts = pyproject["project"]["scripts"]
    assert len(scripts) == 1
    return next(iter(scripts.items()))


def test_dockerfile_entrypoint_is_the_console_script() -> None:
    script, target = _console_script()
    assert (script, target) == ("yespo-connector", "connector.cli:main")
    instructions = _dockerfile_instructions()
    froms = [rest.split()[0] for word, rest in instructions if word == "FROM"]
    assert froms and all(f == "python:3.11-slim" for f in froms)
    entrypoints = [_exec_form(rest) for word, rest in instructions if word == "ENTRYPOINT"]
    cmds = [_exec_form(rest) for word, rest in instructions if word == "CMD"]
    assert entrypoints[-1] == [script]
    assert cmds[-1] == ["run", "--config", f"{CONFIG_MOUNT}/connector.yaml", "--stage", "all"]


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [rest for word, rest in _dockerfile_instructions() if word == "USER"]
    assert users, "no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    if user.isdigit():
        # Kubernetes' runAsNonRoot can only verify a numeric uid.
        deployment = _k8s_docs_by_kind()["Deployment"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == int(user)


def _dockerignore_patterns() -> list[str]:
    path = REPO / ".dockerignore"
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(rel, pat.removeprefix("**/")):
            ignored = not negate
    return ignored


def test_dockerfile_copies_files_that_exist_and_are_not_ignored() -> None:
    patterns = _dockerignore_patterns()
    copies = [rest for word, rest in _dockerfile_instructions() if word in {"COPY", "ADD"}]
    checked = 0
    for rest in copies:
        parts = shlex.split(rest)
        if any(p.startswith("--from") for p in parts):
            continue
        sources = [p for p in parts[:-1] if not p.startswith("--")]
        for source in sources:
            if any(ch in source for ch in "*?["):
                continue  # optional files (README*)
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert not _ignored(source.rstrip("/"), patterns), f"COPY {source}: excluded by .dockerignore"
            checked += 1
    assert checked >= 3
    # The build context stays small and never carries secrets or the local stack's jars.
    for heavy in (".git", ".venv", ".stack", ".env"):
        assert _ignored(heavy, patterns), heavy


# ---------------------------------------------------------------------------------------------------
# docker-compose.yml

_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _interpolate(value: str) -> str:
    """Compose's `${NAME:-default}` with the environment unset; `$$` is a literal dollar."""
    value = value.replace("$$", "\0")
    value = _INTERPOLATION.sub(lambda m: m.group(2) or "", value)
    return value.replace("\0", "$")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): _interpolate(str(v)) for k, v in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    if isinstance(command, str):
        command = shlex.split(command)
    return [_interpolate(str(c)) for c in command]


def _builds_repo_image(service: dict[str, Any]) -> bool:
    build = service.get("build")
    if build is None:
        return False
    context = build if isinstance(build, str) else build.get("context", ".")
    return (REPO / context).resolve() == REPO


def _connector_services() -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in _services().items()
        if _builds_repo_image(svc) and _command(svc)[:1] == ["run"]
    }


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((volume["source"], volume["target"]))
            continue
        source, _, rest = str(volume).partition(":")
        if source.startswith((".", "/", "~")):
            mounts.append((source, rest.split(":")[0]))
    return mounts


def _all_bind_mounts() -> list[tuple[str, str, str]]:
    return [(name, src, dst) for name, svc in _services().items() for src, dst in _bind_mounts(svc)]


def test_compose_parses_and_every_service_has_an_image_or_a_build() -> None:
    services = _services()
    assert {"kafka", "connect", "postgres", "yespo-stand-in"} <= set(services)
    for name, svc in services.items():
        build = svc.get("build")
        assert svc.get("image") or build, f"{name}: neither image nor build"
        if build is not None:
            context = REPO / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (context / dockerfile).is_file(), f"{name}: {context / dockerfile} does not exist"


@pytest.mark.parametrize(
    ("service", "source", "target"), _all_bind_mounts(), ids=[f"{s}:{p}" for s, p, _ in _all_bind_mounts()]
)
def test_compose_bind_mounts_exist_in_the_repo(service: str, source: str, target: str) -> None:
    assert not source.startswith(("/", "~")), f"{service}: absolute host path {source}"
    path = (REPO / source).resolve()
    assert path.is_relative_to(REPO), f"{service}: {source} leaves the repository"
    assert path.exists(), f"{service}: bind-mounted {source} does not exist in the repository"
    assert target.startswith("/"), f"{service}: container path {target} is not absolute"


def test_compose_mounts_the_expected_files() -> None:
    sources = {src.removeprefix("./") for _, src, _ in _all_bind_mounts()}
    assert {
        "deploy/local/crm-schema.sql",
        "deploy/connect/debezium-postgres.json",
        "deploy/connector.compose.yaml",
        "deploy/prometheus/prometheus.yml",
        "deploy/grafana/provisioning",
        "deploy/grafana/yespo-connector-dashboard.json",
    } <= sources


def _host_ports(service: dict[str, Any]) -> list[tuple[str, int, str]]:
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            if port.get("published") is not None:
                out.append(
                    (port.get("host_ip", "0.0.0.0"), int(port["published"]), port.get("protocol", "tcp"))
                )
            continue
        spec, _, protocol = _interpolate(str(port)).partition("/")
        parts = spec.split(":")
        if len(parts) == 1:
            continue  # container port only: the host port is ephemeral
        host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        out.append((host_ip, int(parts[-2]), protocol or "tcp"))
    return out


def test_compose_host_ports_are_unique() -> None:
    seen: dict[tuple[int, str], str] = {}
    for name, svc in _services().items():
        for _ip, port, protocol in _host_ports(svc):
            # 127.0.0.1:P and 0.0.0.0:P collide too, so the address is ignored.
            key = (port, protocol)
            assert key not in seen, f"host port {port}/{protocol}: {seen.get(key)} and {name}"
            seen[key] = name
    assert len(seen) >= 6


def test_compose_depends_on_names_exist() -> None:
    services = _services()
    for name, svc in services.items():
        deps = svc.get("depends_on") or []
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name


def test_compose_connector_services() -> None:
    connectors = _connector_services()
    assert connectors, "no connector service (build: . with `run`)"
    stages = set()
    for name, svc in connectors.items():
        command = _command(svc)
        assert "--config" in command and "--stage" in command, name
        stage = command[command.index("--stage") + 1]
        assert stage in STAGES, f"{name}: unknown stage {stage}"
        stages.add(stage)
        config_path = command[command.index("--config") + 1]
        mounts = {dst: src for src, dst in _bind_mounts(svc)}
        assert config_path in mounts, f"{name}: --config {config_path} is not mounted"
        settings = load_settings(REPO / mounts[config_path])
        container_ports = {int(str(p).split(":")[-1].split("/")[0]) for p in svc.get("ports") or []}
        assert settings.observability.metrics_port in container_ports, f"{name}: metrics port not published"
        assert settings.observability.metrics_host == "0.0.0.0"
        for var in _env(svc):
            if var.startswith(ENV_PREFIX):
                assert var in process_env_names(), f"{name}: {var} is not a Settings field or CLI option"
        if stage in {"deliver", "all"}:
            assert settings.yespo.api_key_env in _env(svc), f"{name}: no {settings.yespo.api_key_env}"
    # Every stage runs: either `all`, or both merge and deliver.
    assert "all" in stages or {"merge", "deliver"} <= stages


def test_compose_connector_env_check_would_catch_a_typo() -> None:
    names = settings_env_names_with_sections()
    assert "YESPO_CONNECTOR_OBSERVABILITY__LOG_LEVEL" in names
    assert "YESPO_CONNECTOR_CONTACT__ADDRESS" in names  # a whole section as JSON
    assert "YESPO_CONNECTOR_OBSERVABILITY__LOGLEVEL" not in names


def _url_host_port(url: str) -> tuple[str, int]:
    match = re.match(r"^(?:\w+://)?([^:/]+):(\d+)", url)
    assert match, url
    return match.group(1), int(match.group(2))


def test_compose_config_points_at_compose_services() -> None:
    services = _services()
    settings = load_settings(COMPOSE_CONFIG)
    for address in settings.kafka.bootstrap_servers.split(","):
        host, port = _url_host_port(address)
        assert host in services
        listeners = _env(services[host])["KAFKA_LISTENERS"]
        assert f":{port}" in listeners
        assert f"{host}:{port}" in _env(services[host])["KAFKA_ADVERTISED_LISTENERS"]
    host, port = _url_host_port(settings.yespo.base_url)
    assert host in services
    command = _command(services[host])
    assert command[0] == "stand-in"
    assert command[command.index("--port") + 1] == str(port)
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert "--api-key" in command


def _settings_dump(settings: Settings) -> dict[str, Any]:
    data = settings.model_dump(mode="json")
    for section, key in DEPLOYMENT_SPECIFIC:
        data[section].pop(key)
    return data


@pytest.mark.parametrize("path", [COMPOSE_CONFIG], ids=["compose"])
def test_deployment_config_matches_the_example_except_addresses(path: Path) -> None:
    assert _settings_dump(load_settings(path)) == _settings_dump(load_settings(REPO_CONFIG))


def test_compose_kafka_connect_and_postgres_settings() -> None:
    services = _services()
    kafka = _env(services["kafka"])
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert kafka["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    connect = services["connect"]
    assert str(connect["image"]).startswith("quay.io/debezium/connect:3.6")
    env = _env(connect)
    for side in ("KEY", "VALUE"):
        assert env[f"{side}_CONVERTER"] == "org.apache.kafka.connect.json.JsonConverter"
        assert env[f"CONNECT_{side}_CONVERTER_REPLACE_NULL_WITH_DEFAULT"] == "false"
    postgres = services["postgres"]
    assert str(postgres["image"]) == "postgres:15"
    assert "wal_level=logical" in _command(postgres)
    assert any(dst.startswith("/docker-entrypoint-initdb.d/") for _, dst in _bind_mounts(postgres))


class _Reply:
    def __init__(self, status: int) -> None:
        self.status = status

    def __enter__(self) -> _Reply:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _run_register_script(monkeypatch: pytest.MonkeyPatch, replies: list[Any]) -> list[urllib.request.Request]:
    """Run the register-connector service's script in process, with urlopen and sleep faked."""
    service = _services()["register-connector"]
    assert service["entrypoint"] == ["python", "-c"]
    (script,) = service["command"]
    # Compose would interpolate any `$`; the script must not contain one.
    assert "$" not in script
    env = _env(service)
    mounts = {dst: src for src, dst in _bind_mounts(service)}
    env["CONNECTOR_FILE"] = str(REPO / mounts[env["CONNECTOR_FILE"]])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    calls: list[urllib.request.Request] = []
    pending = iter(replies)

    def fake_urlopen(request: urllib.request.Request, timeout: float) -> _Reply:
        calls.append(request)
        reply = next(pending)
        if isinstance(reply, Exception):
            raise reply
        return _Reply(reply)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    exec(compile(script, "register-connector", "exec"), {})
    return calls


def test_compose_register_script_puts_the_connector_config(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _services()
    url = _env(services["register-connector"])["CONNECT_URL"]
    rebalancing = urllib.error.HTTPError(url, 409, "rebalancing", Message(), None)
    calls = _run_register_script(monkeypatch, [urllib.error.URLError("refused"), rebalancing, 201])
    assert len(calls) == 3  # retried while Connect was not up, then while it rebalanced
    request = calls[-1]
    document = json.loads((REPO / "deploy" / "connect" / "debezium-postgres.json").read_text())
    name = document.get("name") or document["config"]["name"]
    assert request.get_method() == "PUT"
    assert request.full_url == f"{url}/connectors/{name}/config"
    host, _port = _url_host_port(url)
    assert host in services
    assert request.data is not None
    config = json.loads(request.data)
    assert "_comment" not in config and "config" not in config
    # The database address is the compose service; the rest is the file's.
    assert config["database.hostname"] == "postgres" and "postgres" in services
    assert config["connector.class"] == "io.debezium.connector.postgresql.PostgresConnector"
    for side in ("key", "value"):
        assert config.get(f"{side}.converter.replace.null.with.default", "false") == "false"
    # The topics Debezium writes are the ones the compose config consumes.
    settings = load_settings(COMPOSE_CONFIG)
    tables = config["table.include.list"].split(",")
    assert {f"{config['topic.prefix']}.{t.strip()}" for t in tables} == set(settings.source.topics)


def test_compose_register_script_fails_on_a_rejected_config(monkeypatch: pytest.MonkeyPatch) -> None:
    url = _env(_services()["register-connector"])["CONNECT_URL"]
    rejected = urllib.error.HTTPError(url, 400, "bad config", Message(), io.BytesIO(b"{}"))
    with pytest.raises(SystemExit, match="HTTP 400"):
        _run_register_script(monkeypatch, [rejected])


def test_compose_monitoring_is_an_optional_profile() -> None:
    services = _services()
    for name in ("prometheus", "grafana"):
        assert services[name].get("profiles") == ["monitoring"], name
    for name, svc in services.items():
        if name not in {"prometheus", "grafana"}:
            assert not svc.get("profiles"), f"{name} should start by default"


def test_prometheus_scrapes_every_connector_service() -> None:
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs") or []
        for target in static["targets"]
    }
    for name, svc in _connector_services().items():
        command = _command(svc)
        mounts = {dst: src for src, dst in _bind_mounts(svc)}
        settings = load_settings(REPO / mounts[command[command.index("--config") + 1]])
        assert f"{name}:{settings.observability.metrics_port}" in targets, name
    dashboard = REPO / "deploy" / "grafana" / "yespo-connector-dashboard.json"
    assert json.loads(dashboard.read_text(encoding="utf-8"))["panels"]


def test_grafana_provisioning_matches_compose() -> None:
    services = _services()
    provisioning = REPO / "deploy" / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    host, port = _url_host_port(source["url"])
    assert host in services and any(p == port for _, p, _ in _host_ports(services[host]))
    dashboards = yaml.safe_load((provisioning / "dashboards" / "yespo-connector.yml").read_text())
    (provider,) = dashboards["providers"]
    targets = [dst for _, dst in _bind_mounts(services["grafana"])]
    assert any(t.startswith(provider["options"]["path"].rstrip("/") + "/") for t in targets)
    assert "/etc/grafana/provisioning" in targets


def _deploy_argvs() -> list[tuple[str, list[str]]]:
    """Every `yespo-connector` argument list the deployment files use: Dockerfile, compose, k8s."""
    instructions = _dockerfile_instructions()
    argvs = [("Dockerfile CMD", _exec_form([r for w, r in instructions if w == "CMD"][-1]))]
    for name, svc in _services().items():
        if _builds_repo_image(svc) and "entrypoint" not in svc:
            argvs.append((f"compose {name}", _command(svc)))
    argvs.append(("k8s Deployment", _container(_k8s_docs_by_kind()["Deployment"])["args"]))
    return argvs


def test_deploy_commands_exist_in_the_cli() -> None:
    import typer.main

    from connector.cli import app

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for where, argv in _deploy_argvs():
        name, *args = argv
        assert name in commands, f"{where}: `yespo-connector {name}` is not a command"
        options = {opt for param in commands[name].params for opt in param.opts}
        for arg in args:
            if arg.startswith("-"):
                assert arg in options, f"{where}: `yespo-connector {name}` has no option {arg}"
    assert {argv[0] for _, argv in _deploy_argvs()} == {"run", "stand-in"}


# ---------------------------------------------------------------------------------------------------
# deploy/k8s


def _k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in _k8s_files():
        docs.extend(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None)
    return docs


def _k8s_docs_by_kind() -> dict[str, dict[str, Any]]:
    by_kind: dict[str, dict[str, Any]] = {}
    for doc in _k8s_docs():
        assert doc["kind"] not in by_kind, f"two {doc['kind']} manifests"
        by_kind[doc["kind"]] = doc
    return by_kind


def _configmap_settings(tmp_path: Path) -> tuple[Settings, str]:
    configmap = _k8s_docs_by_kind()["ConfigMap"]
    ((key, text),) = configmap["data"].items()
    path = tmp_path / key
    path.write_text(text, encoding="utf-8")
    return load_settings(path), key


def test_k8s_manifests_parse_and_are_namespace_agnostic() -> None:
    kinds = _k8s_docs_by_kind()
    assert {"Deployment", "ConfigMap", "Secret", "Service", "PodMonitor"} <= set(kinds)
    for doc in _k8s_docs():
        assert doc.get("apiVersion") and doc["metadata"].get("name"), doc.get("kind")
        assert "namespace" not in doc["metadata"], f"{doc['kind']} pins a namespace"
    assert kinds["PodMonitor"]["apiVersion"] == "monitoring.coreos.com/v1"


def test_k8s_kustomization_lists_files_that_exist() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    resources = kustomization["resources"]
    for resource in resources:
        assert (K8S / resource).is_file(), resource
    assert "namespace" not in kustomization
    # Every manifest is applied, except the placeholder Secret (created out of band).
    assert set(resources) == {p.name for p in _k8s_files()} - {"secret.yaml"}


def test_k8s_configmap_config_loads(tmp_path: Path) -> None:
    settings, key = _configmap_settings(tmp_path)
    assert key == "connector.yaml"
    assert settings.observability.metrics_host == "0.0.0.0"
    assert _settings_dump(settings) == _settings_dump(load_settings(REPO_CONFIG))


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_k8s_deployment_probes_and_ports(tmp_path: Path) -> None:
    settings, key = _configmap_settings(tmp_path)
    deployment = _k8s_docs_by_kind()["Deployment"]
    container = _container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == settings.observability.metrics_port
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        port = get["port"]
        assert (ports[port] if isinstance(port, str) else port) == settings.observability.metrics_port
    args = container["args"]
    assert args[args.index("--config") + 1] == f"{CONFIG_MOUNT}/{key}"
    assert args[args.index("--stage") + 1] in STAGES
    assert deployment["spec"]["replicas"] <= settings.state.partitions
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_k8s_deployment_mounts_config_and_secret() -> None:
    kinds = _k8s_docs_by_kind()
    deployment, configmap, secret = kinds["Deployment"], kinds["ConfigMap"], kinds["Secret"]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    volumes = {v["name"]: v for v in pod["volumes"]}
    (config_mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == CONFIG_MOUNT]
    assert volumes[config_mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    env = {e["name"]: e for e in container["env"]}
    ref = env["YESPO_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]
    for var in env:
        if var.startswith(ENV_PREFIX):
            assert var in process_env_names(), var


def test_k8s_security_context_is_non_root() -> None:
    deployment = _k8s_docs_by_kind()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    container = _container(deployment)["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True


def test_k8s_service_and_podmonitor_select_the_pods() -> None:
    kinds = _k8s_docs_by_kind()
    labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert kinds["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = kinds["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["ports"]] == ["metrics"]
    monitor = kinds["PodMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    assert [(e["port"], e["path"]) for e in monitor["podMetricsEndpoints"]] == [("metrics", "/metrics")]


if __name__ == "__main__":
    ENV_EXAMPLE.write_text(render_env_example(), encoding="utf-8")
    print(f"wrote {ENV_EXAMPLE.relative_to(REPO)}", file=sys.stderr)


def test_k8s_pods_get_no_service_link_variables() -> None:
    pod = _k8s_docs_by_kind()["Deployment"]["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False
