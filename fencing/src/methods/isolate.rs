//! `isolate`: cut the master's port off the network with firewall rules on its host.
//!
//! Rules drop TCP traffic to the port (INPUT `--dport`) and from it (OUTPUT `--sport`), and,
//! with `forward`, for masters behind NAT or in containers on the host, both directions of
//! every forwarded connection first addressed to the port (FORWARD `-m conntrack
//! --ctorigdstport`): a port published through DNAT to another (Docker's `-p 8080:80`) reaches
//! FORWARD with the container's port as its destination, and only the connection's original
//! tuple still names the target's. Matching both directions, rather than only new connections,
//! stops established connections too: the master neither receives requests nor gets replies
//! out.
//!
//! The rules go into the IPv4 firewall (`iptables`) and, by default, the IPv6 one
//! (`ip6tables`) as well: a master bound to `[::]` serves both, and rules for IPv4 alone leave
//! it reachable to every client that resolves its name to an IPv6 address. With `family` left
//! at its default, a host where `ip6tables` cannot initialise its table (a kernel with IPv6
//! off, or one that cannot load the IPv6 table module: the two print the same) or where there
//! is no IPv6 program (not installed, or none to derive from `program`) is isolated over IPv4
//! alone under the socket check of `family: ipv4`, which a kernel without IPv6 passes, and the
//! detail says so. With `family: ipv4` (a host without IPv6) the fence fails wherever IPv6
//! could reach the master: an IPv6 target, or a TCP socket over IPv6 on the port (`ss -6`). An
//! explicit `family: both` requires the IPv6 rules.
//!
//! Every rule carries the comment `referee-fence:<node id>`. Fencing checks each rule
//! (`-C`) before inserting it, so repeating a fence adds nothing; it then lists the rules
//! (`-S`) and is fenced only when all of them are listed, in every family. Unfencing deletes
//! exactly the listed rules bearing that comment and verifies none is left. The commands run
//! locally (with an optional prefix such as `sudo -n` or `ip netns exec`) or on the target over
//! ssh; an unreachable host is a failure, never a pretended success. Run locally, they act on
//! this host (or the namespace the prefix enters), so a target on another host is refused: its
//! master would keep serving while the rules cut off this host's own. This host is named by
//! its names, its interfaces' addresses and `local_hosts`, where the operator also lists its
//! containers' addresses (a master behind NAT or in a container here is cut off by the
//! FORWARD rules of `forward`; its address alone cannot tell it from another host's).

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
    /// The IPv4 firewall.
    ipv4: Table,
    /// What is done for IPv6.
    ipv6: Ipv6,
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

/// What `isolate` does for IPv6.
#[derive(Debug)]
enum Ipv6 {
    /// Nothing (`family: ipv4`): the `ss -6` check fails the fence where IPv6 reaches the port.
    Off,
    /// Rules in `ip6tables`, required (`family: both` set explicitly).
    Required(Table),
    /// Rules in `ip6tables` where the host has IPv6 (`family` left at its default); where they
    /// cannot go in (no program, no table: a kernel with IPv6 off) the `ss -6` check applies.
    IfPresent(Table),
    /// No IPv6 program to derive from `program` (`family` left at its default): the `ss -6`
    /// check applies.
    Underivable,
}

/// The firewalls one operation uses on the host, once what it has of IPv6 is known.
struct InEffect<'a> {
    /// IPv4 first.
    tables: Vec<&'a Table>,
    /// With IPv4 rules alone where IPv6 may reach the master: why, for the `ss -6` check's
    /// messages, and what to do about it.
    ss_check: Option<(String, String)>,
    /// What the host lacks of IPv6, for the detail.
    note: Option<String>,
}

/// What an optional IPv6 firewall gave when listed.
enum Probe {
    Present,
    /// The program cannot initialise its table: the kernel has IPv6 turned off, or cannot load
    /// the IPv6 table module while IPv6 is up. No IPv6 rules can go in either way.
    KernelOff(String),
    /// The program is not installed where the rules go.
    NoProgram(String),
}

