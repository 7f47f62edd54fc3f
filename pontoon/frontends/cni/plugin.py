"""`pontoon-cni`: the CNI plugin (type `pontoon`), spec 1.1.0.

A runtime execs it once per operation with CNI_* variables and the plugin
configuration on stdin; it turns each verb into one or two calls to pontoond
and prints the spec's result or error JSON. Standard library only, and the
HTTP client is imported only by verbs that talk to the daemon: Podman calls
VERSION before every ADD and DEL.

The attachment's owner is {Kind: cni, Id: CNI_CONTAINERID, Name: K8S_POD_NAME
or the short id}; DEL detaches by owner, network and CNI_IFNAME, so a DEL
after a failed ADD never touches the container's other networks.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Any

from pontoon.frontends.cni import result as results
from pontoon.frontends.cni.protocol import (
    INCOMPATIBLE_VERSION,
    INTERNAL,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    IO_FAILURE,
    LATEST,
    NOT_AVAILABLE,
    SUPPORTED_VERSIONS,
    TRY_AGAIN,
    UNKNOWN_CONTAINER,
    CniError,
    Config,
    Invocation,
    attach_request,
    decode,
    parse_config,
    parse_environment,
    version_tuple,
)

if TYPE_CHECKING:
    from pontoon.client import Client

OWNER_KIND = "cni"


# -- talking to pontoond --------------------------------------------------------------


def daemon(conf: Config) -> Client:
    from pontoon.client import ApiError, Client

    try:
        return Client(conf.host)
    except ApiError as exc:
        raise CniError(INVALID_CONFIG, exc.message) from None


def call(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One request; the daemon's refusal as a CNI error."""
    from pontoon.client import ApiError

    try:
        return method(*args, **kwargs)
    except ApiError as exc:
        raise CniError(_code_for(exc.status), exc.message) from None


def _code_for(status: int) -> int:
    if status in (0, 503):  # unreachable, or a dependency away (the cluster store)
        return TRY_AGAIN
    if status in (400, 404):
        return INVALID_CONFIG
    return INTERNAL


def owned(client: Client, container_id: str = "") -> list[dict[str, Any]]:
    query = {"owner_kind": OWNER_KIND}
    if container_id:
        query["owner_id"] = container_id
    return call(client.get, "/attachments", **query) or []


def on_network(att: Mapping[str, Any], network: str) -> bool:
    """Whether an attachment view is on `network` (a name or an ID prefix)."""
    return att.get("Network") == network or str(att.get("NetworkID", "")).startswith(network)


# -- the verbs --------------------------------------------------------------------------


