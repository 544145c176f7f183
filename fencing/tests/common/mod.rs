//! What the fencing crate's integration tests share beyond `referee-testkit`: fencer and target
//! builders, process and prerequisite checks, and small HTTP and TLS servers.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use referee_fencing::{FenceTarget, Fencer, FencingToken};
use referee_testkit::{free_port, skip, ScratchDir};

/// Whether a process with this pid is running (exited zombies count as gone).
pub fn alive(pid: u32) -> bool {
    matches!(referee_fencing::procfs::read_stat(pid), Ok(Some(s)) if !s.is_exited())
}

pub fn fencer(yaml: &str) -> Fencer {
    Fencer::from_yaml_str(yaml).unwrap_or_else(|e| panic!("config refused: {e}\n{yaml}"))
}

pub fn target(node_id: &str, host: &str, port: u16) -> FenceTarget {
    FenceTarget::new(node_id, host, port, FencingToken(7))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Finds a program in the usual system directories.
pub fn find_program(name: &str) -> Option<PathBuf> {
    if name.starts_with('/') {
        return Path::new(name).exists().then(|| PathBuf::from(name));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists());
    found
}

/// Whether the test may run: true when it runs as root (if `needs_root`) and finds every one of
/// `programs`; otherwise it is [`skip`]ped (a failure under `CI` or `REFEREE_REQUIRE_ALL_TESTS`).
pub fn require(test: &str, needs_root: bool, programs: &[&str], why: &str) -> bool {
    let missing: Vec<&str> = programs.iter().copied().filter(|p| find_program(p).is_none()).collect();
    if (needs_root && !is_root()) || !missing.is_empty() {
        skip(test, &format!("needs {why} (CI installs them); root: {}, missing programs: {missing:?}", is_root()));
        return false;
    }
    true
}

/// A loopback port nothing listens on: one the kit hands out, which nobody then binds.
pub fn closed_port() -> u16 {
    free_port().expect("a free loopback port")
}

/// Serves `router` on a loopback port until the test ends.
pub async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    addr
}

/// A handler body that never answers.
pub fn never() -> impl Future<Output = ()> {
    std::future::pending()
}

/// A test CA with a server certificate (for 127.0.0.1) and a client certificate it signed,
/// written as PEM files into a temporary directory.
pub struct Pki {
    pub ca_file: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A key that belongs to none of the certificates.
    pub stray_key: PathBuf,
    _dir: ScratchDir,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
        let dir = ScratchDir::new("pki").unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "referee fencing test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf = |sans: Vec<String>, usage: ExtendedKeyUsagePurpose, name: &str| -> (PathBuf, PathBuf) {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            let (cert_path, key_path) = (dir.path(&format!("{name}.pem")), dir.path(&format!("{name}.key")));
            std::fs::write(&cert_path, cert.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            (cert_path, key_path)
        };
        let (server_cert, server_key) =
            leaf(vec!["127.0.0.1".into(), "localhost".into()], ExtendedKeyUsagePurpose::ServerAuth, "server");
        let (client_cert, client_key) = leaf(vec!["fencer".into()], ExtendedKeyUsagePurpose::ClientAuth, "client");
        let ca_file = dir.path("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let stray_key = dir.path("stray.key");
        std::fs::write(&stray_key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
        Pki { ca_file, server_cert, server_key, client_cert, client_key, stray_key, _dir: dir }
    }

    /// A rustls server configuration with the server certificate that, when
    /// `require_client_cert`, refuses every client without a certificate this CA signed.
    pub fn server_config(&self, require_client_cert: bool) -> std::sync::Arc<tokio_rustls::rustls::ServerConfig> {
        use std::sync::Arc;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use tokio_rustls::rustls::{self, server::WebPkiClientVerifier, RootCertStore, ServerConfig};
        let certs = |p: &Path| CertificateDer::pem_file_iter(p).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder =
            ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
        let builder = if require_client_cert {
            let mut roots = RootCertStore::empty();
            for cert in certs(&self.ca_file) {
                roots.add(cert).unwrap();
            }
            builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap(),
            )
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::from_pem_file(&self.server_key).unwrap();
        Arc::new(builder.with_single_cert(certs(&self.server_cert), key).unwrap())
    }
}

/// Serves `router` over TLS on a loopback port until the test ends. A refused handshake (no
/// client certificate, a CA the client does not trust) ends that connection and nothing else.
pub async fn serve_tls(router: axum::Router, tls: std::sync::Arc<tokio_rustls::rustls::ServerConfig>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, router) = (acceptor.clone(), router.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let service = hyper_util::service::TowerToHyperService::new(router);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