/// Whether `ip6tables` failed because it cannot initialise its table: the kernel has no IPv6
/// (booted with `ipv6.disable=1`), or cannot load the table module, which prints the same.
fn kernel_has_no_ipv6(code: i32, stderr: &str) -> bool {
    code != 0
        && (stderr.contains("can't initialize ip6tables table") || stderr.contains("Address family not supported"))
}

/// Whether a command failed because its program is not installed: a shell's or `sudo`'s "not
/// found" (127), or `ip netns exec`'s and `nsenter`'s failed exec.
fn program_missing(code: i32, stderr: &str) -> bool {
    code == 127 || (code != 0 && (stderr.contains("command not found") || stderr.contains("No such file or directory")))
}

/// The first line of `stderr`, trimmed.
fn first_line(stderr: &str) -> String {
    stderr.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").to_string()
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

/// What of a TCP packet a rule matches against the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortMatch {
    /// The packet's destination port (`--dport`).
    Destination,
    /// The packet's source port (`--sport`).
    Source,
    /// The destination port its connection was first addressed to (`-m conntrack
    /// --ctorigdstport`), in both directions: the original tuple is kept through DNAT, so it
    /// still names the port after `nat PREROUTING` has rewritten the packet's destination.
    OriginalDestination,
}

impl PortMatch {
    /// The match module and the option naming the port.
    fn words(self) -> (&'static [&'static str], &'static str) {
        match self {
            PortMatch::Destination => (&[], "--dport"),
            PortMatch::Source => (&[], "--sport"),
            PortMatch::OriginalDestination => (&["-m", "conntrack"], "--ctorigdstport"),
        }
    }
}

/// One rule: chain and the match/target arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub chain: &'static str,
    pub matching: PortMatch,
    pub port: u16,
}

impl Rule {
    fn spec(&self, tag: &str) -> Vec<String> {
        let (module, option) = self.matching.words();
        let port = self.port.to_string();
        ["-p", "tcp"]
            .iter()
            .chain(module)
            .chain(&[option, &port, "-m", "comment", "--comment", tag, "-j", "DROP"])
            .map(|s| s.to_string())
            .collect()
    }

    /// Whether a tokenised `-S` line is this rule.
    fn matches(&self, tokens: &[String]) -> bool {
        let (_, option) = self.matching.words();
        let port = self.port.to_string();
        tokens.len() >= 2
            && tokens[0] == "-A"
            && tokens[1] == self.chain
            && tokens.windows(2).any(|w| w[0] == option && w[1] == port)
            && tokens.ends_with(&["-j".to_string(), "DROP".to_string()])
    }

    /// How a sentence names it: "FORWARD --ctorigdstport 8080".
    fn named(&self) -> String {
        format!("{} {} {}", self.chain, self.matching.words().1, self.port)
    }
}

