//! The fencing configuration: YAML in, validated at load, never silently adjusted.
//!
//! Every duration is integer milliseconds in a field ending in `_ms`. Unknown fields are
//! refused. [`FencingConfig::from_yaml_str`] parses and validates; a configuration without a
//! single method is an error, because an agent that cannot fence must not start.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use thiserror::Error;

use crate::outcome::MethodKind;

/// The longest `overall_timeout_ms` accepted: an hour.
pub const MAX_OVERALL_TIMEOUT_MS: u64 = 3_600_000;

/// The whole fencing section: ordered levels, an overall deadline and optional race delays.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FencingConfig {
    /// Upper bound on one whole fence, delay included. When it runs out the fence ends
    /// indeterminate, whatever level was running.
    pub overall_timeout_ms: u64,
    /// Wait this long before the first level when fencing any node (Pacemaker's
    /// `pcmk_delay_base`): in a two-node race, the side with the shorter delay wins.
    #[serde(default)]
    pub delay_ms: u64,
    /// Per-target delay overriding `delay_ms`, keyed by the node id being fenced.
    #[serde(default)]
    pub node_delay_ms: BTreeMap<String, u64>,
    /// Levels tried in order until one fences the target.
    pub levels: Vec<LevelConfig>,
    /// How often the failover agent checks, without fencing, that every method could fence
    /// every configured peer ([`crate::Fencer::check`]), as Pacemaker monitors its STONITH
    /// devices: a problem is logged when it appears and shown in `/status` and `/metrics`
    /// until it is gone. 0 turns the checks off.
    #[serde(default = "default_check_interval_ms")]
    pub check_interval_ms: u64,
}

fn default_check_interval_ms() -> u64 {
    60_000
}

/// One fencing level: methods that must **all** fence for the level to fence.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelConfig {
    /// The methods, run one after the other in this order.
    #[serde(deserialize_with = "methods_with_context")]
    pub methods: Vec<MethodConfig>,
}

/// Deserialises a level's methods one by one, so that an error names the method's index and
/// kind (serde's internally tagged enums otherwise lose both from the error path).
fn methods_with_context<'de, D>(deserializer: D) -> Result<Vec<MethodConfig>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    let raw: Vec<serde_yaml::Value> = Vec::deserialize(deserializer)?;
    raw.into_iter()
        .enumerate()
        .map(|(index, value)| {
            let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("no kind").to_string();
            serde_yaml::from_value::<MethodConfig>(value)
                .map_err(|e| D::Error::custom(format!("method {index} ({kind}): {e}")))
        })
        .collect()
}

/// One fencing method with its arguments, selected by the `kind` field.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MethodConfig {
    /// `kind: graceful`: ask the master to step down over its HA endpoint.
    Graceful(GracefulConfig),
    /// `kind: agent`: ask the target's failover agent to fence its master locally.
    Agent(AgentConfig),
    /// `kind: kill`: signal the master process on this host until it is gone.
    Kill(KillConfig),
    /// `kind: ssh`: run a kill-and-verify command on the target over `ssh`.
    Ssh(SshConfig),
    /// `kind: shell`: run a program with the target's facts in its environment.
    Shell(ShellConfig),
    /// `kind: http`: ask a STONITH/PDU/cloud API to power the target off.
    Http(HttpConfig),
    /// `kind: isolate`: firewall the master's port on its host.
    Isolate(IsolateConfig),
    /// `kind: token`: raise the token floor of a token-enforcing resource.
    Token(TokenConfig),
    /// `kind: fence_agent`: power the target off with a fence agent of the Pacemaker and
    /// Red Hat cluster suites (`fence_ipmilan`, `fence_virsh`, `fence_aws`, ...).
    #[serde(rename = "fence_agent")]
    FenceAgent(FenceAgentConfig),
    /// `kind: watchdog`: wait until the old active's own watchdog has reset its host (SBD's
    /// watchdog-only self-fencing), for hosts without a fence device.
    Watchdog(WatchdogConfig),
}

impl MethodConfig {
    /// The method's kind.
    pub fn kind(&self) -> MethodKind {
        match self {
            MethodConfig::Graceful(_) => MethodKind::Graceful,
            MethodConfig::Agent(_) => MethodKind::Agent,
            MethodConfig::Kill(_) => MethodKind::Kill,
            MethodConfig::Ssh(_) => MethodKind::Ssh,
            MethodConfig::Shell(_) => MethodKind::Shell,
            MethodConfig::Http(_) => MethodKind::Http,
            MethodConfig::Isolate(_) => MethodKind::Isolate,
            MethodConfig::Token(_) => MethodKind::Token,
            MethodConfig::FenceAgent(_) => MethodKind::FenceAgent,
            MethodConfig::Watchdog(_) => MethodKind::Watchdog,
        }
    }

    /// The configured name, or the kind when none was given.
    pub fn name(&self) -> String {
        let name = match self {
            MethodConfig::Graceful(c) => &c.name,
            MethodConfig::Agent(c) => &c.name,
            MethodConfig::Kill(c) => &c.name,
            MethodConfig::Ssh(c) => &c.name,
            MethodConfig::Shell(c) => &c.name,
            MethodConfig::Http(c) => &c.name,
            MethodConfig::Isolate(c) => &c.name,
            MethodConfig::Token(c) => &c.name,
            MethodConfig::FenceAgent(c) => &c.name,
            MethodConfig::Watchdog(c) => &c.name,
        };
        name.clone().unwrap_or_else(|| self.kind().as_str().to_string())
    }

    /// The method's own deadline.
    pub fn timeout_ms(&self) -> u64 {
        match self {
            MethodConfig::Graceful(c) => c.timeout_ms,
            MethodConfig::Agent(c) => c.timeout_ms,
            MethodConfig::Kill(c) => c.timeout_ms,
            MethodConfig::Ssh(c) => c.timeout_ms,
            MethodConfig::Shell(c) => c.timeout_ms,
            MethodConfig::Http(c) => c.timeout_ms,
            MethodConfig::Isolate(c) => c.timeout_ms,
            MethodConfig::Token(c) => c.timeout_ms,
            MethodConfig::FenceAgent(c) => c.timeout_ms,
            MethodConfig::Watchdog(c) => c.timeout_ms,
        }
    }
}

/// Arguments of `kind: graceful`. The HA endpoint comes from the target
/// ([`crate::FenceTarget::ha_url`], else `http://host:port`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GracefulConfig {
    /// Name for events and metrics; defaults to the kind.
    #[serde(default)]
    pub name: Option<String>,
    /// Deadline for the step-down request and its confirmation together.
    pub timeout_ms: u64,
    /// Deadline for the TCP connection to the master alone (default
    /// [`GracefulConfig::DEFAULT_CONNECT_TIMEOUT_MS`], never above `timeout_ms`). A host that is
    /// up answers a connection request within a round trip, and a lost SYN is sent again only
    /// after a second, so a connection not made by then means a host that is down or cut off:
    /// the chain moves on to the next method instead of waiting out the whole `timeout_ms`.
    /// Raise it above twice the round-trip time between the hosts on a wide-area link.
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
}

impl GracefulConfig {
    /// The connection deadline when none is configured: far above a LAN's round trip, far below
    /// the kernel's first SYN retransmission.
    pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 100;

    /// The connection deadline in effect.
    pub fn connect_timeout_ms(&self) -> u64 {
        self.connect_timeout_ms.unwrap_or(Self::DEFAULT_CONNECT_TIMEOUT_MS).min(self.timeout_ms)
    }
}

/// Arguments of `kind: agent`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Name for events and metrics; defaults to the kind.
    #[serde(default)]
    pub name: Option<String>,
    /// Deadline for the peer's answer (the peer's own local fence must fit inside it).
    pub timeout_ms: u64,
    /// Base URL of each node's agent peer API, keyed by node id.
    pub peers: BTreeMap<String, String>,
    /// File holding the bearer secret (surrounding whitespace is trimmed).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Name of the environment variable holding the bearer secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// TLS for the peer calls: the CA that signs the agents' server certificates and the
    /// client certificate their peer listeners require. Every peer URL must then be https.
    /// Without it the fencer's shared client is used (public roots, no client certificate).
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
}

