//! Every configuration shipped in `config/` loads with its daemon's own loader, and the files
//! that describe one deployment agree with each other: the three coordinator servers list the
//! same ensemble, each is the server it says it is, and the agents connect to exactly those
//! servers with the staleness bound an ensemble needs and a lease left for their promotion.
//! Every key the loaders accept is described in the reference files, every section refuses a
//! key it does not know, and the values the reference files show commented out are the defaults.
//!
//! The HAProxy configuration sends traffic to the masters the agent configurations name and
//! checks each at its agent's probe port.
//!
//! A YAML file added to `config/` that this test does not know fails it: say here which daemon
//! reads it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use referee_coordinator::config::{CoordinatorConfig, Role};
use referee_failover_agent::config::AgentConfig;

/// The agents' default requested session timeout, which every shipped coordinator must grant.
const AGENT_SESSION_MS: i32 = 2500;

/// The shipped deployment's coordinator servers, one file each, server 1 first.
const ENSEMBLE: [&str; 3] = ["coordinator-coord1.yaml", "coordinator-coord2.yaml", "coordinator-coord3.yaml"];

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// Every `*.yaml` directly in `config/`, by file name.
fn shipped_yaml() -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(config_dir()).context("reading config/")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            names.insert(name);
        }
    }
    Ok(names)
}

fn coordinator(name: &str) -> Result<CoordinatorConfig> {
    CoordinatorConfig::load(&config_dir().join(name)).with_context(|| format!("config/{name}"))
}

fn agent(name: &str) -> Result<AgentConfig> {
    AgentConfig::load(&config_dir().join(name)).with_context(|| format!("config/{name}"))
}

#[test]
fn every_shipped_config_loads_with_its_daemons_loader() -> Result<()> {
    let names = shipped_yaml()?;
    ensure!(names.len() >= 6, "config/ holds {names:?}");
    for name in &names {
        if name.starts_with("coordinator") {
            let c = coordinator(name)?;
            ensure!(
                c.negotiate_timeout(AGENT_SESSION_MS) == AGENT_SESSION_MS,
                "config/{name} grants {} ms for the agents' {AGENT_SESSION_MS} ms session (its minimum is {} ms)",
                c.negotiate_timeout(AGENT_SESSION_MS),
                c.min_session_timeout_ms()
            );
        } else if name.starts_with("agent-") {
            agent(name)?;
        } else {
            bail!("config/{name} is not known to this test: check it with its daemon's loader here");
        }
    }
    for name in ENSEMBLE.iter().chain(&["coordinator.yaml", "agent-db1.yaml", "agent-db2.yaml"]) {
        ensure!(names.contains(*name), "config/{name} is missing; config/ holds {names:?}");
    }
    Ok(())
}

#[test]
fn the_three_coordinator_servers_describe_one_ensemble() -> Result<()> {
    let servers: Vec<CoordinatorConfig> = ENSEMBLE.iter().map(|n| coordinator(n)).collect::<Result<_>>()?;
    let first = &servers[0];
    ensure!(first.servers.len() == 3, "the ensemble lists {} servers", first.servers.len());
    ensure!(first.servers.iter().all(|s| s.role == Role::Voter), "three voters: {:?}", first.servers);
    for (k, (name, c)) in ENSEMBLE.iter().zip(&servers).enumerate() {
        ensure!(c.cluster_id.is_some() && c.cluster_id == first.cluster_id, "{name}: cluster_id {:?}", c.cluster_id);
        ensure!(c.servers == first.servers, "{name} lists other servers than {}", ENSEMBLE[0]);
        ensure!(c.server_id == Some(k as u64 + 1), "{name} is server {:?}, not {}", c.server_id, k + 1);
        let me = c.this_server().with_context(|| format!("{name} is not among its servers"))?;
        ensure!(me.client == c.listen, "{name} listens on {} but is listed at {}", c.listen, me.client);
    }
    Ok(())
}