/// The rules isolating `port` (the same for both families).
///
/// With `forward`, FORWARD drops both directions of every connection first addressed to the
/// port: one forwarded on the same port, and one published through DNAT on another (Docker's
/// `-p 8080:80`: the target's port is the host's 8080, but by the time FORWARD sees a packet
/// its destination reads 80, and its replies' source 80), which `--dport`/`--sport` would
/// miss. One rule rather than three: over ssh each rule costs two sessions per family within
/// the method's deadline.
pub(crate) fn rules(port: u16, forward: bool) -> Vec<Rule> {
    let rule = |chain, matching| Rule { chain, matching, port };
    let mut rules = vec![rule("INPUT", PortMatch::Destination), rule("OUTPUT", PortMatch::Source)];
    if forward {
        rules.push(rule("FORWARD", PortMatch::OriginalDestination));
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
        let ipv6 = match (config.family(), config.program6()) {
            (IsolateFamily::Ipv4, _) => Ipv6::Off,
            (IsolateFamily::Both, Some(program)) if config.family_explicit() => {
                Ipv6::Required(Table { family: Family::Ipv6, program })
            }
            (IsolateFamily::Both, Some(program)) => Ipv6::IfPresent(Table { family: Family::Ipv6, program }),
            // Validation guarantees a program for IPv6 with an explicit `family: both`.
            (IsolateFamily::Both, None) => Ipv6::Underivable,
        };
        Isolate {
            runner,
            ipv4: Table { family: Family::Ipv4, program: config.program.clone() },
            ipv6,
            prefix: config.command_prefix.clone(),
            forward: config.forward,
            this_host: ThisHost::new(&config.local_hosts),
        }
    }

    /// Why the rules would not reach the target's master, if they would not: run here for a
    /// target on another host. An address this host cannot tell is its own is refused, even
    /// with `forward`: a container's address here and another host's on the same network look
    /// alike, and rules here cut off nothing of the latter. The operator lists the former in
    /// `local_hosts`. Whether a name is this host's is told by the deadline (a lookup of it
    /// that does not answer by then leaves it out of reach).
    async fn out_of_reach(&self, ctx: &Context<'_>) -> Option<String> {
        let host = &ctx.target.host;
        let here = matches!(self.runner, Runner::Local) && !enters_another_netns(&self.prefix);
        if !here {
            return None;
        }
        match self.this_host.is(host, ctx.deadline).await {
            Ok(true) => None,
            Ok(false) => Some(format!(
                "target host `{host}` is not this host: with `via: local` the rules would go into this host's \
                 firewall and cut off nothing of the target (use `via: ssh`, prefix the commands to enter the \
                 master's network namespace, or list the names and addresses by which targets on this host are \
                 named, a container's here among them, in local_hosts)"
            )),
            Err(why) => Some(format!(
                "cannot tell whether target host `{host}` is this host, so no rule went in: {why} (list this \
                 host's names in local_hosts)"
            )),
        }
    }

    /// Lists the optional IPv6 firewall to learn what the host has of IPv6.
    async fn probe(&self, ctx: &Context<'_>, table: &Table) -> Result<Probe, MethodOutcome> {
        let local_spawn = matches!(self.runner, Runner::Local) && self.prefix.is_empty();
        match self.firewall(ctx, table, &["-S".to_string()]).await {
            Ok((0, _, _)) => Ok(Probe::Present),
            Ok((code, _, stderr)) if kernel_has_no_ipv6(code, &stderr) => Ok(Probe::KernelOff(first_line(&stderr))),
            Ok((code, _, stderr)) if program_missing(code, &stderr) => Ok(Probe::NoProgram(first_line(&stderr))),
            Ok((code, _, stderr)) => Err(MethodOutcome::failed(format!(
                "listing the {} firewall rules exited {code}{}",
                table.named(),
                suffix(&stderr)
            ))),
            Err(MethodOutcome::Failed { reason }) if local_spawn && reason.contains("No such file or directory") => {
                Ok(Probe::NoProgram(reason))
            }
            Err(outcome) => Err(outcome),
        }
    }

    /// The firewalls this operation uses, once the host's IPv6 is known; fails for an IPv6
    /// target where no IPv6 rules go in.
    async fn in_effect(&self, ctx: &Context<'_>) -> Result<InEffect<'_>, MethodOutcome> {
        let mut effect = InEffect { tables: vec![&self.ipv4], ss_check: None, note: None };
        match &self.ipv6 {
            Ipv6::Off => {
                effect.ss_check = Some((
                    "only IPv4 rules are configured (`family: ipv4`)".to_string(),
                    "use `family: both`".to_string(),
                ))
            }
            Ipv6::Required(table) => effect.tables.push(table),
            Ipv6::Underivable => {
                effect.ss_check = Some((
                    format!(
                        "only IPv4 rules go in (`{}` is not an iptables program to derive the IPv6 one from)",
                        self.ipv4.program
                    ),
                    "set program6".to_string(),
                ));
                effect.note = Some(format!("no IPv6 firewall program (`{}` names none)", self.ipv4.program));
            }
            Ipv6::IfPresent(table) => match self.probe(ctx, table).await? {
                Probe::Present => effect.tables.push(table),
                // The same message comes from a kernel without IPv6 and from one with IPv6 up
                // whose IPv6 table module cannot be loaded (module loading locked after boot, a
                // kernel built without it): the socket check tells them apart where it matters,
                // since a kernel without IPv6 has no IPv6 socket.
                Probe::KernelOff(why) => {
                    effect.ss_check = Some((
                        format!("only IPv4 rules go in (`{}` cannot initialise its table: {why})", table.program),
                        "load the IPv6 firewall's table module there (ip6table_filter), or set program6 to an IPv6 \
                         firewall that works"
                            .to_string(),
                    ));
                    effect.note = Some(format!(
                        "no IPv6 rules: `{}` cannot initialise its table on {} ({why}; no IPv6 in the kernel?), and \
                         no TCP socket uses the port over IPv6",
                        table.program,
                        self.location(ctx)
                    ))
                }
                Probe::NoProgram(why) => {
                    effect.ss_check = Some((
                        format!("only IPv4 rules go in (`{}` is not installed: {why})", table.program),
                        "install it, or set program6".to_string(),
                    ));
                    effect.note = Some(format!(
                        "no IPv6 rules: `{}` is not installed on {}, and no TCP socket uses the port over IPv6",
                        table.program,
                        self.location(ctx)
                    ));
                }
            },
        }
        let host = &ctx.target.host;
        if effect.tables.len() == 1 && is_ipv6_literal(host) {
            let why = match (&effect.ss_check, &effect.note) {
                (Some((why, advice)), _) => format!("{why}; {advice}"),
                (None, Some(note)) => note.clone(),
                (None, None) => "only IPv4 rules go in".to_string(),
            };
            return Err(MethodOutcome::failed(format!("target host `{host}` is an IPv6 address, but {why}")));
        }
        Ok(effect)
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
    async fn ensure_no_ipv6_socket(&self, ctx: &Context<'_>, effect: &InEffect<'_>) -> Result<(), MethodOutcome> {
        let Some((why, advice)) = &effect.ss_check else {
            return Ok(());
        };
        let port = ctx.target.port;
        let mut argv = self.prefix.clone();
        argv.extend(["ss", "-H", "-t", "-a", "-n", "-6", "sport", "=", &format!(":{port}")].map(String::from));
        match self.run(ctx, argv).await? {
            (0, stdout, _) if stdout.trim().is_empty() => Ok(()),
            (0, stdout, _) => Err(MethodOutcome::failed(format!(
                "{why}, but a TCP socket uses port {port} over IPv6 on {}, where they would not cut it off ({}); \
                 {advice}",
                self.location(ctx),
                stdout.lines().next().unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ")
            ))),
            (code, _, stderr) => Err(MethodOutcome::failed(format!(
                "{why}, and whether a socket uses port {port} over IPv6 cannot be told: `ss` exited {code}{}",
                suffix(&stderr)
            ))),
        }
    }

    /// The firewall can be read where the rules would go (over ssh, or on this host), for
    /// every family, and would reach the target.
    pub(crate) async fn check(&self, ctx: &Context<'_>) -> Readiness {
        if let Some(reason) = self.out_of_reach(ctx).await {
            return Readiness::Problem { reason };
        }
        let effect = match self.in_effect(ctx).await {
            Ok(effect) => effect,
            Err(outcome) => return problem(outcome),
        };
        if let Err(outcome) = self.ensure_no_ipv6_socket(ctx, &effect).await {
            return problem(outcome);
        }
        for table in &effect.tables {
            if let Err(outcome) = self.listing(ctx, table).await {
                return problem(outcome);
            }
        }
        let listed: Vec<String> = effect.tables.iter().map(|t| format!("`{} -S`", t.program)).collect();
        Readiness::Ready {
            detail: format!(
                "{}: each lists the firewall rules on {}{}",
                listed.join(" and "),
                self.location(ctx),
                effect.note.as_ref().map(|n| format!("; {n}")).unwrap_or_default()
            ),
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
        if let Some(reason) = self.out_of_reach(ctx).await {
            return Err(MethodOutcome::failed(reason));
        }
        let effect = self.in_effect(ctx).await?;
        self.ensure_no_ipv6_socket(ctx, &effect).await?;
        let tag = tag(node_id);
        let rules = rules(ctx.target.port, self.forward);
        let mut inserted = 0;
        for table in &effect.tables {
            for rule in &rules {
                let spec = rule.spec(&tag);
                let mut check = vec!["-C".to_string(), rule.chain.to_string()];
                check.extend(spec.iter().cloned());
                let failed = |doing: &str, code: i32, stderr: &str, inserted: usize| {
                    MethodOutcome::failed(format!(
                        "{doing} the {} {} rule exited {code}{} ({inserted} new rules are in place; unfence removes \
                         them)",
                        table.named(),
                        rule.chain,
                        suffix(stderr)
                    ))
                };
                match self.firewall(ctx, table, &check).await? {
                    (0, _, _) => continue, // already in place: fencing is idempotent
                    (1, _, _) => {}
                    (code, _, stderr) => return Err(failed("checking", code, &stderr, inserted)),
                }
                // Insert at the top, ahead of any ACCEPT rule for established traffic.
                let mut insert = vec!["-I".to_string(), rule.chain.to_string(), "1".to_string()];
                insert.extend(spec);
                match self.firewall(ctx, table, &insert).await? {
                    (0, _, _) => inserted += 1,
                    (code, _, stderr) => return Err(failed("inserting", code, &stderr, inserted)),
                }
            }
        }
        // Verified after every insertion, in every family: "fenced" needs all of them listed.
        for table in &effect.tables {
            let listed = tagged_rules(&self.listing(ctx, table).await?, &tag);
            let missing: Vec<String> = rules
                .iter()
                .filter(|rule| !listed.iter().any(|tokens| rule.matches(tokens)))
                .map(Rule::named)
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
        let families: Vec<String> = effect.tables.iter().map(|t| t.named()).collect();
        Ok(MethodOutcome::fenced(format!(
            "tcp port {} dropped {directions} for {} on {} ({} rules tagged `{tag}` listed, {inserted} newly \
             inserted){}",
            ctx.target.port,
            families.join(" and "),
            self.location(ctx),
            rules.len() * effect.tables.len(),
            effect.note.as_ref().map(|n| format!("; {n}")).unwrap_or_default()
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
        let mut tables = vec![&self.ipv4];
        let mut note = None;
        match &self.ipv6 {
            Ipv6::Off | Ipv6::Underivable => {}
            Ipv6::Required(table) => tables.push(table),
            // No IPv6 firewall on the host holds no IPv6 rules to remove.
            Ipv6::IfPresent(table) => match self.probe(ctx, table).await {
                Ok(Probe::Present) => tables.push(table),
                Ok(Probe::KernelOff(why)) => {
                    note = Some(format!(
                        "no IPv6 rules on {}: `{}` cannot initialise its table ({why})",
                        self.location(ctx),
                        table.program
                    ))
                }
                Ok(Probe::NoProgram(why)) => {
                    note = Some(format!("no IPv6 rules: `{}` is not installed ({why})", table.program))
                }
                Err(outcome) => problems.push(outcome),
            },
        }
        for table in tables {
            match self.unfence_table(ctx, table, &tag).await {
                Ok(count) => removed.push(format!("{count} {}", table.family.name())),
                Err(outcome) => problems.push(outcome),
            }
        }
        if problems.is_empty() {
            return MethodOutcome::fenced(format!(
                "removed {} rules tagged `{tag}` on {}; none left{}",
                removed.join(" and "),
                self.location(ctx),
                note.map(|n| format!("; {n}")).unwrap_or_default()
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
        let r = rules(8080, true);
        assert_eq!(r.len(), 3);
        assert_eq!(r[1].spec("t"), ["-p", "tcp", "--sport", "8080", "-m", "comment", "--comment", "t", "-j", "DROP"]);
        assert_eq!(r[2].spec("t").join(" "), "-p tcp -m conntrack --ctorigdstport 8080 -m comment --comment t -j DROP");
        assert_eq!(rules(8080, false).len(), 2);
    }

    #[test]
    fn a_forward_rule_on_the_original_destination_is_told_from_a_plain_port_rule() {
        // What an earlier version put in FORWARD does not count as the rule now required.
        let listing = "-A FORWARD -p tcp -m tcp --dport 8080 -m comment --comment \"referee-fence:n1\" -j DROP\n\
                       -A FORWARD -p tcp -m conntrack --ctorigdstport 8080 -m comment --comment \"referee-fence:n1\" -j DROP\n";
        let tagged = tagged_rules(listing, &tag("n1"));
        let original = &rules(8080, true)[2];
        assert!(original.matches(&tagged[1]) && !original.matches(&tagged[0]));
        assert_eq!(original.named(), "FORWARD --ctorigdstport 8080");
    }
}