/// Client-side TLS for a method's HTTPS calls (and for the agent's calls to its peers).
///
/// A client built from it speaks HTTPS only, so a bearer secret cannot go out in clear text
/// to a URL that was meant to be protected.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM CA certificates that sign the servers' certificates. When set, these are the
    /// **only** roots trusted: a certificate from a public CA is refused, so a private CA
    /// cannot be bypassed by buying a certificate for the same name.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain (leaf first) presented to servers that require client
    /// certificates. Needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1). Needs `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// Why client TLS settings or their files were refused.
#[derive(Debug, Error)]
#[error("`{field}`: {problem}")]
pub struct ClientTlsError {
    /// The key within the TLS section: `ca_file`, `cert_file` or `key_file`.
    pub field: &'static str,
    /// What is wrong and what to do.
    pub problem: String,
}

fn tls_error(field: &'static str, problem: impl Into<String>) -> ClientTlsError {
    ClientTlsError { field, problem: problem.into() }
}

impl ClientTlsConfig {
    /// Checks which keys are set, without reading any file.
    pub fn validate(&self) -> Result<(), ClientTlsError> {
        match (&self.ca_file, &self.cert_file, &self.key_file) {
            (None, None, None) => Err(tls_error(
                "ca_file",
                "is missing and so is `cert_file`: give `ca_file`, or `cert_file` with `key_file`, or remove the \
                 TLS section",
            )),
            (_, Some(_), None) => Err(tls_error("key_file", "is missing; `cert_file` needs its private key")),
            (_, None, Some(_)) => Err(tls_error("cert_file", "is missing; `key_file` needs its certificate")),
            _ => Ok(()),
        }
    }

    /// Reads the files and builds the client from `builder` (which carries the caller's
    /// timeouts and redirect policy). Each error names the file and the key to fix.
    pub fn build_client(&self, builder: reqwest::ClientBuilder) -> Result<reqwest::Client, ClientTlsError> {
        self.validate()?;
        let mut builder = builder.https_only(true);
        if let Some(ca) = &self.ca_file {
            let certs = certificates("ca_file", ca, &read_file("ca_file", ca)?)?;
            // Only the configured CA: the built-in public roots would accept any certificate
            // a public CA issued for the peer's name.
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            let mut pem = read_file("cert_file", cert)?;
            certificates("cert_file", cert, &pem)?;
            // With rustls, reqwest takes the identity as one PEM holding the chain and the key.
            pem.push(b'\n');
            pem.extend(read_file("key_file", key)?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                tls_error(
                    "key_file",
                    format!(
                        "`{}` holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {}",
                        key.display(),
                        crate::methods::error_chain(&e)
                    ),
                )
            })?;
            builder = builder.identity(identity);
        }
        builder.build().map_err(|e| {
            let files: Vec<String> = [&self.ca_file, &self.cert_file, &self.key_file]
                .into_iter()
                .flatten()
                .map(|p| format!("`{}`", p.display()))
                .collect();
            // With an identity the likeliest cause by far is a key that is not the certificate's.
            let (field, hint) = match &self.key_file {
                Some(_) => ("key_file", "; does the key belong to the certificate?"),
                None => ("ca_file", ""),
            };
            tls_error(
                field,
                format!(
                    "cannot build a TLS client from {}: {}{hint}",
                    files.join(", "),
                    crate::methods::error_chain(&e)
                ),
            )
        })
    }
}

fn read_file(field: &'static str, path: &std::path::Path) -> Result<Vec<u8>, ClientTlsError> {
    std::fs::read(path).map_err(|e| tls_error(field, format!("cannot read `{}`: {e}", path.display())))
}

/// The certificates in `pem`, read from `path`; none at all is an error.
fn certificates(
    field: &'static str,
    path: &std::path::Path,
    pem: &[u8],
) -> Result<Vec<reqwest::Certificate>, ClientTlsError> {
    let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
        tls_error(field, format!("`{}` is not valid PEM: {}", path.display(), crate::methods::error_chain(&e)))
    })?;
    if certs.is_empty() {
        return Err(tls_error(field, format!("`{}` holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

/// Arguments of `kind: kill`. Only fences a master running on **this** host, in the agent's own
/// pid and network namespaces: a master in a container of its own cannot be found, nor proved
/// gone, from outside it (see the `kill` method's documentation), and must be fenced by a
/// method that acts inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillConfig {
    /// Name for events and metrics; defaults to the kind.
    #[serde(default)]
    pub name: Option<String>,
    /// Deadline for finding, signalling and verifying the process gone.
    pub timeout_ms: u64,
    /// Time between SIGTERM and SIGKILL; shorter than `timeout_ms`. When the time left of a
    /// fence's budget after the grace is under [`KillConfig::SIGKILL_RESERVE_MS`], the grace is
    /// cut short to keep that reserve for SIGKILL, or skipped.
    pub grace_ms: u64,
    /// Also find the master by the processes holding TCP sockets on the target's port, its
    /// listener and the sessions accepted there (default true); fenced then needs none left.
    #[serde(default = "default_true")]
    pub find_by_port: bool,
    /// Extra names or addresses by which targets may name this host, beyond `localhost`, the
    /// addresses of its interfaces and its host name (short or fully qualified). A target on
    /// another host is refused.
    #[serde(default)]
    pub local_hosts: Vec<String>,
}

impl KillConfig {
    /// The time kept before the deadline for SIGKILL to end the master and for its exit to be
    /// seen. SIGKILL acts when the process next runs, and a large address space takes up to
    /// hundreds of milliseconds to tear down before the exit shows: a SIGKILL sent at the
    /// deadline could never be confirmed.
    pub const SIGKILL_RESERVE_MS: u64 = 500;
}

/// How `ssh` treats the target's host key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyChecking {
    /// `StrictHostKeyChecking=yes`: the key must already be known (the default).
    #[default]
    Yes,
    /// `StrictHostKeyChecking=accept-new`: trust on first use.
    AcceptNew,
    /// `StrictHostKeyChecking=no`: accept any key. For tests only.
    No,
}

/// Arguments of `kind: ssh`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// Name for events and metrics; defaults to the kind.
    #[serde(default)]
    pub name: Option<String>,
    /// Deadline for the whole ssh run, connection included.
    pub timeout_ms: u64,
    /// ssh `ConnectTimeout` (rounded up to whole seconds, as ssh takes seconds).
    pub connect_timeout_ms: u64,
    /// Remote user.
    pub user: String,
    /// Private key file.
    pub identity_file: PathBuf,
    /// The remote command, argv style. It must kill the master **and verify on the target**
    /// that it is gone, exiting 0 only then. Each word is quoted for the remote shell; the
    /// only substitutions are the numeric placeholders `{port}`, `{pid}`, `{fence_token}` and
    /// `{target_token}`.
    pub command: Vec<String>,
    /// Remote sshd port (default 22).
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    /// Host key policy (default `yes`).
    #[serde(default)]
    pub host_key_checking: HostKeyChecking,
    /// Known-hosts file to use instead of the user's.
    #[serde(default)]
    pub known_hosts_file: Option<PathBuf>,
    /// The ssh client (default `ssh` from `PATH`).
    #[serde(default = "default_ssh_program")]
    pub ssh_program: PathBuf,
}

/// Arguments of `kind: shell`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellConfig {
    /// Name for events and metrics; defaults to the kind.
    #[serde(default)]
    pub name: Option<String>,
    /// Deadline; on expiry the program's whole process group is killed.
    pub timeout_ms: u64,
    /// Absolute path of the program. It is executed directly, never through a shell.
    pub program: PathBuf,
    /// Arguments, passed verbatim.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables. The target's facts are added as `TARGET_*` and
    /// `FENCE_TOKEN` and cannot be overridden here.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Arguments of `kind: fence_agent`: a program that speaks the fence agents' standard
/// interface (options as `name=value` lines on standard input, `action=off` to power off,
/// `action=status` answering with exit 0 for on and 2 for off).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FenceAgentConfig {
    /// Name for events and metrics; defaults to the kind.
    #[serde(default)]
    pub name: Option<String>,
    /// Deadline for the power-off and its confirmation; on expiry the agent's whole process
    /// group is killed.
    pub timeout_ms: u64,
    /// Absolute path of the fence agent (`/usr/sbin/fence_ipmilan`).
    pub agent: PathBuf,
    /// `off` (the default: the node stays down until an operator brings it back) or `reboot`.
    #[serde(default)]
    pub action: FenceAgentAction,
    /// Options for every target, without the leading dashes (`ip`, `username`, `lanplus`,
    /// `plug`, ...). `{node_id}` and `{host}` in a value are replaced by the target's.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Options for one node, by node id, over `options` (each node's BMC address, say).
    #[serde(default)]
    pub nodes: BTreeMap<String, BTreeMap<String, String>>,
    /// After `off` exited 0, ask `action=status` and count the target fenced only if it
    /// answers off (exit 2). Default true; a reboot is never checked this way (the node is
    /// expected back on).
    #[serde(default = "default_true")]
    pub verify: bool,
    /// File holding the device's password, sent as `password=` on standard input (never in
    /// the arguments or the environment, where other users of the host can read it).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Environment variable holding the password instead.
    #[serde(default)]
    pub secret_env: Option<String>,
}

