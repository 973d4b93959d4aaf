"""etcd's own CA, so that no node or admin certificate of the cluster CA can ever reach etcd.

Whoever holds a client certificate etcd trusts holds the whole cluster (the cluster CA's key is in
etcd), so etcd trusts a CA of its own that lives only in the scheduler's state directory and signs
exactly two certificates: etcd's (server and peer, DNS ``etcd.dockyard`` and its IPs) and the
scheduler's client certificate. kubeadm does the same. Layout under <state>/etcd-tls (0700):

    ca/       ca.pem, cert.pem (the CA's own), key.pem (0600): etcd's CA
    server/   ca.pem, cert.pem, key.pem: etcd's --cert-file/--key-file, also its peer certificate
    client/   ca.pem, cert.pem, key.pem: the scheduler's (scheduler/store.py dials etcd with it)

An external etcd with its own PKI: ``--etcd https://... --etcd-cacert F --etcd-cert F --etcd-key F``
(``external_bundle``).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import pki

ETCD_NAME = "etcd.dockyard"  # etcd's certificate carries it; the scheduler dials etcd by it


@dataclass(frozen=True)
class EtcdPKI:
    dir: Path
    server_dir: str = "server"  # `cluster up`'s members keep theirs in member/

    @property
    def server(self) -> Path:
        return self.dir / self.server_dir

    def client_bundle(self) -> pki.Bundle:
        return pki.read_bundle(self.dir / "client")

    def server_args(self) -> list[str]:
        """etcd's flags: https with client-certificate auth on the client and the peer ports."""
        ca, cert, key = (str(self.server / n) for n in (pki.CA_FILE, pki.CERT_FILE, pki.KEY_FILE))
        return ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth",
                "--peer-cert-file", cert, "--peer-key-file", key, "--peer-trusted-ca-file", ca,
                "--peer-client-cert-auth"]


def ca_in(d: Path) -> pki.CA:
    """etcd's CA in ``d``/ca (``d`` 0700), made on first use."""
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    d.chmod(0o700)
    if (d / "ca" / pki.KEY_FILE).exists():
        b = pki.read_bundle(d / "ca")
        return pki.CA(b.cert_pem, b.key_pem)
    ca = pki.make_ca(f"etcd-{secrets.token_hex(4)}", common_name="dockyard etcd CA")
    pki.write_bundle(d / "ca", pki.Bundle(ca.cert_pem, ca.cert_pem, ca.key_pem))
    return ca


def member_bundle(ca: pki.CA, name: str, ips: Sequence[str]) -> pki.Bundle:
    """An etcd member's certificate: server and peer (its EKU has both), named ``etcd.dockyard``
    and by its addresses, so members and the scheduler can check it either way."""
    return pki.issue_bundle(ca, node_id=name, role="etcd", sans=[ETCD_NAME], ips=list(dict.fromkeys(ips)))


def client_bundle(ca: pki.CA) -> pki.Bundle:
    """The schedulers' client certificate for etcd (the only one that is not a member's)."""
    return pki.issue_bundle(ca, node_id="scheduler", role="etcd", sans=[])


def ensure(state_dir: Path, ips: Sequence[str] = ("127.0.0.1",)) -> EtcdPKI:
    """etcd's CA and its two certificates in <state>/etcd-tls, made on first use (and etcd's again
    when it must name an address it does not)."""
    d = state_dir / "etcd-tls"
    ca = ca_in(d)
    out = EtcdPKI(d)
    server = d / "server" / pki.CERT_FILE
    if not server.exists() or not set(ips) <= set(pki.ip_sans(server.read_bytes())) \
            or pki.read_bundle(d / "server").ca_pem != ca.cert_pem:
        pki.write_bundle(d / "server", member_bundle(ca, "etcd", ips))
    if not (d / "client" / pki.CERT_FILE).exists() or pki.read_bundle(d / "client").ca_pem != ca.cert_pem:
        pki.write_bundle(d / "client", client_bundle(ca))
    return out


def external_bundle(cacert: str, cert: str, key: str) -> pki.Bundle:
    """An external etcd's client files, checked as ours are (the key private to its owner)."""
    missing = [flag for flag, v in (("--etcd-cacert", cacert), ("--etcd-cert", cert), ("--etcd-key", key)) if not v]
    if missing:
        raise pki.PKIError(f"etcd over TLS needs {', '.join(missing)} as well")
    pki.check_key_file(Path(key))
    try:
        return pki.Bundle(Path(cacert).read_bytes(), Path(cert).read_bytes(), Path(key).read_bytes())
    except OSError as e:
        raise pki.PKIError(f"{e.filename}: {e.strerror}") from None
