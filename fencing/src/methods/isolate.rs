//! `isolate`: cut the master's port off the network with firewall rules on its host.
//!
//! Rules drop TCP traffic to the port (INPUT `--dport`) and from it (OUTPUT `--sport`), and,
//! with `forward`, the same in FORWARD for masters behind NAT or in containers. Matching the
//! port in both directions, rather than only new connections, stops established connections
//! too: the master neither receives requests nor gets replies out. The rules go into the IPv4
//! firewall (`iptables`) and, by default, the IPv6 one (`ip6tables`) as well: a master bound to
//! `[::]` serves both, and rules for IPv4 alone leave it reachable to every client that
//! resolves its name to an IPv6 address. With `family: ipv4` (a host without IPv6) the fence
//! fails instead wherever IPv6 could reach the master: an IPv6 target, or a TCP socket over
//! IPv6 on the port.
//!
//! Every rule carries the comment `referee-fence:<node id>`. Fencing checks each rule
//! (`-C`) before inserting it, so repeating a fence adds nothing; it then lists the rules
//! (`-S`) and is fenced only when all of them are listed, in every family. Unfencing deletes
//! exactly the listed rules bearing that comment and verifies none is left. The commands run
//! locally (with an optional prefix such as `sudo -n` or `ip netns exec`) or on the target over
//! ssh; an unreachable host is a failure, never a pretended success. Run locally, they act on
//! this host (or the namespace the prefix enters), so a target on another host is refused: its
//! master would keep serving while the rules cut off this host's own.

use std::net::IpAddr;

use crate::command::{self, CommandEnd};
use crate::config::{FirewallBackend, IsolateConfig, IsolateFamily, Via};
use crate::methods::shell::suffix;
use crate::methods::ssh::{never_connected, quote, SshLogin};
use crate::methods::this_host::ThisHost;
use crate::methods::{problem, Context};
use crate::outcome::{MethodOutcome, Readiness};
use crate::target::is_plain_identifier;

#[derive(Debug)]
pub(crate) struct Isolate {
    runner: Runner,
    /// The firewalls the rules go into, IPv4 first.
    tables: Vec<Table>,
    prefix: Vec<String>,
    forward: bool,
    this_host: ThisHost,
}

#[derive(Debug)]
enum Runner {
    Local,
    Ssh(SshLogin),
}

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// IPv4, through `iptables`.
    Ipv4,
    /// IPv6, through `ip6tables`.
    Ipv6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }
}

/// One family's firewall and the program that sets its rules.
#[derive(Debug, Clone)]
struct Table {
    family: Family,
    program: String,
}