/// What a fence agent is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FenceAgentAction {
    /// Power off and stay off.
    #[default]
    Off,
    /// Power off and on again.
    Reboot,
}

impl FenceAgentAction {
    /// The action's name on the agent's standard input.
    pub fn as_str(self) -> &'static str {
        match self {
            FenceAgentAction::Off => "off",
            FenceAgentAction::Reboot => "reboot",
        }
    }
}

/// Arguments of `kind: http`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Name for events and metrics; defaults to the kind.
    #[serde(default)]
    pub name: Option<String>,
    /// Deadline for the request and any status polling.
    pub timeout_ms: u64,
    /// HTTP method (default `POST`).
    #[serde(default = "default_http_method")]
    pub method: String,
    /// Request URL; `{node_id}` is replaced by the percent-encoded target node id.
    pub url: String,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body, sent verbatim with `Content-Type: application/json` unless a
    /// `Content-Type` header is configured.
    #[serde(default)]
    pub body: Option<String>,
    /// File holding the API secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Environment variable holding the API secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Header carrying the secret (default `Authorization`).
    #[serde(default = "default_secret_header")]
    pub secret_header: String,
    /// Prefix of the secret in that header (default `"Bearer "`).
    #[serde(default = "default_secret_prefix")]
    pub secret_prefix: String,
    /// How to confirm power-off: read after a 202 Accepted (at `url`, else at the answer's
    /// `Location`) and, with a `url`, after any other 2xx, until it reports off. Without it a
    /// 202 ends indeterminate (an accepted request is not yet an off target), and so does any
    /// other 2xx unless `trust_2xx` is set.
    #[serde(default)]
    pub status: Option<HttpStatusConfig>,
    /// Count a 2xx answer other than 202 as the target off, with nothing read to confirm it
    /// (default false). Set it only for an API whose 2xx means "done, it is off": many answer
    /// 200 for "accepted, not done yet" (a task id, an operation still pending) or with a
    /// failure in the body (`{"success": false}`), and taking those at their word promotes a
    /// standby while the old host still serves. Left false, a 2xx without `status.url` ends
    /// indeterminate, and the checks report a method that nothing could confirm as a problem.
    /// Not allowed with `status.url`, which confirms every 2xx.
    #[serde(default)]
    pub trust_2xx: bool,
    /// TLS for an API behind a private CA or requiring a client certificate; `url` (and
    /// `status.url`) must then be https. Without it the fencer's shared client is used.
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
}

/// Status polling for `kind: http`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStatusConfig {
    /// Status URL (`{node_id}` substituted); defaults to the 202's `Location` header.
    #[serde(default)]
    pub url: Option<String>,
    /// Time between polls.
    pub interval_ms: u64,
    /// JSON pointer (RFC 6901) to the power state in the status body, e.g. `/power`.
    pub pointer: String,
    /// The value at `pointer` that means "off".
    pub off_value: String,
}

/// Firewall used by `kind: isolate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirewallBackend {
    /// `iptables` for IPv4 and `ip6tables` for IPv6, of one flavour (legacy or nf_tables).
    Iptables,
}

/// The address families whose traffic `kind: isolate` drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IsolateFamily {
    /// IPv4 with `program` and IPv6 with `program6` (the default). A master bound to `[::]`
    /// (PostgreSQL with `listen_addresses='*'`, Go and Java by default) serves both, and
    /// clients that resolve a host name with an AAAA record prefer IPv6. Left unset, a host
    /// where `program6` cannot initialise its table (no IPv6 in the kernel, or no IPv6 table
    /// module to load) or is not installed gets the IPv4 rules with the `ss -6` check of
    /// `ipv4`; set explicitly, IPv6 rules are required.
    #[default]
    Both,
    /// IPv4 only, for a host whose kernel has IPv6 turned off, where `ip6tables` cannot work.
    /// A fence then fails when the target host is an IPv6 address, or when `ss` on the host
    /// shows a TCP socket over IPv6 on the port: rules for IPv4 alone would not cut it off.
    Ipv4,
}

/// Where `kind: isolate` runs its firewall commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// On this host (the master runs here, or `command_prefix` reaches it).
    Local,
    /// On the target host over `ssh` (see the `ssh` field).
    Ssh,
}

/// ssh login settings for `kind: isolate` with `via: ssh`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshLoginConfig {
    /// Remote user.
    pub user: String,
    /// Private key file.
    pub identity_file: PathBuf,
    /// ssh `ConnectTimeout`.
    pub connect_timeout_ms: u64,
    /// Remote sshd port (default 22).
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    /// Host key policy (default `yes`).
    #[serde(default)]
    pub host_key_checking: HostKeyChecking,
    /// Known-hosts file to use instead of the user's.
    #[serde(default)]
    pub known_hosts_file: Option<PathBuf>,
    /// The ssh client (default `ssh` from `PATH`).
    #[serde(default = "default_ssh_program")]
    pub ssh_program: PathBuf,
}

