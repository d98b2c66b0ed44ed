"""DICOM clients for the PACS tests (association, echo, store, C-MOVE), a test certificate authority, and the app runs
of a node; the PACS and the node themselves are in testbed.pacs."""

from __future__ import annotations

import time
from pathlib import Path

from pydicom.filereader import read_file_meta_info

from testbed.pacs import PACS_AET, TESTER_AET, Orthanc
from testbed.studies import Study


def app_runs(spool: Path) -> list[int]:
    """The process ids of the deploy app runs working in ``spool`` (their command line names its work folder)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if str(spool / "work") in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def associate(port: int, called: str, calling: str = TESTER_AET, contexts=None, tls=None):
    """A pynetdicom association from ``calling`` to ``called`` on loopback; ``contexts`` maps SOP classes to the
    transfer syntaxes proposed (Verification is always proposed); ``tls`` is (SSLContext, host name)."""
    from pynetdicom import AE, DEFAULT_TRANSFER_SYNTAXES
    from pynetdicom.sop_class import Verification

    ae = AE(calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class, syntaxes in {Verification: DEFAULT_TRANSFER_SYNTAXES, **(contexts or {})}.items():
        ae.add_requested_context(sop_class, syntaxes)
    return ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls)


def associate_when_free(port: int, called: str, calling: str = TESTER_AET, contexts=None, tls=None, seconds=10.0):
    """``associate``, tried again for up to ``seconds`` while the association is rejected: a node at its
    ``max_associations`` rejects until the thread of an association just released has ended, as a DICOM client
    that retries would see."""
    deadline = time.monotonic() + seconds
    while (assoc := associate(port, called, calling, contexts, tls)).is_rejected and time.monotonic() < deadline:
        time.sleep(0.2)
    return assoc


def echo(port: int, called: str, calling: str = TESTER_AET, tls=None) -> bool:
    """Whether an association is accepted and answers a C-ECHO (the association is then released)."""
    assoc = associate_when_free(port, called, calling, tls=tls)
    if not assoc.is_established:
        return False
    try:
        return assoc.send_c_echo().get("Status") == 0x0000
    finally:
        assoc.release()


def store(port: int, called: str, files: list[Path], calling: str = TESTER_AET) -> list[int | None]:
    """C-STOREs ``files`` in one association; returns each status (None: no answer)."""
    contexts: dict[str, list[str]] = {}
    for meta in map(read_file_meta_info, files):
        syntaxes = contexts.setdefault(meta.MediaStorageSOPClassUID, [])
        syntaxes += [meta.TransferSyntaxUID] if meta.TransferSyntaxUID not in syntaxes else []
    assoc = associate_when_free(port, called, calling, contexts)
    assert assoc.is_established, f"association {calling} -> {called} failed"
    try:
        return [assoc.send_c_store(f).get("Status") for f in files]
    finally:
        assoc.release()


def move(pacs: Orthanc, study: Study, destination: str) -> int:
    """Asks the PACS (C-MOVE, study level) to send ``study`` to the node ``destination``; returns the final status."""
    from pydicom.dataset import Dataset
    from pynetdicom import DEFAULT_TRANSFER_SYNTAXES
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as Move

    assoc = associate(pacs.port, PACS_AET, contexts={Move: DEFAULT_TRANSFER_SYNTAXES})
    assert assoc.is_established, "association with the PACS for C-MOVE failed"
    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", study.uid
    try:
        statuses = [status.Status for status, _ in assoc.send_c_move(query, destination, Move)]
    finally:
        assoc.release()
    return statuses[-1]


def certificates(folder: Path) -> dict[str, dict[str, str]]:
    """A test certificate authority and, signed by it, a certificate for the PACS and one for the node (both for
    127.0.0.1 and localhost): {"pacs" | "node": {"certificate", "private_key", "ca_certificates"}} (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def issue(name: str, key, issuer: x509.Name, signer, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def save(name: str, data: bytes) -> str:
        (folder / name).write_bytes(data)
        return str(folder / name)

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "MOTFM test CA")])
    ca = save("ca.pem", issue("MOTFM test CA", ca_key, ca_name, ca_key, True).public_bytes(serialization.Encoding.PEM))
    found = {}
    for name in ("pacs", "node"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = issue(name, key, ca_name, ca_key, False).public_bytes(serialization.Encoding.PEM)
        raw = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        found[name] = {
            "certificate": save(f"{name}.pem", pem),
            "private_key": save(f"{name}.key", raw),
            "ca_certificates": ca,
        }
    return found