#[test]
fn the_agents_connect_to_every_coordinator_server_and_keep_a_lease() -> Result<()> {
    let ensemble = coordinator(ENSEMBLE[0])?;
    let clients: BTreeSet<String> = ensemble.servers.iter().map(|s| s.client.to_string()).collect();
    for name in ["agent-db1.yaml", "agent-db2.yaml"] {
        let a = agent(name)?;
        let connect: BTreeSet<String> = a.coordinator.connect.split(',').map(|s| s.trim().to_string()).collect();
        ensure!(connect == clients, "{name} connects to {connect:?}, the ensemble's servers are {clients:?}");
        ensure!(
            a.coordinator.max_staleness_ms == 100,
            "{name}: on the bundled ensemble max_staleness_ms is 100, not {}",
            a.coordinator.max_staleness_ms
        );
        let granted = Duration::from_millis(ensemble.negotiate_timeout(a.coordinator.session_timeout_ms as i32) as u64);
        // 2500 - 100 (staleness) - 500 (demotion deadline) - 250 (margin)
        ensure!(
            a.lease_budget(granted) == Some(Duration::from_millis(1650)),
            "{name}: the lease from a {granted:?} session is {:?}",
            a.lease_budget(granted)
        );
    }
    Ok(())
}

/// `config/haproxy.cfg` (HAProxy reads it; `tests/e2e_haproxy.rs` runs it) sends each backend's
/// traffic to the masters the agent configurations name and checks them at those agents' probe
/// ports: for every agent, one `server` line per backend with its master's `host:port` and
/// `check port` its `probes.listen` port, and no server line naming anything else.
#[test]
fn the_haproxy_config_names_each_agents_master_and_probe_port() -> Result<()> {
    let text = std::fs::read_to_string(config_dir().join("haproxy.cfg")).context("config/haproxy.cfg")?;
    let servers: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.first() == Some(&"server"))
        .collect();
    let backends = text.lines().filter(|l| l.starts_with("listen masters_")).count();
    ensure!(
        backends == 2,
        "config/haproxy.cfg has {backends} `listen masters_*` sections, not the write and read ones"
    );
    let mut expected = Vec::new();
    for name in ["agent-db1.yaml", "agent-db2.yaml"] {
        let a = agent(name)?;
        let line = vec![
            "server".to_string(),
            a.node_id.clone(),
            format!("{}:{}", a.master.host, a.master.port),
            "check".to_string(),
            "port".to_string(),
            a.probes.listen.port().to_string(),
        ];
        let found = servers.iter().filter(|w| **w == line).count();
        ensure!(
            found == backends,
            "config/haproxy.cfg has `{}` {found} times, once per backend expected",
            line.join(" ")
        );
        expected.push(line);
    }
    ensure!(
        servers.len() == expected.len() * backends,
        "config/haproxy.cfg has server lines for masters no agent configuration names: {servers:?}"
    );
    Ok(())
}

/// A key no loader accepts, put into a section to make its loader name the keys it does.
const PROBE: &str = "zz_probe_for_the_accepted_keys";

/// Sections whose keys are the operator's own, not the loader's, with everything in them: HTTP
/// headers, a fence agent's options, and maps keyed by node id.
const FREE_FORM: [&str; 5] = ["headers", "options", "node_delay_ms", "peers", "nodes"];

