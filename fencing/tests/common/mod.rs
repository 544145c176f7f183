//! Helpers shared by the integration tests: temporary directories, condition waits with
//! deadlines, prerequisites checks and small HTTP servers.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use referee_fencing::{FenceTarget, Fencer, FencingToken};

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rfence-{}-{}-{label}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes an executable script.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path(name);
        std::fs::write(&path, body).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `condition` until it holds or `within` passes.
pub async fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

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

/// Prints a loud skip line when a prerequisite is missing; true when the test may run.
pub fn require(test: &str, needs_root: bool, programs: &[&str], why: &str) -> bool {
    let missing: Vec<&str> = programs.iter().copied().filter(|p| find_program(p).is_none()).collect();
    if (needs_root && !is_root()) || !missing.is_empty() {
        // Written to the stderr handle directly: the test harness captures `eprintln!` of
        // passing tests, and a skip must be visible in CI logs.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {test} needs {why} (CI installs them); root: {}, missing programs: {missing:?}",
            is_root()
        );
        // CI installs every prerequisite and runs as root: there a skip is a failure.
        if std::env::var_os("REFEREE_REQUIRE_ALL_TESTS").is_some() {
            panic!("{test} would be skipped, but REFEREE_REQUIRE_ALL_TESTS is set: it needs {why}");
        }
        return false;
    }
    true
}

/// A loopback port nothing listens on (bound then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
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
    _dir: TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
        let dir = TempDir::new("pki");
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