/// Arguments of `kind: isolate`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolateConfig {
    /// Name for events and metrics; defaults to the kind.
    #[serde(default)]
    pub name: Option<String>,
    /// Deadline for inserting and verifying (or removing and verifying) the rules.
    pub timeout_ms: u64,
    /// Firewall backend.
    pub backend: FirewallBackend,
    /// Where to run the firewall commands.
    pub via: Via,
    /// Login settings, required with `via: ssh`.
    #[serde(default)]
    pub ssh: Option<SshLoginConfig>,
    /// argv prepended to every firewall command, e.g. `["sudo", "-n"]` or
    /// `["ip", "netns", "exec", "ns1"]`.
    #[serde(default)]
    pub command_prefix: Vec<String>,
    /// The IPv4 firewall program (default `iptables`).
    #[serde(default = "default_iptables_program")]
    pub program: String,
    /// The IPv6 firewall program (default: `program` with the `iptables` its file name starts
    /// with read as `ip6tables`, so `iptables-legacy` gives `ip6tables-legacy`: the rules of
    /// both families go to one flavour of the backend).
    #[serde(default)]
    pub program6: Option<String>,
    /// The address families dropped (default `both`, see [`IsolateConfig::family`]). Left
    /// unset, IPv6 is dropped where the host has it: where `ip6tables` cannot initialise its
    /// table (a kernel with IPv6 off, or one that cannot load the IPv6 table module) or
    /// there is no IPv6 program (none installed, or a `program` with no `iptables` flavour to
    /// derive it from), the IPv4 rules go in and the `ss -6` check of `family: ipv4` applies.
    /// Set to `both`, the IPv6 rules are required.
    #[serde(default)]
    pub family: Option<IsolateFamily>,
    /// Also drop forwarded traffic, for masters behind NAT or in containers on the host
    /// (default true): both directions of every connection first addressed to the port
    /// (`-m conntrack --ctorigdstport`), so a master published through DNAT on another port
    /// (Docker's `-p 8080:80`, with the target's port 8080) is cut off too. The host's
    /// firewall needs the `conntrack` match (`xt_conntrack`); without it the fence fails.
    #[serde(default = "default_true")]
    pub forward: bool,
    /// With `via: local`, extra names or addresses by which targets may name this host, beyond
    /// `localhost`, the addresses of its interfaces and its host name (short or fully
    /// qualified), and the addresses of its containers (a master behind NAT or in a container
    /// on this host, cut off by the FORWARD rules of `forward`). A target on another host is
    /// refused (rules here would cut off nothing of it), unless `command_prefix` enters another
    /// network namespace (`ip netns exec NAME`, `nsenter`), which the target then names.
    #[serde(default)]
    pub local_hosts: Vec<String>,
}

impl IsolateConfig {
    /// The address families in effect (`both` unless set).
    pub fn family(&self) -> IsolateFamily {
        self.family.unwrap_or_default()
    }

    /// Whether `family` is set, rather than left at its default: an explicit `both` requires
    /// the IPv6 rules where the default goes on without them on a host without IPv6.
    pub fn family_explicit(&self) -> bool {
        self.family.is_some()
    }

    /// The IPv6 firewall program in effect (see `program6`); `None` when none is configured
    /// and `program` does not name an `iptables` to derive it from.
    pub fn program6(&self) -> Option<String> {
        if let Some(program) = &self.program6 {
            return Some(program.clone());
        }
        let (dir, file) = match self.program.rfind('/') {
            Some(slash) => self.program.split_at(slash + 1),
            None => ("", self.program.as_str()),
        };
        file.strip_prefix("iptables").map(|flavour| format!("{dir}ip6tables{flavour}"))
    }
}

/// Arguments of `kind: token`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Name for events and metrics; defaults to the kind.
    #[serde(default)]
    pub name: Option<String>,
    /// Deadline for the resource's confirmation.
    pub timeout_ms: u64,
    /// URL receiving a [`crate::TokenFloorRequest`] by `POST`.
    pub url: String,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// File holding a bearer secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Environment variable holding a bearer secret.
    #[serde(default)]
    pub secret_env: Option<String>,
}

/// Arguments of `kind: watchdog`.
///
/// The old active promises, in its breadcrumb ([`crate::FenceTarget::self_fence_ms`]), that its
/// host resets itself within a time once its lock is gone while its master may be active. This
/// method waits `wait_percent` of that time and then counts the target fenced: by then its
/// agent has demoted the master, or its watchdog has reset the host. It fails at once when the
/// target made no promise, or when the wait does not fit in `timeout_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    /// Name for events and metrics; defaults to the kind.
    #[serde(default)]
    pub name: Option<String>,
    /// Deadline for the method: it must cover the wait, `wait_percent` of the longest promise
    /// a node of the cluster makes.
    pub timeout_ms: u64,
    /// How much of the target's promised time to wait, in percent (default
    /// [`WatchdogConfig::DEFAULT_WAIT_PERCENT`]; at least [`WatchdogConfig::MIN_WAIT_PERCENT`]):
    /// room for the two hosts' clocks running at different rates and for a watchdog that fires
    /// late.
    #[serde(default = "default_wait_percent")]
    pub wait_percent: u32,
}

impl WatchdogConfig {
    /// Twice the promise, as Pacemaker sets `stonith-watchdog-timeout` by default from SBD's
    /// watchdog timeout.
    pub const DEFAULT_WAIT_PERCENT: u32 = 200;
    /// The least margin over the promise accepted.
    pub const MIN_WAIT_PERCENT: u32 = 120;
    /// The most accepted (ten times the promise is a typing error, not a margin).
    pub const MAX_WAIT_PERCENT: u32 = 1000;
}

fn default_wait_percent() -> u32 {
    WatchdogConfig::DEFAULT_WAIT_PERCENT
}

fn default_true() -> bool {
    true
}
fn default_ssh_port() -> u16 {
    22
}
fn default_ssh_program() -> PathBuf {
    PathBuf::from("ssh")
}
fn default_http_method() -> String {
    "POST".to_string()
}
fn default_secret_header() -> String {
    "Authorization".to_string()
}
fn default_secret_prefix() -> String {
    "Bearer ".to_string()
}
fn default_iptables_program() -> String {
    "iptables".to_string()
}

/// Why a fencing configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The document is empty: the agent must not run without a fencing method.
    #[error("fencing configuration is empty: configure at least one level with one method (an agent that cannot fence must not start)")]
    Empty,
    /// The YAML does not match the schema (unknown field, missing field, wrong type); the
    /// message names the path, e.g. `levels[1].methods[0]: missing field `command``.
    #[error("fencing configuration: {0}")]
    Parse(#[from] serde_yaml::Error),
    /// A top-level field is wrong.
    #[error("fencing configuration: field `{field}`: {problem}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong and what to change.
        problem: String,
    },
    /// A level is wrong as a whole (e.g. has no methods).
    #[error("fencing level {level}: {problem}")]
    Level {
        /// Index of the level (0-based).
        level: usize,
        /// What is wrong and what to change.
        problem: String,
    },
    /// A method's argument is missing or wrong.
    #[error("fencing level {level}, method {index} ({kind}): field `{field}`: {problem}")]
    Method {
        /// Index of the level (0-based).
        level: usize,
        /// Index of the method within its level (0-based).
        index: usize,
        /// The method's kind.
        kind: MethodKind,
        /// The offending field.
        field: &'static str,
        /// What is wrong and what to change.
        problem: String,
    },
}

impl FencingConfig {
    /// Parses and validates a YAML fencing section.
    pub fn from_yaml_str(yaml: &str) -> Result<Self, ConfigError> {
        // serde_yaml reports an empty document as an obscure EOF error; say what it means.
        let meaningful = yaml
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .any(|l| !l.is_empty() && l != "---" && l != "~" && l != "null");
        if !meaningful {
            return Err(ConfigError::Empty);
        }
        let config: FencingConfig = serde_yaml::from_str(yaml)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every level and method argument and every timing rule.
    ///
    /// Every method's `timeout_ms` is bounded by `overall_timeout_ms`, which is bounded by
    /// [`MAX_OVERALL_TIMEOUT_MS`], so a deadline computed from them never overflows a clock.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.overall_timeout_ms == 0 {
            return Err(ConfigError::Field { field: "overall_timeout_ms", problem: "must be greater than 0".into() });
        }
        if self.overall_timeout_ms > MAX_OVERALL_TIMEOUT_MS {
            return Err(ConfigError::Field {
                field: "overall_timeout_ms",
                problem: format!(
                    "is {} ms, over an hour ({MAX_OVERALL_TIMEOUT_MS} ms): a failover would wait that long on one \
                     fence; give seconds",
                    self.overall_timeout_ms
                ),
            });
        }
        if self.levels.is_empty() {
            return Err(ConfigError::Empty);
        }
        if self.check_interval_ms != 0 && self.check_interval_ms < 1000 {
            return Err(ConfigError::Field {
                field: "check_interval_ms",
                problem: format!(
                    "{} ms would ask the fence devices more than once a second; use 1000 or more, or 0 to turn the \
                     checks off",
                    self.check_interval_ms
                ),
            });
        }
        if self.delay_ms >= self.overall_timeout_ms {
            return Err(ConfigError::Field {
                field: "delay_ms",
                problem: format!(
                    "{} ms leaves no time to fence within overall_timeout_ms {}; lower it",
                    self.delay_ms, self.overall_timeout_ms
                ),
            });
        }
        for (node, delay) in &self.node_delay_ms {
            if *delay >= self.overall_timeout_ms {
                return Err(ConfigError::Field {
                    field: "node_delay_ms",
                    problem: format!(
                        "delay {delay} ms for node `{node}` leaves no time to fence within overall_timeout_ms {}",
                        self.overall_timeout_ms
                    ),
                });
            }
        }
        for (level, level_config) in self.levels.iter().enumerate() {
            if level_config.methods.is_empty() {
                return Err(ConfigError::Level {
                    level,
                    problem: "has no methods; remove it or add at least one".into(),
                });
            }
            for (index, method) in level_config.methods.iter().enumerate() {
                let check = Checker { level, index, kind: method.kind() };
                check.method(method, self.overall_timeout_ms)?;
            }
        }
        Ok(())
    }

    /// The delay to wait before fencing `node_id`.
    pub fn delay_for(&self, node_id: &str) -> u64 {
        self.node_delay_ms.get(node_id).copied().unwrap_or(self.delay_ms)
    }
}

