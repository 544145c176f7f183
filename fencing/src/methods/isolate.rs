//! `isolate`: cut the master's port off the network with firewall rules on its host.
//!
//! Rules drop TCP traffic to the port (INPUT `--dport`) and from it (OUTPUT `--sport`), and,
//! with `forward`, the same in FORWARD for masters behind NAT or in containers. Matching the
//! port in both directions, rather than only new connections, stops established connections
//! too: the master neither receives requests nor gets replies out.
//!
//! Every rule carries the comment `referee-fence:<node id>`. Fencing checks each rule
//! (`-C`) before inserting it, so repeating a fence adds nothing; it then lists the rules
//! (`-S`) and is fenced only when all of them are listed. Unfencing deletes exactly the listed
//! rules bearing that comment and verifies none is left. The commands run locally (with an
//! optional prefix such as `sudo -n` or `ip netns exec`) or on the target over ssh; an
//! unreachable host is a failure, never a pretended success.

use crate::command::{self, CommandEnd};
use crate::config::{FirewallBackend, IsolateConfig, Via};
use crate::methods::shell::suffix;
use crate::methods::ssh::{never_connected, quote, SshLogin};
use crate::methods::{problem, Context};
use crate::outcome::{MethodOutcome, Readiness};
use crate::target::is_plain_identifier;

#[derive(Debug)]
pub(crate) struct Isolate {
    runner: Runner,
    program: String,
    prefix: Vec<String>,
    forward: bool,
}

#[derive(Debug)]
enum Runner {
    Local,
    Ssh(SshLogin),
}

/// The comment tagging this target's rules.
pub(crate) fn tag(node_id: &str) -> String {
    format!("referee-fence:{node_id}")
}

/// One rule: chain and the match/target arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub chain: &'static str,
    pub direction: &'static str,
    pub port: u16,
}

