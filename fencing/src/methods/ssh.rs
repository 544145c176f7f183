//! `ssh`: run a configured kill-and-verify command on the target with the system `ssh` client.
//!
//! Hadoop's `sshfence` kills by port and then checks the port **from the fencing host**, which
//! cannot tell a dead master from a partitioned one. Here the configured command must verify
//! on the target itself that the master is gone, and its exit 0 is the only success.
//!
//! `ssh` runs in batch mode (never prompts), with a connect timeout and no connection sharing
//! (`ControlMaster`), under the method's deadline and in its own process group. The destination is passed after `--` and must be a
//! plain host name, so it cannot be read as an option. The remote command is built from the
//! configured words, each single-quoted for the remote shell; the only substitutions are
//! numbers (`{port}`, `{pid}`, `{fence_token}`, `{target_token}`), so nothing from the target
//! becomes remote shell syntax either.

use std::path::PathBuf;

use crate::command::{self, CommandEnd};
use crate::config::{HostKeyChecking, SshConfig, SshLoginConfig};
use crate::methods::shell::suffix;
use crate::methods::{problem, Context};
use crate::outcome::{MethodOutcome, Readiness};
use crate::target::is_plain_host;

/// How to log in to a target host.
#[derive(Debug, Clone)]
pub(crate) struct SshLogin {
    pub user: String,
    pub identity_file: PathBuf,
    pub port: u16,
    pub connect_timeout_ms: u64,
    pub host_key_checking: HostKeyChecking,
    pub known_hosts_file: Option<PathBuf>,
    pub program: PathBuf,
}

impl From<&SshLoginConfig> for SshLogin {
    fn from(c: &SshLoginConfig) -> Self {
        SshLogin {
            user: c.user.clone(),
            identity_file: c.identity_file.clone(),
            port: c.port,
            connect_timeout_ms: c.connect_timeout_ms,
            host_key_checking: c.host_key_checking,
            known_hosts_file: c.known_hosts_file.clone(),
            program: c.ssh_program.clone(),
        }
    }
}

impl SshLogin {
    /// The full `ssh` argv running `remote_command` on `host`.
    pub(crate) fn argv(&self, host: &str, remote_command: &str) -> Vec<String> {
        let checking = match self.host_key_checking {
            HostKeyChecking::Yes => "yes",
            HostKeyChecking::AcceptNew => "accept-new",
            HostKeyChecking::No => "no",
        };
        let mut argv = vec![
            self.program.to_string_lossy().into_owned(),
            "-T".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            format!("ConnectTimeout={}", self.connect_timeout_ms.div_ceil(1000)),
            "-o".into(),
            format!("StrictHostKeyChecking={checking}"),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            // Keep stderr to real errors, so its last line makes a useful reason.
            "-o".into(),
            "LogLevel=ERROR".into(),
            // No connection sharing, whatever an ssh_config says (options given here win): a
            // mux master daemonises out of the process group, so the deadline's group kill
            // misses it and it lingers after every attempt, and a later run over its connection
            // skips the connect, so `ConnectTimeout` cannot fail it fast once the host is gone
            // (the run hangs to the deadline, indeterminate, taking the next level's budget).
            "-o".into(),
            "ControlMaster=no".into(),
            "-o".into(),
            "ControlPath=none".into(),
            "-o".into(),
            "ControlPersist=no".into(),
        ];
        if let Some(known) = &self.known_hosts_file {
            argv.push("-o".into());
            argv.push(format!("UserKnownHostsFile={}", known.display()));
        }
        argv.extend([
            "-i".into(),
            self.identity_file.to_string_lossy().into_owned(),
            "-p".into(),
            self.port.to_string(),
            "-l".into(),
            self.user.clone(),
            "--".into(),
            host.into(),
            remote_command.into(),
        ]);
        argv
    }

    /// Runs `remote_command` on `host` and classifies how `ssh` itself ended.
    pub(crate) async fn run(
        &self,
        host: &str,
        remote_command: &str,
        ctx: &Context<'_>,
    ) -> Result<CommandEnd, MethodOutcome> {
        if !is_plain_host(host) {
            return Err(MethodOutcome::failed(format!(
                "target host `{host}` is not a plain host name; refusing to pass it to ssh"
            )));
        }
        Ok(command::run(&self.argv(host, remote_command), &[], ctx.deadline).await)
    }
}

impl SshLogin {
    /// Whether this login to `host` works: `true` run there, nothing else.
    pub(crate) async fn check(&self, host: &str, ctx: &Context<'_>) -> Readiness {
        match self.run(host, "true", ctx).await.and_then(|end| classify(end, "`true`")) {
            Ok(_) => Readiness::Ready { detail: format!("ssh login to {host} as {} works", self.user) },
            Err(outcome) => problem(outcome),
        }
    }
}

/// Quotes one word for a POSIX shell.
pub(crate) fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// Whether `ssh` exiting 255 with this stderr means it never ran anything remotely.
///
/// These are the messages of failures before the session starts. Any other 255 (connection
/// lost mid-command, or the remote command itself exiting 255) leaves us not knowing.
pub(crate) fn never_connected(stderr: &str) -> bool {
    const BEFORE_SESSION: &[&str] = &[
        "connect to host",
        "Could not resolve hostname",
        "Permission denied",
        "Host key verification failed",
        "No route to host",
        "Connection refused",
        "Too many authentication failures",
        "no address associated",
        "Name or service not known",
    ];
    BEFORE_SESSION.iter().any(|m| stderr.contains(m))
}