impl Table {
    /// How a sentence names it: "IPv6 (`ip6tables`)".
    fn named(&self) -> String {
        format!("{} (`{}`)", self.family.name(), self.program)
    }
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

/// The rules isolating `port` (the same for both families).
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

/// Whether `prefix` runs the firewall program in another network namespace (`ip netns exec
/// NAME`, `nsenter ...`): the target's host then names that namespace, not this host, and
/// cannot be checked against this host's names.
fn enters_another_netns(prefix: &[String]) -> bool {
    let program = |word: &String| word.rsplit('/').next().unwrap_or(word).to_string();
    prefix.iter().any(|word| program(word) == "nsenter") || prefix.windows(2).any(|w| w[0] == "netns" && w[1] == "exec")
}

/// Whether `host` is an IPv6 address (bracketed or not).
fn is_ipv6_literal(host: &str) -> bool {
    host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6())
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
        let mut tables = vec![Table { family: Family::Ipv4, program: config.program.clone() }];
        match config.family {
            // Validation guarantees a program for IPv6 with `family: both`.
            IsolateFamily::Both => {
                tables.extend(config.program6().map(|program| Table { family: Family::Ipv6, program }))
            }
            IsolateFamily::Ipv4 => {}
        }
        Isolate {
            runner,
            tables,
            prefix: config.command_prefix.clone(),
            forward: config.forward,
            this_host: ThisHost::new(&config.local_hosts),
        }
    }

    /// Why the rules would not reach the target's master, if they would not: run here for a
    /// target on another host, or for IPv4 alone where IPv6 may reach it.
    fn out_of_reach(&self, ctx: &Context<'_>) -> Option<String> {
        let host = &ctx.target.host;
        let here = matches!(self.runner, Runner::Local) && !enters_another_netns(&self.prefix);
        if here && !self.this_host.is(host) {
            return Some(format!(
                "target host `{host}` is not this host: with `via: local` the rules would go into this host's \
                 firewall and cut off nothing of the target (use `via: ssh`, prefix the commands to enter the \
                 master's network namespace, or list other names of this host in local_hosts)"
            ));
        }
        if !self.covers(Family::Ipv6) && is_ipv6_literal(host) {
            return Some(format!(
                "target host `{host}` is an IPv6 address, but only IPv4 rules are configured (`family: ipv4`); \
                 use `family: both`"
            ));
        }
        None
    }

    fn covers(&self, family: Family) -> bool {
        self.tables.iter().any(|t| t.family == family)
    }

    /// Runs `argv` (prefix included) where the rules go; `Ok((exit code, stdout, stderr))`
    /// when it ran to an exit.
    async fn run(&self, ctx: &Context<'_>, argv: Vec<String>) -> Result<(i32, String, String), MethodOutcome> {
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

    /// Runs one firewall command of `table`.
    async fn firewall(
        &self,
        ctx: &Context<'_>,
        table: &Table,
        args: &[String],
    ) -> Result<(i32, String, String), MethodOutcome> {
        let mut argv = self.prefix.clone();
        argv.push(table.program.clone());
        // Wait for the xtables lock instead of failing when another tool holds it; the
        // method deadline bounds the wait.
        argv.push("-w".into());
        argv.extend(args.iter().cloned());
        self.run(ctx, argv).await
    }

    /// With IPv4 rules alone, fails when `ss` on the host shows a TCP socket over IPv6 on the
    /// port (listening or connected): the master is reachable where no rule drops it.
    async fn ensure_no_ipv6_socket(&self, ctx: &Context<'_>) -> Result<(), MethodOutcome> {
        if self.covers(Family::Ipv6) {
            return Ok(());
        }
        let port = ctx.target.port;
        let mut argv = self.prefix.clone();
        argv.extend(["ss", "-H", "-t", "-a", "-n", "-6", "sport", "=", &format!(":{port}")].map(String::from));
        match self.run(ctx, argv).await? {
            (0, stdout, _) if stdout.trim().is_empty() => Ok(()),
            (0, stdout, _) => Err(MethodOutcome::failed(format!(
                "only IPv4 rules are configured (`family: ipv4`), but a TCP socket uses port {port} over IPv6 on {}, \
                 where they would not cut it off ({}); use `family: both`",
                self.location(ctx),
                stdout.lines().next().unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ")
            ))),
            (code, _, stderr) => Err(MethodOutcome::failed(format!(
                "only IPv4 rules are configured (`family: ipv4`), and whether a socket uses port {port} over IPv6 \
                 cannot be told: `ss` exited {code}{}",
                suffix(&stderr)
            ))),
        }
    }

    /// The firewall can be read where the rules would go (over ssh, or on this host), for
    /// every family, and would reach the target.
    pub(crate) async fn check(&self, ctx: &Context<'_>) -> Readiness {
        if let Some(reason) = self.out_of_reach(ctx) {
            return Readiness::Problem { reason };
        }
        if let Err(outcome) = self.ensure_no_ipv6_socket(ctx).await {
            return problem(outcome);
        }
        for table in &self.tables {
            if let Err(outcome) = self.listing(ctx, table).await {
                return problem(outcome);
            }
        }
        let listed: Vec<String> = self.tables.iter().map(|t| format!("`{} -S`", t.program)).collect();
        Readiness::Ready {
            detail: format!("{}: each lists the firewall rules on {}", listed.join(" and "), self.location(ctx)),
        }
    }

    async fn listing(&self, ctx: &Context<'_>, table: &Table) -> Result<String, MethodOutcome> {
        match self.firewall(ctx, table, &["-S".to_string()]).await? {
            (0, stdout, _) => Ok(stdout),
            (code, _, stderr) => Err(MethodOutcome::failed(format!(
                "listing the {} firewall rules exited {code}{}",
                table.named(),
                suffix(&stderr)
            ))),
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
        if let Some(reason) = self.out_of_reach(ctx) {
            return Err(MethodOutcome::failed(reason));
        }
        self.ensure_no_ipv6_socket(ctx).await?;
        let tag = tag(node_id);
        let rules = rules(ctx.target.port, self.forward);
        let mut inserted = 0;
        for table in &self.tables {
            for rule in &rules {
                let spec = rule.spec(&tag);
                let mut check = vec!["-C".to_string(), rule.chain.to_string()];
                check.extend(spec.iter().cloned());
                match self.firewall(ctx, table, &check).await? {
                    (0, _, _) => continue, // already in place: fencing is idempotent
                    (1, _, _) => {}
                    (code, _, stderr) => {
                        return Err(MethodOutcome::failed(format!(
                            "checking the {} {} rule exited {code}{} ({inserted} new rules are in place; unfence \
                             removes them)",
                            table.named(),
                            rule.chain,
                            suffix(&stderr)
                        )))
                    }
                }
                // Insert at the top, ahead of any ACCEPT rule for established traffic.
                let mut insert = vec!["-I".to_string(), rule.chain.to_string(), "1".to_string()];
                insert.extend(spec);
                match self.firewall(ctx, table, &insert).await? {
                    (0, _, _) => inserted += 1,
                    (code, _, stderr) => {
                        return Err(MethodOutcome::failed(format!(
                            "inserting the {} {} rule exited {code}{} ({inserted} new rules are in place; unfence \
                             removes them)",
                            table.named(),
                            rule.chain,
                            suffix(&stderr)
                        )))
                    }
                }
            }
        }
        // Verified after every insertion, in every family: "fenced" needs all of them listed.
        for table in &self.tables {
            let listed = tagged_rules(&self.listing(ctx, table).await?, &tag);
            let missing: Vec<String> = rules
                .iter()
                .filter(|rule| !listed.iter().any(|tokens| rule.matches(tokens)))
                .map(|rule| format!("{} {} {}", rule.chain, rule.direction, rule.port))
                .collect();
            if !missing.is_empty() {
                return Err(MethodOutcome::failed(format!(
                    "{} rules not listed after insertion: {}",
                    table.named(),
                    missing.join(", ")
                )));
            }
        }
        let directions = if self.forward { "in both directions, forwarded too," } else { "in both directions" };
        let families: Vec<String> = self.tables.iter().map(Table::named).collect();
        Ok(MethodOutcome::fenced(format!(
            "tcp port {} dropped {directions} for {} on {} ({} rules tagged `{tag}` listed, {inserted} newly inserted)",
            ctx.target.port,
            families.join(" and "),
            self.location(ctx),
            rules.len() * self.tables.len()
        )))
    }

    fn location(&self, ctx: &Context<'_>) -> String {
        match &self.runner {
            Runner::Local => "this host".to_string(),
            Runner::Ssh(_) => ctx.target.host.clone(),
        }
    }

    /// Removes every rule tagged for the target and verifies none is left, in every family,
    /// whatever the others gave. Not refused for a target out of reach: removing only rules
    /// tagged for it can do no harm, and clears any an earlier version put here.
    pub(crate) async fn unfence(&self, ctx: &Context<'_>) -> MethodOutcome {
        let node_id = &ctx.target.node_id;
        if !is_plain_identifier(node_id) {
            return MethodOutcome::failed(format!("node id `{node_id}` cannot tag firewall rules"));
        }
        let tag = tag(node_id);
        let mut removed = Vec::new();
        let mut problems = Vec::new();
        for table in &self.tables {
            match self.unfence_table(ctx, table, &tag).await {
                Ok(count) => removed.push(format!("{count} {}", table.family.name())),
                Err(outcome) => problems.push(outcome),
            }
        }
        if problems.is_empty() {
            return MethodOutcome::fenced(format!(
                "removed {} rules tagged `{tag}` on {}; none left",
                removed.join(" and "),
                self.location(ctx)
            ));
        }
        // Indeterminate if any family's removal is unknown, else failed; every reason is told.
        let indeterminate = problems.iter().any(|p| matches!(p, MethodOutcome::Indeterminate { .. }));
        let mut reasons: Vec<String> = problems
            .into_iter()
            .map(|p| match p {
                MethodOutcome::Fenced { detail: reason }
                | MethodOutcome::Failed { reason }
                | MethodOutcome::Indeterminate { reason } => reason,
            })
            .collect();
        if !removed.is_empty() {
            reasons.push(format!("removed {} rules tagged `{tag}`", removed.join(" and ")));
        }
        if indeterminate {
            MethodOutcome::indeterminate(reasons.join("; "))
        } else {
            MethodOutcome::failed(reasons.join("; "))
        }
    }

    /// Removes the tagged rules of one family; how many were removed.
    async fn unfence_table(&self, ctx: &Context<'_>, table: &Table, tag: &str) -> Result<usize, MethodOutcome> {
        let listed = tagged_rules(&self.listing(ctx, table).await?, tag);
        for tokens in &listed {
            // `-S` prints `-A CHAIN spec...`; the same words after `-D` delete that rule.
            let mut delete = vec!["-D".to_string()];
            delete.extend(tokens[1..].iter().cloned());
            match self.firewall(ctx, table, &delete).await? {
                (0, _, _) => {}
                (code, _, stderr) => {
                    return Err(MethodOutcome::failed(format!(
                        "deleting `{}` from the {} firewall exited {code}{}",
                        tokens.join(" "),
                        table.named(),
                        suffix(&stderr)
                    )))
                }
            }
        }
        let left = tagged_rules(&self.listing(ctx, table).await?, tag);
        if !left.is_empty() {
            return Err(MethodOutcome::failed(format!(
                "{} {} rules tagged `{tag}` still listed after deletion",
                left.len(),
                table.named()
            )));
        }
        Ok(listed.len())
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
    fn a_prefix_entering_another_network_namespace_is_told_from_one_that_does_not() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(enters_another_netns(&words(&["ip", "netns", "exec", "ns1"])));
        assert!(enters_another_netns(&words(&["sudo", "-n", "/usr/bin/nsenter", "-t", "42", "-n"])));
        assert!(!enters_another_netns(&words(&["sudo", "-n"])));
        assert!(!enters_another_netns(&[]));
        assert!(is_ipv6_literal("::1") && is_ipv6_literal("[2001:db8::5]"));
        assert!(!is_ipv6_literal("10.0.0.12") && !is_ipv6_literal("db2.example.internal"));
    }

    #[test]
    fn both_directions_and_optionally_forward_are_covered() {
        let r = rules(80, true);
        assert_eq!(r.len(), 4);
        assert_eq!(r[1].spec("t"), ["-p", "tcp", "--sport", "80", "-m", "comment", "--comment", "t", "-j", "DROP"]);
        assert_eq!(rules(80, false).len(), 2);
    }
}