def add(conf: Config, inv: Invocation) -> dict[str, Any]:
    body = attach_request(conf, inv)
    client = daemon(conf)
    try:
        fd = os.open(inv.netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CniError(
            INVALID_ENVIRONMENT, f"CNI_NETNS: cannot open {inv.netns}: {exc.strerror}"
        ) from None
    try:
        # The daemon opens /proc/<this pid>/fd/<fd> while the request is in flight.
        answer = call(client.post, "/attachments", {**body, "NetnsFd": fd})
    finally:
        os.close(fd)
    try:
        dns = conf.runtime.get("dns") or {}
        ours = results.from_daemon(answer, inv.netns, dns)
        return results.for_version(results.merge(conf.prev_result, ours), conf.cni_version)
    except Exception:
        delete(conf, inv)  # nothing left half-made: the runtime never saw a result
        raise


def delete(conf: Config, inv: Invocation) -> None:
    """Idempotent: the namespace, the attachment or the network may be gone."""
    query = {"owner_kind": OWNER_KIND, "owner_id": inv.container_id, "ifname": inv.ifname}
    if conf.network:
        query["network"] = conf.network
    call(daemon(conf).delete, "/attachments", **query)


def check(conf: Config, inv: Invocation) -> None:
    if version_tuple(conf.cni_version) < (0, 4):
        raise CniError(
            INCOMPATIBLE_VERSION, f"CHECK needs CNI 0.4.0 or later, not {conf.cni_version}"
        )
    found = [
        a
        for a in owned(daemon(conf), inv.container_id)
        if a.get("Interface") == inv.ifname and on_network(a, conf.network)
    ]
    if not found:
        raise CniError(
            UNKNOWN_CONTAINER,
            f"container {inv.container_id} has no {inv.ifname} on network {conf.network}",
        )
    att = found[0]
    if att.get("Status") != "ready":
        raise CniError(INTERNAL, f"attachment {inv.ifname} is {att.get('Status')}, not ready")
    missing = results.addresses_of(conf.prev_result, inv.ifname) - set(att.get("Addresses", []))
    if missing:
        raise CniError(INTERNAL, f"{inv.ifname} lacks {', '.join(sorted(missing))}")
    _check_namespace(inv.netns, str(att.get("Netns", "")))


def _check_namespace(given: str, pinned: str) -> None:
    """CNI_NETNS must be the namespace the daemon attached (its pin, where
    this mount namespace can see it)."""
    try:
        ours = os.stat(given)
    except OSError as exc:
        raise CniError(
            INVALID_ENVIRONMENT, f"CNI_NETNS: cannot open {given}: {exc.strerror}"
        ) from None
    try:
        theirs = os.stat(pinned)
    except OSError:
        return  # the daemon's pin is out of this mount namespace's sight
    if (ours.st_dev, ours.st_ino) != (theirs.st_dev, theirs.st_ino):
        raise CniError(INTERNAL, f"CNI_NETNS {given} is not the namespace attached")


def gc(conf: Config) -> None:
    """Detach this network's CNI attachments that the runtime no longer lists."""
    client = daemon(conf)
    failures = []
    for att in owned(client):
        key = (att["Owner"]["Id"], att.get("Interface", ""))
        # "creating": an ADD in flight, which the runtime cannot have listed yet.
        if not on_network(att, conf.network) or key in conf.valid_attachments:
            continue
        if att.get("Status") == "creating":
            continue
        try:
            call(client.delete, f"/attachments/{att['Id']}")
        except CniError as err:  # go on: remove as much as possible
            failures.append(f"{key[0]}/{key[1]}: {err.msg}")
    if failures:
        raise CniError(INTERNAL, "GC could not detach every stale attachment", "; ".join(failures))


def status(conf: Config) -> None:
    from pontoon.client import ApiError, ref

    try:
        daemon(conf).get(f"/networks/{ref(conf.network)}")
    except ApiError as exc:
        raise CniError(NOT_AVAILABLE, exc.message) from None


def version(requested: str) -> dict[str, Any]:
    return {"cniVersion": requested or LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)}


# -- the protocol -----------------------------------------------------------------------

ATTACHMENT_VERBS = {"ADD", "DEL", "CHECK"}


def dispatch(command: str, conf_data: dict[str, Any], env: Mapping[str, str]) -> Any:
    if command not in ATTACHMENT_VERBS | {"GC", "STATUS"}:
        what = "is not set" if not command else f"is not a CNI verb: {command!r}"
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND {what}")
    conf = parse_config(conf_data, need_network=command != "DEL")
    if command == "GC":
        return gc(conf)
    if command == "STATUS":
        return status(conf)
    inv = parse_environment(env, need_netns=command != "DEL")
    if command == "ADD":
        return add(conf, inv)
    if command == "DEL":
        return delete(conf, inv)
    return check(conf, inv)


def run(env: Mapping[str, str], stdin: IO[bytes], stdout: IO[str]) -> int:
    """One invocation; every failure is the spec's error JSON and exit 1."""
    reply_version = LATEST
    try:
        command = env.get("CNI_COMMAND", "")
        try:
            data = stdin.read()
        except OSError as exc:
            raise CniError(
                IO_FAILURE, "cannot read the configuration from stdin", str(exc)
            ) from None
        if command == "VERSION":
            asked = _loose_version(data)
            _emit(stdout, version(asked))
            return 0
        conf_data = decode(data)
        given = conf_data.get("cniVersion")
        if isinstance(given, str) and given in SUPPORTED_VERSIONS:
            reply_version = given
        output = dispatch(command, conf_data, env)
        if output is not None:
            _emit(stdout, output)
        return 0
    except CniError as err:
        _emit(stdout, err.to_dict(reply_version))
    except Exception as exc:  # a bug: still the spec's JSON, never a traceback
        bug = CniError(INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        _emit(stdout, bug.to_dict(reply_version))
    return 1


def _loose_version(data: bytes) -> str:
    """VERSION answers whatever the input: echo its cniVersion when there is one."""
    try:
        asked = json.loads(data).get("cniVersion")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return LATEST
    return asked if isinstance(asked, str) and asked else LATEST


def _emit(stdout: IO[str], payload: Any) -> None:
    stdout.write(json.dumps(payload) + "\n")
    stdout.flush()


def main() -> None:
    try:
        code = run(os.environ, sys.stdin.buffer, sys.stdout)
    except (BrokenPipeError, KeyboardInterrupt):
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