/// Maps how an `ssh` run ended to an outcome; `what` names the remote action.
pub(crate) fn classify(end: CommandEnd, what: &str) -> Result<String, MethodOutcome> {
    match end {
        CommandEnd::Exited { code: 0, stdout, .. } => Ok(stdout),
        CommandEnd::Exited { code: 255, stderr, .. } if never_connected(&stderr) => {
            Err(MethodOutcome::failed(format!("ssh could not reach the target, nothing ran there{}", suffix(&stderr))))
        }
        CommandEnd::Exited { code: 255, stderr, .. } => Err(MethodOutcome::indeterminate(format!(
            "ssh ended with 255 (lost contact or remote error) during {what}{}",
            suffix(&stderr)
        ))),
        CommandEnd::Exited { code, stderr, .. } => {
            Err(MethodOutcome::failed(format!("{what} exited {code}{}", suffix(&stderr))))
        }
        CommandEnd::Signalled { signal, stderr } => Err(MethodOutcome::indeterminate(format!(
            "ssh was terminated by signal {signal} during {what}{}",
            suffix(&stderr)
        ))),
        CommandEnd::TimedOut { stderr } => Err(MethodOutcome::indeterminate(format!(
            "{what} did not finish before its deadline; ssh was killed{}",
            suffix(&stderr)
        ))),
        CommandEnd::SpawnFailed { error } => Err(MethodOutcome::failed(error)),
    }
}

#[derive(Debug)]
pub(crate) struct Ssh {
    login: SshLogin,
    command: Vec<String>,
}

impl Ssh {
    pub(crate) fn new(config: &SshConfig) -> Self {
        Ssh {
            login: SshLogin {
                user: config.user.clone(),
                identity_file: config.identity_file.clone(),
                port: config.port,
                connect_timeout_ms: config.connect_timeout_ms,
                host_key_checking: config.host_key_checking,
                known_hosts_file: config.known_hosts_file.clone(),
                program: config.ssh_program.clone(),
            },
            command: config.command.clone(),
        }
    }

    /// The remote command line: configured words with numeric placeholders substituted, each
    /// quoted. `None` when a placeholder names a fact the target does not have.
    fn remote_command(&self, ctx: &Context<'_>) -> Result<String, MethodOutcome> {
        let t = ctx.target;
        let mut words = Vec::with_capacity(self.command.len());
        for word in &self.command {
            let mut w = word
                .replace("{port}", &t.port.to_string())
                .replace("{fence_token}", &ctx.new_token.to_string())
                .replace("{target_token}", &t.token.to_string());
            if w.contains("{pid}") {
                let Some(pid) = t.pid else {
                    return Err(MethodOutcome::failed("the command uses {pid} but the target's pid is unknown"));
                };
                w = w.replace("{pid}", &pid.to_string());
            }
            words.push(quote(&w));
        }
        Ok(words.join(" "))
    }

    /// The login works; the command itself is the target's to have.
    pub(crate) async fn check(&self, ctx: &Context<'_>) -> Readiness {
        self.login.check(&ctx.target.host, ctx).await
    }

    pub(crate) async fn fence(&self, ctx: &Context<'_>) -> MethodOutcome {
        let remote = match self.remote_command(ctx) {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        let end = match self.login.run(&ctx.target.host, &remote, ctx).await {
            Ok(end) => end,
            Err(outcome) => return outcome,
        };
        match classify(end, "the remote fence command") {
            Ok(_) => {
                MethodOutcome::fenced(format!("remote command `{}` on {} exited 0", self.command[0], ctx.target.host))
            }
            Err(outcome) => outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_single_quoted() {
        assert_eq!(quote("plain"), "'plain'");
        assert_eq!(quote("it's; rm -rf /"), "'it'\\''s; rm -rf /'");
        assert_eq!(quote("$(id)"), "'$(id)'");
    }

    #[test]
    fn destination_follows_a_double_dash() {
        let login = SshLogin {
            user: "referee".into(),
            identity_file: "/k".into(),
            port: 2222,
            connect_timeout_ms: 1500,
            host_key_checking: HostKeyChecking::Yes,
            known_hosts_file: None,
            program: "ssh".into(),
        };
        let argv = login.argv("db1", "'stop'");
        assert!(argv.contains(&"ConnectTimeout=2".to_string()));
        assert!(argv.contains(&"BatchMode=yes".to_string()));
        let dd = argv.iter().position(|a| a == "--").unwrap();
        assert_eq!(&argv[dd + 1..], &["db1".to_string(), "'stop'".to_string()]);
    }

    /// A `ControlMaster` set in the user's or the system's ssh_config would fork a mux master
    /// that leaves the process group (so the deadline's group kill misses it) and carry later
    /// runs over its connection (so `ConnectTimeout` no longer applies): every run connects on
    /// its own, and command-line options win over any ssh_config.
    #[test]
    fn connection_sharing_is_turned_off() {
        let login = SshLogin {
            user: "referee".into(),
            identity_file: "/k".into(),
            port: 22,
            connect_timeout_ms: 1000,
            host_key_checking: HostKeyChecking::Yes,
            known_hosts_file: None,
            program: "ssh".into(),
        };
        let argv = login.argv("db1", "'stop'");
        let dd = argv.iter().position(|a| a == "--").unwrap();
        for option in ["ControlMaster=no", "ControlPath=none", "ControlPersist=no"] {
            let at = argv.iter().position(|a| a == option).unwrap_or_else(|| panic!("{option} missing: {argv:?}"));
            assert!(at < dd && argv[at - 1] == "-o", "{argv:?}");
        }
    }

    #[test]
    fn connection_failures_are_told_apart_from_lost_sessions() {
        assert!(never_connected("ssh: connect to host 127.0.0.1 port 9: Connection refused"));
        assert!(never_connected("root@h: Permission denied (publickey)."));
        assert!(!never_connected("Connection to h closed by remote host."));
    }
}