impl Rule {
    fn spec(&self, tag: &str) -> Vec<String> {
        ["-p", "tcp", self.direction, &self.port.to_string(), "-m", "comment", "--comment", tag, "-j", "DROP"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Whether a tokenised `-S` line is this rule.
    fn matches(&self, tokens: &[String]) -> bool {
        let port = self.port.to_string();
        tokens.len() >= 2
            && tokens[0] == "-A"
            && tokens[1] == self.chain
            && tokens.windows(2).any(|w| w[0] == self.direction && w[1] == port)
            && tokens.ends_with(&["-j".to_string(), "DROP".to_string()])
    }
}

/// The rules isolating `port`.
pub(crate) fn rules(port: u16, forward: bool) -> Vec<Rule> {
    let mut rules =
        vec![Rule { chain: "INPUT", direction: "--dport", port }, Rule { chain: "OUTPUT", direction: "--sport", port }];
    if forward {
        rules.push(Rule { chain: "FORWARD", direction: "--dport", port });
        rules.push(Rule { chain: "FORWARD", direction: "--sport", port });
    }
    rules
}

/// The lines of `iptables -S` output carrying exactly `tag`, tokenised (quotes removed).
pub(crate) fn tagged_rules(listing: &str, tag: &str) -> Vec<Vec<String>> {
    listing
        .lines()
        .map(|line| line.split_whitespace().map(|t| t.trim_matches('"').to_string()).collect::<Vec<_>>())
        .filter(|tokens| {
            tokens.first().is_some_and(|t| t == "-A") && tokens.windows(2).any(|w| w[0] == "--comment" && w[1] == tag)
        })
        .collect()
}

impl Isolate {
    pub(crate) fn new(config: &IsolateConfig) -> Self {
        let runner = match (config.via, &config.ssh) {
            (Via::Ssh, Some(login)) => Runner::Ssh(login.into()),
            // Validation guarantees `ssh` is present with `via: ssh`.
            (Via::Ssh, None) | (Via::Local, _) => Runner::Local,
        };
        match config.backend {
            FirewallBackend::Iptables => {}
        }
        Isolate {
            runner,
            program: config.program.clone(),
            prefix: config.command_prefix.clone(),
            forward: config.forward,
        }
    }

    /// Runs one firewall command; `Ok((exit code, stdout, stderr))` when it ran to an exit.
    async fn firewall(&self, ctx: &Context<'_>, args: &[String]) -> Result<(i32, String, String), MethodOutcome> {
        let mut argv = self.prefix.clone();
        argv.push(self.program.clone());
        // Wait for the xtables lock instead of failing when another tool holds it; the
        // method deadline bounds the wait.
        argv.push("-w".into());
        argv.extend(args.iter().cloned());
        let shown = argv.join(" ");
        match &self.runner {
            Runner::Local => match command::run(&argv, &[], ctx.deadline).await {
                CommandEnd::Exited { code, stdout, stderr } => Ok((code, stdout, stderr)),
                CommandEnd::Signalled { signal, stderr } => Err(MethodOutcome::indeterminate(format!(
                    "`{shown}` was terminated by signal {signal}{}",
                    suffix(&stderr)
                ))),
                CommandEnd::TimedOut { stderr } => Err(MethodOutcome::indeterminate(format!(
                    "`{shown}` did not finish before the deadline{}",
                    suffix(&stderr)
                ))),
                CommandEnd::SpawnFailed { error } => Err(MethodOutcome::failed(error)),
            },
            Runner::Ssh(login) => {
                // Every word is a plain word or a validated identifier; quoting is belt and
                // braces for the remote shell.
                let remote: Vec<String> = argv.iter().map(|w| quote(w)).collect();
                let end = login.run(&ctx.target.host, &remote.join(" "), ctx).await?;
                match end {
                    CommandEnd::Exited { code: 255, stderr, .. } if never_connected(&stderr) => {
                        Err(MethodOutcome::failed(format!(
                            "ssh could not reach {} to run `{shown}`{}",
                            ctx.target.host,
                            suffix(&stderr)
                        )))
                    }
                    CommandEnd::Exited { code: 255, stderr, .. } => Err(MethodOutcome::indeterminate(format!(
                        "ssh to {} ended with 255 during `{shown}`{}",
                        ctx.target.host,
                        suffix(&stderr)
                    ))),
                    CommandEnd::Exited { code, stdout, stderr } => Ok((code, stdout, stderr)),
                    CommandEnd::Signalled { signal, stderr } => Err(MethodOutcome::indeterminate(format!(
                        "ssh running `{shown}` was terminated by signal {signal}{}",
                        suffix(&stderr)
                    ))),
                    CommandEnd::TimedOut { stderr } => Err(MethodOutcome::indeterminate(format!(
                        "ssh running `{shown}` did not finish before the deadline{}",
                        suffix(&stderr)
                    ))),
                    CommandEnd::SpawnFailed { error } => Err(MethodOutcome::failed(error)),
                }
            }
        }
    }

    /// The firewall can be read where the rules would go (over ssh, or on this host).
    pub(crate) async fn check(&self, ctx: &Context<'_>) -> Readiness {
        let place = match &self.runner {
            Runner::Local => "this host".to_string(),
            Runner::Ssh(_) => ctx.target.host.clone(),
        };
        match self.listing(ctx).await {
            Ok(_) => Readiness::Ready { detail: format!("`{} -S` lists the firewall rules on {place}", self.program) },
            Err(outcome) => problem(outcome),
        }
    }

    async fn listing(&self, ctx: &Context<'_>) -> Result<String, MethodOutcome> {
        match self.firewall(ctx, &["-S".to_string()]).await? {
            (0, stdout, _) => Ok(stdout),
            (code, _, stderr) => {
                Err(MethodOutcome::failed(format!("listing firewall rules exited {code}{}", suffix(&stderr))))
            }
        }
    }

    pub(crate) async fn fence(&self, ctx: &Context<'_>) -> MethodOutcome {
        match self.try_fence(ctx).await {
            Ok(outcome) | Err(outcome) => outcome,
        }
    }

    async fn try_fence(&self, ctx: &Context<'_>) -> Result<MethodOutcome, MethodOutcome> {
        let node_id = &ctx.target.node_id;
        if !is_plain_identifier(node_id) {
            return Err(MethodOutcome::failed(format!(
                "node id `{node_id}` cannot tag firewall rules (allowed: letters, digits, `._-`)"
            )));
        }
        let tag = tag(node_id);
        let rules = rules(ctx.target.port, self.forward);
        let mut inserted = 0;
        for rule in &rules {
            let spec = rule.spec(&tag);
            let mut check = vec!["-C".to_string(), rule.chain.to_string()];
            check.extend(spec.iter().cloned());
            match self.firewall(ctx, &check).await? {
                (0, _, _) => continue, // already in place: fencing is idempotent
                (1, _, _) => {}
                (code, _, stderr) => {
                    return Err(MethodOutcome::failed(format!(
                        "checking the {} rule exited {code}{}",
                        rule.chain,
                        suffix(&stderr)
                    )))
                }
            }
            // Insert at the top, ahead of any ACCEPT rule for established traffic.
            let mut insert = vec!["-I".to_string(), rule.chain.to_string(), "1".to_string()];
            insert.extend(spec);
            match self.firewall(ctx, &insert).await? {
                (0, _, _) => inserted += 1,
                (code, _, stderr) => {
                    return Err(MethodOutcome::failed(format!(
                    "inserting the {} rule exited {code}{} ({inserted} new rules are in place; unfence removes them)",
                    rule.chain,
                    suffix(&stderr)
                )))
                }
            }
        }
        let listed = tagged_rules(&self.listing(ctx).await?, &tag);
        let missing: Vec<String> = rules
            .iter()
            .filter(|rule| !listed.iter().any(|tokens| rule.matches(tokens)))
            .map(|rule| format!("{} {} {}", rule.chain, rule.direction, rule.port))
            .collect();
        if !missing.is_empty() {
            return Err(MethodOutcome::failed(format!("rules not listed after insertion: {}", missing.join(", "))));
        }
        Ok(MethodOutcome::fenced(format!(
            "tcp port {} dropped in both directions on {} ({} rules tagged `{tag}` listed, {inserted} newly inserted)",
            ctx.target.port,
            self.location(ctx),
            rules.len()
        )))
    }

    fn location(&self, ctx: &Context<'_>) -> String {
        match &self.runner {
            Runner::Local => "this host".to_string(),
            Runner::Ssh(_) => ctx.target.host.clone(),
        }
    }

    /// Removes every rule tagged for the target and verifies none is left.
    pub(crate) async fn unfence(&self, ctx: &Context<'_>) -> MethodOutcome {
        match self.try_unfence(ctx).await {
            Ok(outcome) | Err(outcome) => outcome,
        }
    }

    async fn try_unfence(&self, ctx: &Context<'_>) -> Result<MethodOutcome, MethodOutcome> {
        let node_id = &ctx.target.node_id;
        if !is_plain_identifier(node_id) {
            return Err(MethodOutcome::failed(format!("node id `{node_id}` cannot tag firewall rules")));
        }
        let tag = tag(node_id);
        let listed = tagged_rules(&self.listing(ctx).await?, &tag);
        for tokens in &listed {
            // `-S` prints `-A CHAIN spec...`; the same words after `-D` delete that rule.
            let mut delete = vec!["-D".to_string()];
            delete.extend(tokens[1..].iter().cloned());
            match self.firewall(ctx, &delete).await? {
                (0, _, _) => {}
                (code, _, stderr) => {
                    return Err(MethodOutcome::failed(format!(
                        "deleting `{}` exited {code}{}",
                        tokens.join(" "),
                        suffix(&stderr)
                    )))
                }
            }
        }
        let left = tagged_rules(&self.listing(ctx).await?, &tag);
        if !left.is_empty() {
            return Err(MethodOutcome::failed(format!(
                "{} rules tagged `{tag}` still listed after deletion",
                left.len()
            )));
        }
        Ok(MethodOutcome::fenced(format!(
            "removed {} rules tagged `{tag}` on {}; none left",
            listed.len(),
            self.location(ctx)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = r#"-P INPUT ACCEPT
-P FORWARD ACCEPT
-P OUTPUT ACCEPT
-A INPUT -p tcp -m tcp --dport 9999 -m comment --comment "referee-fence:n1" -j DROP
-A INPUT -p tcp -m tcp --dport 9999 -m comment --comment "referee-fence:n10" -j DROP
-A OUTPUT -p tcp -m tcp --sport 9999 -m comment --comment referee-fence:n1 -j DROP
-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT
"#;

    #[test]
    fn only_rules_with_exactly_our_tag_are_selected() {
        let tagged = tagged_rules(LISTING, &tag("n1"));
        assert_eq!(tagged.len(), 2);
        assert!(rules(9999, false)[0].matches(&tagged[0]));
        assert!(rules(9999, false)[1].matches(&tagged[1]));
        assert!(!rules(9998, false)[0].matches(&tagged[0]));
    }

    #[test]
    fn both_directions_and_optionally_forward_are_covered() {
        let r = rules(80, true);
        assert_eq!(r.len(), 4);
        assert_eq!(r[1].spec("t"), ["-p", "tcp", "--sport", "80", "-m", "comment", "--comment", "t", "-j", "DROP"]);
        assert_eq!(rules(80, false).len(), 2);
    }
}