/// Builds [`ConfigError::Method`] errors for one method.
struct Checker {
    level: usize,
    index: usize,
    kind: MethodKind,
}

impl Checker {
    fn err(&self, field: &'static str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Method { level: self.level, index: self.index, kind: self.kind, field, problem: problem.into() }
    }

    fn ensure(&self, ok: bool, field: &'static str, problem: impl FnOnce() -> String) -> Result<(), ConfigError> {
        if ok {
            Ok(())
        } else {
            Err(self.err(field, problem()))
        }
    }

    fn method(&self, method: &MethodConfig, overall_ms: u64) -> Result<(), ConfigError> {
        let timeout = method.timeout_ms();
        self.ensure(timeout > 0, "timeout_ms", || "must be greater than 0".into())?;
        self.ensure(timeout <= overall_ms, "timeout_ms", || {
            format!("{timeout} ms exceeds overall_timeout_ms {overall_ms}; lower it or raise the overall deadline")
        })?;
        match method {
            MethodConfig::Graceful(c) => self.ensure(c.connect_timeout_ms != Some(0), "connect_timeout_ms", || {
                "must be greater than 0 (leave it out for the default of 100 ms)".into()
            }),
            MethodConfig::Agent(c) => {
                self.ensure(!c.peers.is_empty(), "peers", || {
                    "must map at least one node id to its agent's peer URL".into()
                })?;
                for url in c.peers.values() {
                    self.url("peers", url)?;
                }
                self.secret(&c.secret_file, &c.secret_env, true)?;
                if let Some(tls) = &c.tls {
                    self.client_tls(tls)?;
                    for url in c.peers.values() {
                        self.https("peers", url)?;
                    }
                }
                Ok(())
            }
            // A grace leaving less than the SIGKILL reserve is cut at run time to keep it.
            MethodConfig::Kill(c) => self.ensure(c.grace_ms < c.timeout_ms, "grace_ms", || {
                format!("{} ms must be shorter than timeout_ms {} to leave time for SIGKILL", c.grace_ms, c.timeout_ms)
            }),
            MethodConfig::Ssh(c) => {
                self.ssh_login(&c.user, c.connect_timeout_ms, c.timeout_ms, &c.identity_file)?;
                self.ensure(!c.command.is_empty(), "command", || {
                    "must name the remote kill-and-verify command".into()
                })?;
                for word in &c.command {
                    self.ensure(!word.contains('\0'), "command", || "must not contain NUL bytes".into())?;
                    if let Some(bad) = unknown_placeholder(word) {
                        return Err(self.err(
                            "command",
                            format!("unknown placeholder `{{{bad}}}`; allowed: {{port}}, {{pid}}, {{fence_token}}, {{target_token}}"),
                        ));
                    }
                }
                Ok(())
            }
            MethodConfig::Shell(c) => {
                self.ensure(c.program.is_absolute(), "program", || {
                    format!(
                        "`{}` must be an absolute path (it is executed directly, not looked up through a shell)",
                        c.program.display()
                    )
                })?;
                for key in c.env.keys() {
                    self.ensure(!key.is_empty() && !key.contains('=') && !key.contains('\0'), "env", || {
                        format!("`{key}` is not a valid variable name")
                    })?;
                    self.ensure(!crate::methods::shell::RESERVED_ENV.contains(&key.as_str()), "env", || {
                        format!("`{key}` is set by the fencer from the target and cannot be configured")
                    })?;
                }
                Ok(())
            }
            MethodConfig::Http(c) => {
                self.ensure(
                    matches!(c.method.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE"),
                    "method",
                    || format!("`{}` is not one of GET, POST, PUT, PATCH, DELETE", c.method),
                )?;
                self.url("url", &c.url)?;
                self.headers(&c.headers)?;
                self.secret(&c.secret_file, &c.secret_env, false)?;
                self.ensure(
                    reqwest::header::HeaderName::from_bytes(c.secret_header.as_bytes()).is_ok(),
                    "secret_header",
                    || format!("`{}` is not a valid header name", c.secret_header),
                )?;
                self.ensure(!(c.trust_2xx && c.status.as_ref().is_some_and(|s| s.url.is_some())), "trust_2xx", || {
                    "has no effect with `status.url`, which confirms every 2xx answer: remove one of them".into()
                })?;
                if let Some(status) = &c.status {
                    if let Some(url) = &status.url {
                        self.url("status.url", url)?;
                    }
                    self.ensure(status.interval_ms > 0, "status.interval_ms", || "must be greater than 0".into())?;
                    self.ensure(status.interval_ms < c.timeout_ms, "status.interval_ms", || {
                        format!("{} ms leaves no room to poll within timeout_ms {}", status.interval_ms, c.timeout_ms)
                    })?;
                    self.ensure(
                        status.pointer.is_empty() || status.pointer.starts_with('/'),
                        "status.pointer",
                        || format!("`{}` is not a JSON pointer (it must start with `/`)", status.pointer),
                    )?;
                }
                if let Some(tls) = &c.tls {
                    self.client_tls(tls)?;
                    self.https("url", &c.url)?;
                    if let Some(url) = c.status.as_ref().and_then(|s| s.url.as_ref()) {
                        self.https("status.url", url)?;
                    }
                }
                Ok(())
            }
            MethodConfig::Isolate(c) => {
                match c.via {
                    Via::Local => self.ensure(c.ssh.is_none(), "ssh", || {
                        "is only used with `via: ssh`; remove it or set `via: ssh`".into()
                    })?,
                    Via::Ssh => match &c.ssh {
                        None => return Err(self.err("ssh", "is required with `via: ssh`")),
                        Some(login) => {
                            self.ssh_login(&login.user, login.connect_timeout_ms, c.timeout_ms, &login.identity_file)?
                        }
                    },
                }
                self.ensure(!c.program.is_empty() && !c.program.starts_with('-'), "program", || {
                    "must name the firewall program".into()
                })?;
                let program6 = match c.family {
                    Some(IsolateFamily::Ipv4) => None,
                    // Left at its default: without an IPv6 program, IPv4 and the `ss -6` check.
                    None => c.program6(),
                    Some(IsolateFamily::Both) => Some(c.program6().ok_or_else(|| {
                        self.err(
                            "program6",
                            format!(
                                "`{}` is not an iptables program to derive the IPv6 one from: set program6 (e.g. \
                                 ip6tables), or `family: ipv4` on a host whose kernel has IPv6 turned off",
                                c.program
                            ),
                        )
                    })?),
                };
                if let Some(program6) = &program6 {
                    self.ensure(!program6.is_empty() && !program6.starts_with('-'), "program6", || {
                        "must name the IPv6 firewall program".into()
                    })?;
                }
                if c.via == Via::Ssh {
                    self.ensure(c.local_hosts.is_empty(), "local_hosts", || {
                        "is only used with `via: local`; with `via: ssh` the rules go to the target's host".into()
                    })?;
                    // These words are sent to a remote shell; keep them to plain words.
                    for word in c.command_prefix.iter().chain(std::iter::once(&c.program)).chain(program6.as_ref()) {
                        self.ensure(is_plain_word(word), "command_prefix", || {
                            format!("`{word}` must be a plain word (letters, digits, `/._-`) when sent over ssh")
                        })?;
                    }
                }
                Ok(())
            }
            MethodConfig::Token(c) => {
                self.url("url", &c.url)?;
                self.headers(&c.headers)?;
                self.secret(&c.secret_file, &c.secret_env, false)
            }
            MethodConfig::Watchdog(c) => {
                let range = WatchdogConfig::MIN_WAIT_PERCENT..=WatchdogConfig::MAX_WAIT_PERCENT;
                self.ensure(range.contains(&c.wait_percent), "wait_percent", || {
                    format!(
                        "{} is outside {} to {}: the wait must exceed the target's promise by a margin for clocks \
                         and late watchdogs (default {})",
                        c.wait_percent,
                        range.start(),
                        range.end(),
                        WatchdogConfig::DEFAULT_WAIT_PERCENT
                    )
                })
            }
            MethodConfig::FenceAgent(c) => {
                self.ensure(c.agent.is_absolute(), "agent", || {
                    format!("`{}` must be an absolute path (it is executed directly)", c.agent.display())
                })?;
                self.secret(&c.secret_file, &c.secret_env, false)?;
                let all = c.options.iter().map(|o| ("options", o));
                let per_node = c.nodes.values().flat_map(|options| options.iter().map(|o| ("nodes", o)));
                for (field, (name, value)) in all.chain(per_node) {
                    self.fence_agent_option(field, name, value)?;
                }
                for node in c.nodes.keys() {
                    self.ensure(!node.is_empty(), "nodes", || "a node id must not be empty".into())?;
                }
                Ok(())
            }
        }
    }

    /// A fence agent reads one `name=value` a line: a name must be a plain option name, and
    /// neither may break the line or set what the method sets itself.
    fn fence_agent_option(&self, field: &'static str, name: &str, value: &str) -> Result<(), ConfigError> {
        let plain = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        self.ensure(plain, field, || format!("`{name}` is not an option name (letters, digits, `_` and `-`)"))?;
        let set_here = crate::methods::fence_agent::SET_BY_METHOD;
        self.ensure(!set_here.contains(&name.replace('-', "_").as_str()), field, || {
            format!(
                "`{name}` is set by the method: the action by `action`, the password by `secret_file` or `secret_env` \
                 (never written inline)"
            )
        })?;
        self.ensure(!value.contains(['\n', '\r', '\0']), field, || {
            format!("the value of `{name}` must be one line (a line break would start another option)")
        })?;
        if let Some(bad) = value.match_indices('{').find_map(|(i, _)| {
            let rest = &value[i + 1..];
            let end = rest.find('}')?;
            let word = &rest[..end];
            (word != "node_id" && word != "host").then(|| word.to_string())
        }) {
            return Err(
                self.err(field, format!("unknown placeholder `{{{bad}}}` in `{name}`; allowed: {{node_id}}, {{host}}"))
            );
        }
        Ok(())
    }

    fn url(&self, field: &'static str, url: &str) -> Result<(), ConfigError> {
        let probe = url.replace("{node_id}", "node");
        match reqwest::Url::parse(&probe) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
            Ok(u) => Err(self.err(field, format!("`{url}` has scheme `{}`; use http or https", u.scheme()))),
            Err(e) => Err(self.err(field, format!("`{url}` is not a valid URL: {e}"))),
        }
    }

