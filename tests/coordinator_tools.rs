//! `referee coordinator log dump` and `snapshot dump` as a user runs them: listings of a real
//! data directory, and clear errors with distinct exit codes for bad input.

use std::process::{Command, Output};
use std::time::Duration;

use anyhow::Result;
use referee_coordinator::config::CoordinatorConfig;
use referee_coordinator::server::Coordinator;
use referee_coordinator::snapshot::parse_snapshot_name;
use referee_testkit::{connect, output_within, wait_until, ScratchDir, DEADLINE};
use zookeeper_client as zk;

/// Runs `referee ARGS`, which must exit on its own within [`DEADLINE`].
fn referee(args: &[&str]) -> Result<Output> {
    output_within(Command::new(env!("CARGO_BIN_EXE_referee")).args(args), DEADLINE)
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs a server on `scratch/data`, configured by `set`, creates `paths` through it, and stops
/// it once `done` (polled only then) has finished.
async fn run_server(
    scratch: &ScratchDir,
    set: impl FnOnce(&mut CoordinatorConfig),
    paths: impl IntoIterator<Item = String>,
    done: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut cfg = CoordinatorConfig::new(scratch.path("data"));
    cfg.listen = listener.local_addr()?;
    set(&mut cfg);
    let coord = Coordinator::start(cfg).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let addr = listener.local_addr()?.to_string();
    let server = tokio::spawn(coord.serve(listener, async move {
        let _ = stopped.await;
    }));
    let c = connect(&addr, Duration::from_secs(10)).await?;
    let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    for path in paths {
        c.create(&path, b"v", &opts).await?;
    }
    drop(c);
    done.await?;
    let _ = stop.send(());
    server.await??;
    Ok(())
}

/// A data directory holding `/tool0..n`, a snapshot, and the log after it, of a stopped server.
async fn data_dir(n: usize) -> Result<ScratchDir> {
    let scratch = ScratchDir::new("coord-tools")?;
    let snapshots = scratch.path("data").join("snapshots");
    // Snapshots are written in the background: stop only once one is finished.
    let finished = wait_until(DEADLINE, "a finished snapshot", || {
        std::fs::read_dir(&snapshots).is_ok_and(|mut d| {
            d.any(|e| e.is_ok_and(|e| e.file_name().to_str().and_then(parse_snapshot_name).is_some()))
        })
    });
    run_server(&scratch, |cfg| cfg.snapshot_every_txns = 10, (0..n).map(|i| format!("/tool{i}")), finished).await?;
    Ok(scratch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_and_snapshot_dumps_list_a_data_directory() -> Result<()> {
    let scratch = data_dir(25).await?;
    let dir = scratch.path("data");
    let out = referee(&["coordinator", "log", "dump", dir.to_str().unwrap()])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("data directory") && stdout.contains("summary:"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.contains("create") && l.trim_end().ends_with("/tool24")),
        "the last create is listed with its path:\n{stdout}"
    );

    let out = referee(&["coordinator", "snapshot", "dump", dir.to_str().unwrap()])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let first = stdout.lines().next().unwrap_or_default();
    assert!(first.starts_with("snapshot-") && first.contains("znodes"), "{stdout}");
    let file = dir.join("snapshots").join(first.split(':').next().unwrap());
    let out = referee(&["coordinator", "snapshot", "dump", file.to_str().unwrap()])?;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("  /zookeeper  ") && stdout.contains("summary:"), "{stdout}");

    // A damaged snapshot: listed as damaged, exit 1.
    let mut bytes = std::fs::read(&file)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&file, bytes)?;
    let out = referee(&["coordinator", "snapshot", "dump", file.to_str().unwrap()])?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("checksum") && stderr.contains(file.to_str().unwrap()), "{stderr}");
    Ok(())
}

/// The data directory of a server that was started with the default `snapshot_every_txns`,
/// took a few writes and was stopped: a healthy directory that holds no snapshot yet.
async fn data_dir_without_snapshots() -> Result<ScratchDir> {
    let scratch = ScratchDir::new("coord-tools-fresh")?;
    let default = |cfg: &mut CoordinatorConfig| {
        assert_eq!(cfg.snapshot_every_txns, 100_000, "the default is what this test is about");
    };
    run_server(&scratch, default, ["/fresh".to_string()], async { Ok(()) }).await?;
    Ok(scratch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_dump_of_a_data_directory_without_snapshots_says_so_and_exits_0() -> Result<()> {
    let scratch = data_dir_without_snapshots().await?;
    let dir = scratch.path("data");
    // Given the data directory or its snapshots/ directory: both are what the tool asks for.
    for path in [dir.clone(), dir.join("snapshots")] {
        let out = referee(&["coordinator", "snapshot", "dump", path.to_str().unwrap()])?;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{}: stdout: {stdout}\nstderr: {stderr}", path.display());
        assert!(
            stdout.contains("no snapshot yet") && stdout.contains("snapshot_every_txns"),
            "{}: says there is no snapshot yet and when the first comes: {stdout}",
            path.display()
        );
    }
    // A directory that is no coordinator's is still bad input.
    let other = ScratchDir::new("coord-tools-other")?;
    let out = referee(&["coordinator", "snapshot", "dump", other.0.to_str().unwrap()])?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("give a coordinator data directory"), "{stderr}");
    Ok(())
}

#[test]
fn bad_input_gets_a_clear_error_and_a_non_zero_exit() -> Result<()> {
    let scratch = ScratchDir::new("coord-tools-bad")?;
    let out = referee(&["coordinator", "log", "dump", scratch.0.to_str().unwrap()])?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("neither a coordinator data directory"), "{stderr}");

    let out = referee(&["coordinator", "snapshot", "dump", scratch.path("missing").to_str().unwrap()])?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("missing"), "{stderr}");

    let out = referee(&["coordinator"])?;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--config"), "{stderr}");
    Ok(())
}
