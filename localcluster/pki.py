"""Certificates for a throw-away cluster: one CA, a cert per component identity (openssl CLI)."""
from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

FRONT_PROXY_CLIENT = "front-proxy-client"  # the CN the API server's --requestheader-allowed-names admits


@dataclass
class Identity:
    name: str                    # file stem: <name>.crt / <name>.key
    cn: str
    org: str = ""
    usage: str = "clientAuth"    # clientAuth, serverAuth or both
    dns: list[str] = field(default_factory=list)
    ips: list[str] = field(default_factory=list)


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def ensure_ca(pki: Path, name: str = "ca", cn: str = "twotier-local-ca") -> None:
    if (pki / f"{name}.crt").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    _run("openssl", "req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-keyout", str(pki / f"{name}.key"), "-out", str(pki / f"{name}.crt"), "-days", "3650", "-subj", f"/CN={cn}",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")


def ensure_cert(pki: Path, ident: Identity, ca: str = "ca") -> None:
    crt, key = pki / f"{ident.name}.crt", pki / f"{ident.name}.key"
    if crt.exists() and key.exists():
        return
    subj = (f"/O={ident.org}" if ident.org else "") + f"/CN={ident.cn}"
    ext = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
           f"extendedKeyUsage={ident.usage}"]
    sans = [f"DNS:{d}" for d in ident.dns] + [f"IP:{i}" for i in ident.ips]
    if sans:
        ext.append("subjectAltName=" + ",".join(sans))
    with tempfile.TemporaryDirectory() as tmp:
        csr, extfile = Path(tmp) / "req.csr", Path(tmp) / "ext.cnf"
        extfile.write_text("\n".join(ext) + "\n")
        _run("openssl", "req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-keyout", str(key), "-out", str(csr), "-subj", subj)
        _run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(pki / f"{ca}.crt"), "-CAkey", str(pki / f"{ca}.key"),
             "-CAcreateserial", "-out", str(crt), "-days", "825", "-extfile", str(extfile))
    key.chmod(0o600)


def ensure_service_account_keys(pki: Path) -> None:
    if (pki / "sa.key").exists():
        return
    _run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(pki / "sa.key"))
    _run("openssl", "ec", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    (pki / "sa.key").chmod(0o600)


def identities(node: str, node_ip: str, svc_ip: str, domain: str) -> list[Identity]:
    return [
        Identity("admin", "twotier-admin", "system:masters"),
        Identity("apiserver", "kube-apiserver", usage="serverAuth",
                 dns=["kubernetes", "kubernetes.default", "kubernetes.default.svc",
                      f"kubernetes.default.svc.{domain}", "localhost", node],
                 ips=["127.0.0.1", svc_ip, node_ip]),
        Identity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"),
        Identity("controller-manager", "system:kube-controller-manager"),
        Identity("scheduler", "system:kube-scheduler"),
        Identity("kubelet", f"system:node:{node}", "system:nodes"),
        Identity("kubelet-serving", node, usage="serverAuth", dns=[node, "localhost"], ips=["127.0.0.1", node_ip]),
        Identity("kube-proxy", "system:kube-proxy"),
    ]


def node_identities(node: str, node_ip: str) -> list[Identity]:
    """The kubelet's client and serving identity of another node (the Node authorizer needs one per node)."""
    return [
        Identity(f"kubelet-{node}", f"system:node:{node}", "system:nodes"),
        Identity(f"kubelet-serving-{node}", node, usage="serverAuth", dns=[node, "localhost"], ips=["127.0.0.1", node_ip]),
    ]


def ensure_node(pki: Path, node: str, node_ip: str) -> None:
    for ident in node_identities(node, node_ip):
        ensure_cert(pki, ident)


def ensure_all(pki: Path, node: str, node_ip: str, svc_ip: str, domain: str) -> None:
    ensure_ca(pki)
    ensure_service_account_keys(pki)
    for ident in identities(node, node_ip, svc_ip, domain):
        ensure_cert(pki, ident)
    ensure_front_proxy(pki)


def ensure_front_proxy(pki: Path) -> None:
    """The API aggregation layer (metrics-server): the API server proxies requests to an extension
    API server with this client certificate, signed by a CA of its own (as kubeadm does), which the
    extension server trusts for the X-Remote-User/Group headers (--requestheader-client-ca-file)."""
    ensure_ca(pki, "front-proxy-ca", "twotier-front-proxy-ca")
    ensure_cert(pki, Identity("front-proxy-client", FRONT_PROXY_CLIENT), ca="front-proxy-ca")