    /// With `tls` set the client speaks HTTPS only; a plain URL would fail at every fence.
    fn https(&self, field: &'static str, url: &str) -> Result<(), ConfigError> {
        let plain = url.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("http://"));
        self.ensure(!plain, field, || {
            format!("`{url}` is plain HTTP, but `tls` is set: use https:// (or remove `tls`)")
        })
    }

    fn client_tls(&self, tls: &ClientTlsConfig) -> Result<(), ConfigError> {
        tls.validate().map_err(|e| self.err(tls_field(e.field), e.problem))?;
        for (field, path) in [("ca_file", &tls.ca_file), ("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
            if let Some(path) = path {
                self.ensure(path.is_absolute(), tls_field(field), || {
                    format!("`{}` must be an absolute path", path.display())
                })?;
            }
        }
        Ok(())
    }

    fn headers(&self, headers: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        for (name, value) in headers {
            self.ensure(reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok(), "headers", || {
                format!("`{name}` is not a valid header name")
            })?;
            self.ensure(reqwest::header::HeaderValue::from_str(value).is_ok(), "headers", || {
                format!("value of `{name}` is not a valid header value")
            })?;
        }
        Ok(())
    }

    fn secret(&self, file: &Option<PathBuf>, env: &Option<String>, required: bool) -> Result<(), ConfigError> {
        match (file, env) {
            (Some(_), Some(_)) => Err(self.err("secret_file", "give either secret_file or secret_env, not both")),
            (None, None) if required => Err(self.err(
                "secret_file",
                "a secret is required: set secret_file or secret_env (secrets are never written inline)",
            )),
            (None, None) => Ok(()),
            (Some(path), None) => self
                .ensure(path.is_absolute(), "secret_file", || format!("`{}` must be an absolute path", path.display())),
            (None, Some(name)) => {
                self.ensure(!name.is_empty() && !name.contains('=') && !name.contains('\0'), "secret_env", || {
                    format!("`{name}` is not a valid variable name")
                })
            }
        }
    }

    fn ssh_login(
        &self,
        user: &str,
        connect_timeout_ms: u64,
        timeout_ms: u64,
        identity_file: &std::path::Path,
    ) -> Result<(), ConfigError> {
        self.ensure(crate::target::is_plain_identifier(user), "user", || format!("`{user}` is not a plain user name"))?;
        self.ensure(identity_file.is_absolute(), "identity_file", || {
            format!("`{}` must be an absolute path", identity_file.display())
        })?;
        self.ensure(connect_timeout_ms > 0, "connect_timeout_ms", || "must be greater than 0".into())?;
        // ssh only takes whole seconds, as a C int; the rounded-up value must still fit in the
        // deadline. Checked, so that an absurd value cannot wrap round to a small one.
        let rounded = connect_timeout_ms
            .div_ceil(1000)
            .checked_mul(1000)
            .filter(|&rounded| rounded <= SSH_MAX_CONNECT_TIMEOUT_MS)
            .ok_or_else(|| {
                self.err(
                    "connect_timeout_ms",
                    format!(
                        "{connect_timeout_ms} ms is more than ssh takes (at most {SSH_MAX_CONNECT_TIMEOUT_MS} ms); it \
                         must be shorter than timeout_ms {timeout_ms}"
                    ),
                )
            })?;
        self.ensure(rounded < timeout_ms, "connect_timeout_ms", || {
            format!(
                "{connect_timeout_ms} ms (ssh rounds it up to {rounded} ms) must be shorter than timeout_ms {timeout_ms}"
            )
        })
    }
}

/// The longest `ConnectTimeout` ssh takes: whole seconds in a C `int`.
const SSH_MAX_CONNECT_TIMEOUT_MS: u64 = i32::MAX as u64 * 1000;

