"""The node's safety: only configured callers; limits on associations and study size; malformed data refused, the
service going on; DICOM over TLS (a round trip with Orthanc, TLS both ways)."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess

import pydicom
import pytest
from pacs_fixtures import associate, certificates, echo, store
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import _config

from pacs_node.receiver import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS
from testbed.pacs import Node, Orthanc, complete, free_port
from testbed.studies import write_study


@pytest.fixture
def node(tmp_path, model, request):
    """A node that never sends (nothing listens at its destination), with the test's settings."""
    started = Node(tmp_path / "node", model, free_port(), "MOTFM", **getattr(request, "param", {})).start()
    yield started
    started.stop()


@pytest.mark.parametrize("node", [{"callers": {"TESTER": None, "FARAWAY": "10.9.8.7"}}], indirect=True)
def test_only_configured_callers(node):
    """A calling AE title not configured is rejected (dcmtk's echoscu, as sites check a link); so is a configured
    one calling from another address than its own; a configured caller is served."""
    echoscu = shutil.which("echoscu", path="/usr/bin:/usr/local/bin")  # dcmtk's, not pynetdicom's
    assert echoscu, "dcmtk's echoscu not found: install dcmtk (Debian: apt-get install dcmtk)"
    echo = [echoscu, "-aec", node.ae_title, "127.0.0.1", str(node.port), "-aet"]
    accepted = subprocess.run([*echo, "TESTER"], capture_output=True, text=True, check=False)
    refused = subprocess.run([*echo, "INTRUDER"], capture_output=True, text=True, check=False)
    assert accepted.returncode == 0, accepted.stderr
    assert refused.returncode != 0 and "calling ae title not recogni" in (refused.stdout + refused.stderr).lower()
    assert associate(node.port, node.ae_title, calling="FARAWAY").is_rejected
    log = node.log()
    assert "association from 'INTRUDER' at 127.0.0.1 rejected" in log
    assert "association from 'FARAWAY' at 127.0.0.1 rejected" in log


LIMITS = {"max_associations": 1, "max_study_mb": 0.01, "acse_timeout_seconds": 2}


@pytest.mark.parametrize("node", [LIMITS], indirect=True)
def test_limits_and_malformed_data(tmp_path, volumes, node):
    """At most max_associations at once; instances past max_study_mb are refused and their study fails once
    complete; data the node cannot understand (undecodable, no or unsafe UIDs, not DICOM at all) is refused; the
    service goes on."""
    first = associate(node.port, node.ae_title)
    assert first.is_established
    assert associate(node.port, node.ae_title).is_rejected
    first.release()
    assert echo(node.port, node.ae_title)

    # malformed: undecodable bytes after valid file meta, no Study Instance UID, a UID that would leave the spool
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with open(tmp_path / "garbage.dcm", "wb") as f:
        f.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(f, meta)
        f.write(b"\x08\x00\x18\x00UI\xff\x7f" + bytes(range(256)))
    study = write_study(tmp_path / "study", volumes, seg=False, slices=6)
    no_study = pydicom.dcmread(study.files[0])
    del no_study.StudyInstanceUID
    no_study.save_as(tmp_path / "no_study.dcm")
    escape = pydicom.dcmread(study.files[0])
    escape.StudyInstanceUID = "../../escape"
    escape.save_as(tmp_path / "escape.dcm")
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are
    try:
        statuses = store(node.port, node.ae_title, [tmp_path / n for n in ("garbage.dcm", "no_study.dcm")])
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    statuses += store(node.port, node.ae_title, [tmp_path / "escape.dcm"])
    assert statuses == [CANNOT_UNDERSTAND] * 3
    assert not (node.folder / "escape").exists()
    with socket.create_connection(("127.0.0.1", node.port)) as raw:  # not even DICOM: holds the one slot a while
        raw.sendall(b"\x01\x00\x00\x00\x00\x10" + bytes(range(16)) * 64)
    node.wait_for(lambda: echo(node.port, node.ae_title), 10, "the service after garbage")  # still serving

    # too large: 6 instances of about 3.5 kB against a 10 kB limit
    statuses = store(node.port, node.ae_title, study.files)
    assert statuses == [SUCCESS] * 2 + [OUT_OF_RESOURCES] * 4
    failed = node.wait_for(lambda: node.status()["failed"], 30, "the study over the limit to fail")
    assert failed[0]["study"] == study.uid and "larger than max_study_mb (0.01 MB)" in failed[0]["error"]
    assert "0 pending, 0 done, 1 failed" in node.command("status")


def test_tls_round_trip(tmp_path, volumes, model):
    """Orthanc and the node speak DICOM over TLS with certificates from one authority: a study goes to the node
    and its new series comes back; a plain association, or one without a certificate, is refused."""
    certs = certificates(tmp_path / "certs")
    pacs = Orthanc(tmp_path / "orthanc", tls=certs["pacs"])
    node = Node(tmp_path / "node", model, pacs.port, "MOTFMT", tls=certs["node"])
    try:
        node.start()
        pacs.add_modality("motfmt", node.ae_title, node.port, tls=True)
        client = certs["pacs"]  # any certificate the authority signed
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=client["ca_certificates"])
        assert not echo(node.port, node.ae_title, tls=(context, "localhost"))  # no certificate of its own
        context.load_cert_chain(client["certificate"], client["private_key"])
        assert echo(node.port, node.ae_title, tls=(context, "localhost"))
        assert not echo(node.port, node.ae_title)  # plain DICOM

        study = write_study(tmp_path / "study", volumes, seg=True)
        pacs.upload(study)
        pacs.send("motfmt", [study], synchronous=True)
        node.wait_for(lambda: complete(pacs.new_series(study), study), 240, "the new series over TLS")
        assert "over TLS" in node.log()
    finally:
        node.stop()
        pacs.stop()