/// The keys `load` accepts in every section of `doc` (a shipped configuration that loads),
/// as the loader itself names them: each section (every mapping in the document) is given the
/// unknown key [`PROBE`], and the refusal lists the section's fields (serde's `deny_unknown_fields`
/// error: "unknown field `…`, expected one of `a`, `b`"). Returns (section path, its keys).
fn accepted_keys(doc: &str, load: Loader) -> Result<Vec<(String, Vec<String>)>> {
    fn sections(v: &serde_yaml::Value, path: String, out: &mut Vec<String>) {
        match v {
            serde_yaml::Value::Mapping(m) => {
                out.push(path.clone());
                for (k, child) in m {
                    sections(child, format!("{path}.{}", k.as_str().unwrap_or("?")), out);
                }
            }
            serde_yaml::Value::Sequence(s) => {
                for (i, child) in s.iter().enumerate() {
                    sections(child, format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    fn at<'a>(v: &'a mut serde_yaml::Value, path: &str) -> Option<&'a mut serde_yaml::Mapping> {
        let mut v = v;
        for step in path.split('.').filter(|s| !s.is_empty()) {
            let (key, index) = match step.split_once('[') {
                Some((k, i)) => (k, Some(i.trim_end_matches(']').parse::<usize>().ok()?)),
                None => (step, None),
            };
            v = v.as_mapping_mut()?.get_mut(key)?;
            if let Some(i) = index {
                v = v.as_sequence_mut()?.get_mut(i)?;
            }
        }
        v.as_mapping_mut()
    }
    let parsed: serde_yaml::Value = serde_yaml::from_str(doc)?;
    let mut paths = Vec::new();
    sections(&parsed, String::new(), &mut paths);
    let mut found = Vec::new();
    for path in paths {
        // Within a free-form map (a mapping there: "peers" of the agent is a list, and probed).
        if path.split('.').any(|step| FREE_FORM.contains(&step)) {
            continue;
        }
        let mut probed = parsed.clone();
        let Some(section) = at(&mut probed, &path) else { bail!("no section at {path:?}") };
        section.insert(PROBE.into(), "1".into());
        let refusal = match load(&serde_yaml::to_string(&probed)?) {
            Ok(()) => {
                bail!("the section {path:?} took the unknown key {PROBE}: a misspelt key there would pass unremarked")
            }
            Err(e) => format!("{e:#}"),
        };
        if refusal.contains(&format!("unknown field `{PROBE}`, there are no fields")) {
            found.push((path, Vec::new()));
            continue;
        }
        let Some(expected) = refusal.split(&format!("unknown field `{PROBE}`, expected")).nth(1) else {
            bail!("the section {path:?} with the unknown key {PROBE} was refused for another reason: {refusal}")
        };
        let keys = expected.split('`').skip(1).step_by(2).map(str::to_owned).collect();
        found.push((path, keys));
    }
    Ok(found)
}

/// What the agent's reference file leaves commented out, merged in to be probed as well.
const AGENT_HOOKS: &str = "hooks: {pre_promote: {command: [/bin/true], timeout_ms: 100}, \
                           on_role_change: {command: [/bin/true], timeout_ms: 100}}";
const AGENT_COMMAND_ADAPTER: &str = "master: {adapter: {kind: command, health: [/bin/true], state: [/bin/true], \
                                     promote: [/bin/true], demote: [/bin/true], timeout_ms: 2000}}";
const AGENT_OCF_ADAPTER: &str = "master: {adapter: {kind: ocf, agent: \"heartbeat:pgsql\", \
                                 token_file: /tmp/referee-probe.token}}";

/// `doc` with the mapping `patch` merged in, section by section: each key of a section of
/// `patch` replaces (or adds) that key of `doc`'s section; a section `doc` lacks is added whole.
fn merged(doc: &str, patch: &str) -> Result<String> {
    let mut value: serde_yaml::Value = serde_yaml::from_str(doc)?;
    let top = value.as_mapping_mut().context("a configuration is a mapping")?;
    let patch: serde_yaml::Mapping = serde_yaml::from_str(patch)?;
    for (section, keys) in patch {
        match (top.get_mut(&section).and_then(|s| s.as_mapping_mut()), keys) {
            (Some(ours), serde_yaml::Value::Mapping(keys)) => ours.extend(keys),
            (_, keys) => {
                top.insert(section, keys);
            }
        }
    }
    Ok(serde_yaml::to_string(&value)?)
}

/// A file to probe, and what to merge into it first (see [`merged`]).
type Probed<'a> = (&'a str, &'a str);
/// A daemon's loader, given YAML text.
type Loader<'a> = &'a dyn Fn(&str) -> Result<()>;

/// Whether `text` names `key` as a whole word (as a key, set or commented out, or in the
/// prose around one).
fn mentions(text: &str, key: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(key).any(|(at, _)| !text[..at].ends_with(word) && !text[at + key.len()..].starts_with(word))
}

/// Every key a loader accepts, in every section the shipped files use, is described in the
/// daemon's reference file (`config/coordinator.yaml`; `config/agent-db1.yaml` with
/// `fencing/fencing.example.yaml` for the fencing methods), set or commented out, so an
/// operator finds each setting by reading the file.
#[test]
fn every_key_the_loaders_accept_is_described_in_the_reference_configs() -> Result<()> {
    let read = |p: PathBuf| std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let coordinator_load = |t: &str| CoordinatorConfig::from_yaml(t).map(drop).map_err(anyhow::Error::from);
    let agent_load = |t: &str| AgentConfig::from_yaml(t).map(drop).map_err(anyhow::Error::from);
    let fencing_load =
        |t: &str| referee_fencing::config::FencingConfig::from_yaml_str(t).map(drop).map_err(anyhow::Error::from);
    let coordinator_text = read(config_dir().join("coordinator.yaml"))?;
    let fencing_text = read(root.join("fencing/fencing.example.yaml"))?;
    let agent_text = read(config_dir().join("agent-db1.yaml"))? + &fencing_text;
    // Each file probed as shipped, and with what it leaves commented out merged in (`PATCHES`).
    let daemons: [(&str, &[Probed], Loader, &str); 3] = [
        (
            "config/coordinator.yaml",
            &[("config/coordinator.yaml", "{}"), ("config/coordinator-coord1.yaml", "{}")],
            &coordinator_load,
            &coordinator_text,
        ),
        (
            "config/agent-db1.yaml",
            &[
                ("config/agent-db1.yaml", "{}"),
                ("config/agent-db1.yaml", AGENT_HOOKS),
                ("config/agent-db1.yaml", AGENT_COMMAND_ADAPTER),
                ("config/agent-db1.yaml", AGENT_OCF_ADAPTER),
            ],
            &agent_load,
            &agent_text,
        ),
        ("fencing/fencing.example.yaml", &[("fencing/fencing.example.yaml", "{}")], &fencing_load, &fencing_text),
    ];
    let mut missing = Vec::new();
    let mut sections = 0;
    for (reference, files, load, text) in daemons {
        for (file, patch) in files {
            let doc = merged(&read(root.join(file))?, patch)?;
            load(&doc).with_context(|| format!("{file} with {patch}"))?;
            for (path, keys) in accepted_keys(&doc, load)? {
                sections += 1;
                for key in keys {
                    if !mentions(text, &key) {
                        let section =
                            if path.is_empty() { "the top level".to_owned() } else { format!("`{}`", &path[1..]) };
                        missing.push(format!("{key} (in {section}, as {file} has it): describe it in {reference}"));
                    }
                }
            }
        }
    }
    ensure!(sections >= 10, "only {sections} sections were probed: the loaders' refusals no longer name their fields?");
    missing.sort();
    missing.dedup();
    ensure!(
        missing.is_empty(),
        "keys the loaders accept that no reference config describes:\n  {}",
        missing.join("\n  ")
    );
    Ok(())
}

/// The values a reference config shows commented out are the loader's defaults, or examples of
/// a key that is unset by default: uncommenting a line `# key: value` (in place, in its section)
/// either loads the same configuration as the file as shipped, or sets a key the shipped file
/// leaves unset. Returns how many such lines were checked.
fn commented_values_are_defaults(file: &str, load: &dyn Fn(&str) -> Result<String>) -> Result<usize> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))?;
    let shipped = load(&text)?;
    let mut checked = 0;
    for (n, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let Some((key, value)) = line.trim_start().strip_prefix("# ").and_then(|l| l.split_once(": ")) else {
            continue;
        };
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') || value.trim().is_empty() {
            continue;
        }
        let uncommented = format!("{}{key}: {value}", &line[..indent]);
        let mut lines: Vec<&str> = text.lines().collect();
        lines[n] = &uncommented;
        let unset_by_default = shipped.contains(&format!("{key}: None")) || shipped.contains(&format!("{key}: []"));
        let loaded = match load(&lines.join("\n")) {
            Ok(c) => c,
            // Prose that happens to read as `key: value` (no such key there) is not a setting.
            Err(e) if format!("{e:#}").contains("unknown field") => continue,
            // An example of an optional key that needs others with it (server_id and servers).
            Err(_) if unset_by_default => continue,
            Err(e) => bail!("{file} line {}: `{}` does not load: {e:#}", n + 1, uncommented.trim()),
        };
        checked += 1;
        ensure!(
            loaded == shipped || unset_by_default,
            "{file} line {}: `{}` is shown as the default, but the loader's default differs",
            n + 1,
            uncommented.trim()
        );
    }
    Ok(checked)
}

#[test]
fn the_reference_configs_commented_values_are_the_defaults() -> Result<()> {
    let coordinator = |t: &str| -> Result<String> { Ok(format!("{:?}", CoordinatorConfig::from_yaml(t)?)) };
    let agent = |t: &str| -> Result<String> { Ok(format!("{:?}", AgentConfig::from_yaml(t)?)) };
    let checked = commented_values_are_defaults("config/coordinator.yaml", &coordinator)?;
    ensure!(checked >= 10, "only {checked} commented settings found in config/coordinator.yaml");
    let checked = commented_values_are_defaults("config/agent-db1.yaml", &agent)?;
    ensure!(checked >= 3, "only {checked} commented settings found in config/agent-db1.yaml");
    let fencing =
        |t: &str| -> Result<String> { Ok(format!("{:?}", referee_fencing::config::FencingConfig::from_yaml_str(t)?)) };
    let checked = commented_values_are_defaults("fencing/fencing.example.yaml", &fencing)?;
    ensure!(checked >= 1, "no commented settings found in fencing/fencing.example.yaml");
    Ok(())
}