/// A [`ClientTlsError`] field as a method's field: the keys sit under `tls`.
pub(crate) fn tls_field(field: &'static str) -> &'static str {
    match field {
        "ca_file" => "tls.ca_file",
        "cert_file" => "tls.cert_file",
        "key_file" => "tls.key_file",
        _ => "tls",
    }
}

/// The first `{name}` in `word` that is not an allowed ssh placeholder.
fn unknown_placeholder(word: &str) -> Option<String> {
    let mut rest = word;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        let name = &after[..close];
        if !matches!(name, "port" | "pid" | "fence_token" | "target_token") {
            return Some(name.to_string());
        }
        rest = &after[close + 1..];
    }
    None
}

/// Whether `word` needs no quoting for a POSIX shell.
pub(crate) fn is_plain_word(word: &str) -> bool {
    !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> String {
        FencingConfig::from_yaml_str(yaml).unwrap_err().to_string()
    }

    #[test]
    fn empty_documents_are_refused() {
        for yaml in ["", "   \n", "# only a comment\n", "---\n", "~\n"] {
            assert!(matches!(FencingConfig::from_yaml_str(yaml), Err(ConfigError::Empty)), "{yaml:?}");
        }
        assert!(matches!(
            FencingConfig::from_yaml_str("overall_timeout_ms: 1000\nlevels: []\n"),
            Err(ConfigError::Empty)
        ));
    }

    #[test]
    fn an_overall_timeout_past_an_hour_is_refused_by_name() {
        let yaml = |ms: u64| {
            format!(
                "overall_timeout_ms: {ms}\nlevels:\n  - methods:\n      - kind: graceful\n        timeout_ms: 1000\n"
            )
        };
        assert!(FencingConfig::from_yaml_str(&yaml(MAX_OVERALL_TIMEOUT_MS)).is_ok());
        for ms in [MAX_OVERALL_TIMEOUT_MS + 1, u64::MAX] {
            let e = FencingConfig::from_yaml_str(&yaml(ms)).unwrap_err().to_string();
            assert!(e.contains("overall_timeout_ms") && e.contains("over an hour"), "{e}");
        }
    }

    #[test]
    fn a_minimal_config_parses() {
        let c = FencingConfig::from_yaml_str(
            "overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: graceful\n        timeout_ms: 1000\n",
        )
        .unwrap();
        assert_eq!(c.levels[0].methods[0].kind(), MethodKind::Graceful);
        assert_eq!(c.levels[0].methods[0].name(), "graceful");
        assert_eq!(c.delay_for("any"), 0);
    }

    #[test]
    fn a_watchdog_method_waits_a_margin_over_the_promise() {
        let yaml = |extra: &str| {
            format!("overall_timeout_ms: 30000\nlevels:\n  - methods:\n      - kind: watchdog\n        timeout_ms: 25000\n{extra}")
        };
        let c = FencingConfig::from_yaml_str(&yaml("")).unwrap();
        assert_eq!(c.levels[0].methods[0].kind(), MethodKind::Watchdog);
        let MethodConfig::Watchdog(w) = &c.levels[0].methods[0] else { panic!("{c:?}") };
        assert_eq!(w.wait_percent, WatchdogConfig::DEFAULT_WAIT_PERCENT);
        assert!(FencingConfig::from_yaml_str(&yaml("        wait_percent: 120\n")).is_ok());
        for bad in ["100", "119", "1001"] {
            let e = err(&yaml(&format!("        wait_percent: {bad}\n")));
            assert!(e.contains("wait_percent") && e.contains("outside 120 to 1000"), "{bad}: {e}");
        }
        let e = err(&yaml("        promise_ms: 5000\n"));
        assert!(e.contains("unknown field `promise_ms`"), "{e}");
    }

    #[test]
    fn unknown_and_missing_fields_name_the_path() {
        let e = err("overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: graceful\n        timeout_ms: 1000\n        bogus: 1\n");
        assert!(e.contains("method 0 (graceful): unknown field `bogus`"), "{e}");
        assert!(e.contains("levels[0]"), "{e}");
        let e = err("overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: graceful\n        timeout_ms: 1000\n      - kind: ssh\n        timeout_ms: 3000\n        connect_timeout_ms: 1000\n        user: r\n        identity_file: /k\n");
        assert!(e.contains("levels[0]"), "{e}");
        assert!(e.contains("method 1 (ssh): missing field `command`"), "{e}");
        let e = err("overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: teleport\n        timeout_ms: 1\n");
        assert!(e.contains("teleport"), "{e}");
        let e = err("overall_timeout_ms: 5000\nlevel: []\n");
        assert!(e.contains("level"), "{e}");
    }

    #[test]
    fn semantic_errors_name_level_method_and_field() {
        let e = err("overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: graceful\n        timeout_ms: 1000\n  - methods:\n      - kind: shell\n        timeout_ms: 1000\n        program: fence.sh\n");
        assert_eq!(
            e,
            "fencing level 1, method 0 (shell): field `program`: `fence.sh` must be an absolute path (it is executed directly, not looked up through a shell)"
        );
        let e = err("overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: kill\n        timeout_ms: 1000\n        grace_ms: 1000\n");
        assert!(e.starts_with("fencing level 0, method 0 (kill): field `grace_ms`"), "{e}");
        let e =
            err("overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: graceful\n        timeout_ms: 6000\n");
        assert!(e.contains("field `timeout_ms`"), "{e}");
        let e = err("overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: agent\n        timeout_ms: 1000\n        peers: {n1: 'http://h:1'}\n");
        assert!(e.contains("(agent): field `secret_file`"), "{e}");
        let e = err("overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: ssh\n        timeout_ms: 2000\n        connect_timeout_ms: 1500\n        user: r\n        identity_file: /k\n        command: [stop]\n");
        assert!(e.contains("field `connect_timeout_ms`"), "{e}");
        let e = err("overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: ssh\n        timeout_ms: 4000\n        connect_timeout_ms: 1000\n        user: r\n        identity_file: /k\n        command: [stop, '{host}']\n");
        assert!(e.contains("unknown placeholder `{host}`"), "{e}");
        let e = err("overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: isolate\n        timeout_ms: 1000\n        backend: iptables\n        via: ssh\n");
        assert!(e.contains("(isolate): field `ssh`"), "{e}");
        let e = err("overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: http\n        timeout_ms: 1000\n        url: 'ftp://pdu/off'\n");
        assert!(e.contains("(http): field `url`"), "{e}");
        let e = err("overall_timeout_ms: 5000\nlevels:\n  - methods: []\n");
        assert!(e.starts_with("fencing level 0: has no methods"), "{e}");
        let e = err("overall_timeout_ms: 5000\ndelay_ms: 5000\nlevels:\n  - methods:\n      - kind: graceful\n        timeout_ms: 1000\n");
        assert!(e.contains("field `delay_ms`"), "{e}");
        let e = err("overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: shell\n        timeout_ms: 1000\n        program: /bin/true\n        env: {FENCE_TOKEN: '1'}\n");
        assert!(e.contains("field `env`"), "{e}");
    }

    #[test]
    fn client_tls_keys_are_checked_and_named() {
        let agent = |tls: &str| {
            format!(
                "overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: agent\n        timeout_ms: 1000\n        \
                 peers: {{n1: 'https://h:1'}}\n        secret_env: S\n        tls: {tls}\n"
            )
        };
        let ok =
            FencingConfig::from_yaml_str(&agent("{ca_file: /ca.pem, cert_file: /c.pem, key_file: /c.key}")).unwrap();
        let MethodConfig::Agent(c) = &ok.levels[0].methods[0] else { panic!("{ok:?}") };
        assert_eq!(c.tls.as_ref().and_then(|t| t.ca_file.as_deref()), Some(std::path::Path::new("/ca.pem")));
        FencingConfig::from_yaml_str(&agent("{ca_file: /ca.pem}")).unwrap();
        FencingConfig::from_yaml_str(&agent("{cert_file: /c.pem, key_file: /c.key}")).unwrap();

        let e = err(&agent("{cert_file: /c.pem}"));
        assert_eq!(
            e,
            "fencing level 0, method 0 (agent): field `tls.key_file`: is missing; `cert_file` needs its private key"
        );
        let e = err(&agent("{key_file: /c.key}"));
        assert!(e.contains("field `tls.cert_file`: is missing"), "{e}");
        let e = err(&agent("{}"));
        assert!(e.contains("field `tls.ca_file`") && e.contains("remove the TLS section"), "{e}");
        let e = err(&agent("{ca_file: ca.pem}"));
        assert!(e.contains("field `tls.ca_file`: `ca.pem` must be an absolute path"), "{e}");
        let e = err(&agent("{ca_file: /ca.pem, verify: false}"));
        assert!(e.contains("unknown field `verify`"), "{e}");
        let e = err(&agent("{ca_file: /ca.pem}").replace("https://h:1", "http://h:1"));
        assert!(e.contains("field `peers`: `http://h:1` is plain HTTP, but `tls` is set"), "{e}");
        let e = err("overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: http\n        timeout_ms: 1000\n        url: 'HTTP://pdu/off'\n        tls: {ca_file: /ca.pem}\n");
        assert!(e.contains("(http): field `url`") && e.contains("plain HTTP"), "{e}");
    }

    #[test]
    fn isolate_drops_both_families_with_one_flavour_of_iptables() {
        let yaml = |extra: &str| {
            format!(
                "overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: isolate\n        timeout_ms: 1000\n        \
                 backend: iptables\n        via: local\n{extra}"
            )
        };
        let isolate =
            |extra: &str| match FencingConfig::from_yaml_str(&yaml(extra)).unwrap().levels[0].methods[0].clone() {
                MethodConfig::Isolate(c) => c,
                other => panic!("{other:?}"),
            };
        let c = isolate("");
        assert_eq!((c.family(), c.program6().as_deref()), (IsolateFamily::Both, Some("ip6tables")));
        let c = isolate("        program: /usr/sbin/iptables-legacy\n");
        assert_eq!(c.program6().as_deref(), Some("/usr/sbin/ip6tables-legacy"));
        let c = isolate("        program: fw4\n        program6: fw6\n");
        assert_eq!(c.program6().as_deref(), Some("fw6"));
        assert_eq!(isolate("        program: fw4\n        family: ipv4\n").family(), IsolateFamily::Ipv4);

        // A wrapper named otherwise, with `family` left at its default: IPv4 plus the `ss -6`
        // check, not a refusal.
        let c = isolate("        program: /usr/local/sbin/fw\n");
        assert_eq!((c.family(), c.program6()), (IsolateFamily::Both, None));
        assert!(!c.family_explicit());
        // An explicit `family: both` needs a program for IPv6.
        let e = err(&yaml("        program: fw4\n        family: both\n"));
        assert!(e.contains("(isolate): field `program6`") && e.contains("family: ipv4"), "{e}");
        let e = err(&yaml("        family: ipv6\n"));
        assert!(e.contains("unknown variant `ipv6`"), "{e}");
    }

    #[test]
    fn http_trusts_a_2xx_only_when_told_and_never_besides_a_status_url() {
        let http = |extra: &str| {
            format!(
                "overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: http\n        timeout_ms: 1000\n        \
                 url: 'https://pdu/off'\n{extra}"
            )
        };
        let trusted = |extra: &str| match &FencingConfig::from_yaml_str(&http(extra)).unwrap().levels[0].methods[0] {
            MethodConfig::Http(c) => c.trust_2xx,
            other => panic!("{other:?}"),
        };
        assert!(!trusted(""));
        assert!(trusted("        trust_2xx: true\n"));
        // A status URL confirms every 2xx: trusting the answer as well would be ignored.
        let e = err(&http(
            "        trust_2xx: true\n        status: {url: 'https://pdu/state', interval_ms: 100, pointer: /s, off_value: \"off\"}\n",
        ));
        assert!(e.contains("(http): field `trust_2xx`") && e.contains("status.url"), "{e}");
    }

    #[test]
    fn an_ssh_connect_timeout_beyond_what_ssh_takes_is_refused_by_name() {
        let ssh = |connect: &str| {
            format!(
                "overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: ssh\n        timeout_ms: 4000\n        \
                 connect_timeout_ms: {connect}\n        user: r\n        identity_file: /k\n        command: [stop]\n"
            )
        };
        let isolate = |connect: &str| {
            format!(
                "overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: isolate\n        timeout_ms: 4000\n        \
                 backend: iptables\n        via: ssh\n        ssh: {{user: r, identity_file: /k, connect_timeout_ms: \
                 {connect}}}\n"
            )
        };
        for yaml in [ssh as fn(&str) -> String, isolate] {
            FencingConfig::from_yaml_str(&yaml("3000")).unwrap();
            // Rounded up to whole seconds, the product of an absurd value once wrapped round
            // to a small one, and passed.
            for absurd in ["18446744073709551615", "18446744073709551", "2147483648000"] {
                let e = err(&yaml(absurd));
                assert!(e.contains("field `connect_timeout_ms`") && e.contains(absurd), "{absurd}: {e}");
            }
            let e = err(&yaml("3001"));
            assert!(e.contains("field `connect_timeout_ms`") && e.contains("rounds it up to 4000 ms"), "{e}");
        }
    }

    #[test]
    fn kill_refuses_only_a_grace_as_long_as_the_timeout() {
        let kill = |timeout: u64, grace: u64| {
            format!(
                "overall_timeout_ms: 10000\nlevels:\n  - methods:\n      - kind: kill\n        timeout_ms: {timeout}\n        \
                 grace_ms: {grace}\n"
            )
        };
        FencingConfig::from_yaml_str(&kill(5000, 4500)).unwrap();
        FencingConfig::from_yaml_str(&kill(500, 0)).unwrap();
        // A short budget is cut at run time (the grace gives way to the SIGKILL reserve).
        FencingConfig::from_yaml_str(&kill(5000, 4990)).unwrap();
        FencingConfig::from_yaml_str(&kill(400, 0)).unwrap();
        FencingConfig::from_yaml_str(&kill(2000, 1800)).unwrap();
        let e = err(&kill(5000, 5000));
        assert!(e.starts_with("fencing level 0, method 0 (kill): field `grace_ms`"), "{e}");
        assert!(e.contains("shorter than timeout_ms 5000"), "{e}");
    }

    #[test]
    fn node_delays_override_the_default() {
        let c = FencingConfig::from_yaml_str(
            "overall_timeout_ms: 5000\ndelay_ms: 10\nnode_delay_ms: {a: 300}\nlevels:\n  - methods:\n      - kind: graceful\n        timeout_ms: 1000\n",
        )
        .unwrap();
        assert_eq!(c.delay_for("a"), 300);
        assert_eq!(c.delay_for("b"), 10);
    }

    #[test]
    fn a_check_interval_under_a_second_is_refused_and_zero_turns_checks_off() {
        let yaml = |ms: &str| {
            format!("overall_timeout_ms: 5000\n{ms}levels:\n  - methods:\n      - kind: graceful\n        timeout_ms: 1000\n")
        };
        let e = err(&yaml("check_interval_ms: 500\n"));
        assert!(e.contains("check_interval_ms") && e.contains("1000 or more, or 0"), "{e}");
        assert_eq!(FencingConfig::from_yaml_str(&yaml("check_interval_ms: 0\n")).unwrap().check_interval_ms, 0);
        assert_eq!(FencingConfig::from_yaml_str(&yaml("")).unwrap().check_interval_ms, 60_000);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let yaml = include_str!("../fencing.example.yaml");
        let c = FencingConfig::from_yaml_str(yaml).unwrap();
        assert!(c.levels.len() >= 2);
    }
}
