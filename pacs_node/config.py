"""The node's configuration: a JSON file, checked when it is read (see README.md for every key)."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEPLOY_APP = Path(__file__).resolve().parents[1] / "deploy_app"


def check_ae_title(title: str, what: str) -> str:
    """An AE title as DICOM allows it: 1 to 16 printable ASCII characters, no backslash."""
    if not isinstance(title, str) or not 0 < len(title.strip()) <= 16 or not title.isascii() or "\\" in title:
        raise ValueError(f"{what} must be an AE title of 1 to 16 ASCII characters, got {title!r}")
    return title.strip()


@dataclass(frozen=True)
class Peer:
    """A remote DICOM node the node sends to."""

    ae_title: str
    host: str
    port: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", check_ae_title(self.ae_title, "destination ae_title"))
        if not 0 < int(self.port) < 65536:
            raise ValueError(f"destination port must be 1 to 65535, got {self.port}")

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Tls:
    """DICOM over TLS, both ways: the node's certificate and key (PEM), and the certificates (PEM) of the
    authorities its peers' certificates must be signed by (callers must then present one)."""

    certificate: str
    private_key: str
    ca_certificates: str

    def server_context(self) -> ssl.SSLContext:
        """For associations the node accepts: its certificate; a caller's certificate is required and checked."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.ca_certificates)
        context.load_cert_chain(self.certificate, self.private_key)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def client_context(self) -> ssl.SSLContext:
        """For associations the node requests: the destination's certificate (and host name) is checked and the
        node presents its own."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_certificates)
        context.load_cert_chain(self.certificate, self.private_key)
        return context


@dataclass(frozen=True)
class NodeConfig:
    """Everything the node needs; relative paths are relative to the configuration file.

    Attributes:
        spool: folder of the received studies and their results (see spool.py).
        model: the deploy app's model folder (``-m``): a MOTFM bundle, or a folder holding one.
        destination: where results go (normally the PACS the studies come from).
        callers: calling AE titles accepted, each with the address it must call from, or null for any address.
        ae_title, host, port: the node's AE title and where it listens.
        quiet_seconds: a study is complete when no instance of it has arrived for this long.
        batch_studies: at most this many complete studies go through one run of the deploy app.
        max_associations: associations served at once; more are rejected.
        max_study_mb: instances that would make a study larger are refused, and the study fails.
        acse_timeout_seconds: how long a connection may take to request (or release) an association; meanwhile it
            holds one of ``max_associations`` (pynetdicom counts connections), so keep it short.
        network_timeout_seconds: how long a silent peer keeps an association (DIMSE and network).
        retry_seconds, retry_max_seconds: the first wait after a failed send, doubled up to the maximum.
        app: the deploy app's folder (``python APP -i ... -o ... -m ...``).
        app_env: environment variables for the app (e.g. MOTFM_TASK, OMP_NUM_THREADS).
        app_timeout_seconds: a run of the app that takes longer is stopped and its studies fail.
        tls: certificate, key and trusted authorities for DICOM over TLS; null for plain DICOM.
    """

    spool: Path
    model: Path
    destination: Peer
    callers: dict[str, str | None]
    ae_title: str = "MOTFM"
    host: str = "0.0.0.0"
    port: int = 11112
    quiet_seconds: float = 30.0
    batch_studies: int = 8
    max_associations: int = 8
    max_study_mb: float = 2048.0
    acse_timeout_seconds: float = 10.0
    network_timeout_seconds: float = 60.0
    retry_seconds: float = 30.0
    retry_max_seconds: float = 3600.0
    app: Path = DEPLOY_APP
    app_env: dict[str, str] = field(default_factory=dict)
    app_timeout_seconds: float = 3600.0
    tls: Tls | None = None

    def __post_init__(self) -> None:
        check_ae_title(self.ae_title, "ae_title")
        if not self.callers:
            raise ValueError("callers must name at least one calling AE title")
        for title in self.callers:
            check_ae_title(title, "each of callers")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1 to 65535, got {self.port}")
        for name in ("quiet_seconds", "batch_studies", "max_associations", "max_study_mb", "retry_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not (self.app / "__main__.py").is_file():
            raise ValueError(f"app {self.app} is not the deploy app's folder (it has no __main__.py)")
        if not self.model.exists():
            raise ValueError(f"model {self.model} does not exist")
        if not all(isinstance(v, str) for v in self.app_env.values()):
            raise ValueError(f"app_env values must be strings, got {self.app_env}")

    @classmethod
    def read(cls, path: str | Path, **overrides: Any) -> NodeConfig:
        """The configuration in the JSON file ``path``, with ``overrides`` of its top-level keys."""
        path = Path(path)
        try:
            values = {**json.loads(path.read_text()), **overrides}
        except (OSError, ValueError) as e:
            raise ValueError(f"configuration {path} cannot be read: {e}") from e
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"configuration {path}: unknown keys {unknown}; known keys: {sorted(known)}")
        here = path.resolve().parent
        for key in ("spool", "model", "app"):
            if key in values:
                values[key] = here / Path(values[key]).expanduser()
        try:
            if values.get("tls"):
                values["tls"] = Tls(**{k: str(here / Path(v).expanduser()) for k, v in values["tls"].items()})
            values["destination"] = Peer(**values["destination"])
            return cls(**values)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"configuration {path}: {type(e).__name__}: {e}") from e

    def set_timeouts(self, ae: Any) -> None:
        """Sets a pynetdicom AE's timeouts."""
        ae.acse_timeout = self.acse_timeout_seconds
        ae.dimse_timeout = ae.network_timeout = self.network_timeout_seconds

    def allows(self, ae_title: str, address: str) -> bool:
        """Whether a caller with this AE title, calling from this address, may associate."""
        title = ae_title.strip()
        return title in self.callers and self.callers[title] in (None, address)
