//! Dynamic flow logs, as Cilium's dynamic Hubble exporter runs them: several named exports, each a rotated file of
//! Hubble JSON lines (`{"flow": ..., "node_name": ..., "time": ...}`, what `hubble observe -o json` prints) chosen
//! by its own include/exclude filters, masked by its field mask, stopped at its end time. The configuration file
//! (`flow_logs_config`) is re-read when it changes, without a restart; a bad change is logged with its file, place
//! and reason, and the running exports carry on unchanged.
//!
//! Conversion, filtering and writing happen on one writer thread fed by a bounded channel: a full channel counts
//! the record as dropped rather than slowing the data path.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, SystemTime};

use crate::field_mask::FieldMask;
use crate::flow::{FlowLog, FlowRecord, FlowTap};
use crate::flow_export::RotatingFile;
use crate::flow_logs_config::{FlowLogExport, FlowLogsConfigError, parse};
use crate::hubble::NodeInfo;
use crate::hubble::flow::Flow;

const QUEUE: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum FlowLogsError {
    #[error(
        "flow-log config {path}: {source}; check the path given to --hubble-flowlogs-config-path"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(#[from] FlowLogsConfigError),
    #[error("flow logs: cannot start a thread: {0}")]
    Thread(std::io::Error),
}

#[derive(Debug, Default)]
pub struct FlowLogCounters {
    /// Lines written, over every export.
    pub written: AtomicU64,
    /// Records lost to a full queue, and lines lost to write errors.
    pub dropped: AtomicU64,
    /// Configuration changes taken.
    pub reloads: AtomicU64,
    /// Configuration changes refused (the previous one kept running).
    pub reload_errors: AtomicU64,
}

#[derive(Debug)]
enum Msg {
    Record(Arc<FlowRecord>),
    Config(Vec<FlowLogExport>),
}

/// The running flow logs.
#[derive(Debug)]
pub struct FlowLogs {
    tx: SyncSender<Msg>,
    pub counters: Arc<FlowLogCounters>,
}

impl FlowLogs {
    /// Reads and checks the configuration (an error stops the start, naming the file, place and reason), starts the
    /// writer, and re-reads the file every `reload` for changes.
    pub fn start(
        path: PathBuf,
        node: NodeInfo,
        reload: Duration,
    ) -> Result<Arc<Self>, FlowLogsError> {
        let text = std::fs::read(&path).map_err(|source| FlowLogsError::Read {
            path: path.clone(),
            source,
        })?;
        let exports = parse(&path, &String::from_utf8_lossy(&text))?;
        let (tx, rx) = sync_channel(QUEUE);
        let counters = Arc::new(FlowLogCounters::default());
        let mut writer = Writer::new(node);
        writer.configure(exports);
        let c = counters.clone();
        std::thread::Builder::new()
            .name("flow-logs".into())
            .spawn(move || writer.run(rx, &c))
            .map_err(FlowLogsError::Thread)?;
        let (watch_tx, c) = (tx.clone(), counters.clone());
        std::thread::Builder::new()
            .name("flow-logs-config".into())
            .spawn(move || watch(path, text, reload, watch_tx, &c))
            .map_err(FlowLogsError::Thread)?;
        Ok(Arc::new(FlowLogs { tx, counters }))
    }

    pub fn send(&self, rec: &FlowRecord) {
        let msg = Msg::Record(Arc::new(rec.clone()));
        crate::flow::offer(&self.tx, msg, &self.counters.dropped);
    }

    /// Registers with the flow log so every record is offered to every export.
    pub fn attach(self: &Arc<Self>, flows: &FlowLog) {
        let me = self.clone();
        flows.add_tap(FlowTap(Box::new(move |r| me.send(r))));
    }
}

/// Re-reads the configuration every `every`; a changed file that parses replaces the exports, one that does not is
/// logged and counted. A missing file (a ConfigMap being swapped) keeps what runs.
fn watch(
    path: PathBuf,
    mut last: Vec<u8>,
    every: Duration,
    tx: SyncSender<Msg>,
    counters: &FlowLogCounters,
) {
    loop {
        std::thread::sleep(every);
        let Ok(text) = std::fs::read(&path) else {
            continue;
        };
        if text == last {
            continue;
        }
        match parse(&path, &String::from_utf8_lossy(&text)) {
            Ok(exports) => {
                let names: Vec<String> = exports.iter().map(|e| e.name.clone()).collect();
                if tx.send(Msg::Config(exports)).is_err() {
                    return;
                }
                counters.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(path = %path.display(), ?names, "flow logs reconfigured");
            }
            Err(e) => {
                counters.reload_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!("{e}");
            }
        }
        last = text;
    }
}

/// The writer thread's state: the exports and their open files.
#[derive(Debug)]
struct Writer {
    node: NodeInfo,
    exports: Vec<(FlowLogExport, Option<RotatingFile>)>,
}

impl Writer {
    fn new(node: NodeInfo) -> Self {
        Writer {
            node,
            exports: Vec::new(),
        }
    }

    /// Replaces the exports. Files are opened for appending, so an export that stays keeps its lines.
    fn configure(&mut self, exports: Vec<FlowLogExport>) {
        self.exports = exports
            .into_iter()
            .map(|e| {
                let file = RotatingFile::open(e.rotation.clone())
                    .inspect_err(|err| tracing::error!(export = %e.name, "{err}"))
                    .ok();
                (e, file)
            })
            .collect();
    }

    fn run(mut self, rx: Receiver<Msg>, counters: &FlowLogCounters) {
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Config(exports) => self.configure(exports),
                Msg::Record(rec) => self.write(&rec, SystemTime::now(), counters),
            }
        }
    }

    fn write(&mut self, rec: &FlowRecord, now: SystemTime, counters: &FlowLogCounters) {
        let flows = crate::hubble::to_flows(rec, &self.node);
        for (export, file) in &mut self.exports {
            let Some(file) = file.as_mut().filter(|_| export.active(now)) else {
                continue;
            };
            for flow in flows.iter().filter(|f| export.selection.accepts(f)) {
                let line = export_line(flow, export.mask.as_ref(), &self.node.name);
                match file.write_line(&line) {
                    Ok(_) => counters.written.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        tracing::warn!(export = %export.name, "flow log write failed: {e}");
                        counters.dropped.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }
    }
}

/// One line as Hubble's exporter writes it; the mask applies to the flow, the line's `time` is the event's.
pub fn export_line(flow: &Flow, mask: Option<&FieldMask>, node_name: &str) -> Vec<u8> {
    let masked = mask.map(|m| m.apply(flow));
    let shown = masked.as_ref().unwrap_or(flow);
    let line = serde_json::json!({
        "flow": crate::observe_cli::flow_json(shown),
        "node_name": node_name,
        "time": crate::observe_cli::time(flow),
    });
    let mut bytes = line.to_string().into_bytes();
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{DropReason, FlowEndpoint, Verdict};

    fn record(verdict: Verdict, path: &str) -> FlowRecord {
        let a = "10.0.0.1:40000".parse().unwrap();
        let b = "10.0.0.2:80".parse().unwrap();
        let mut rec = FlowRecord::new(
            verdict,
            FlowEndpoint::new(a, 256),
            FlowEndpoint::new(b, 257),
            "HTTP",
        );
        if verdict == Verdict::Dropped {
            rec.drop_reason = Some(DropReason::PolicyDenied);
        }
        rec.l7 = Some(crate::flow::L7Info {
            http: Some(crate::flow::HttpInfo {
                method: "GET".into(),
                url: format!("http://ledger{path}"),
                protocol: "HTTP/1.1".into(),
                code: if verdict == Verdict::Dropped {
                    403
                } else {
                    200
                },
                ..Default::default()
            }),
            kafka: None,
        });
        rec
    }

    fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn each_export_gets_what_its_filters_select_masked() {
        let dir = tempfile::tempdir().unwrap();
        let (drops, masked, ended) = (
            dir.path().join("drops.log"),
            dir.path().join("masked.log"),
            dir.path().join("ended.log"),
        );
        let config = format!(
            "flowLogs:\n  - name: drops\n    filePath: {}\n    includeFilters: [{{verdict: [DROPPED]}}]\n  \
             - name: masked\n    filePath: {}\n    fieldMask: [verdict, l7.http.url]\n    excludeFilters: [{{http_path: [\"/healthz\"]}}]\n  \
             - name: ended\n    filePath: {}\n    end: \"2001-01-01T00:00:00Z\"\n",
            drops.display(),
            masked.display(),
            ended.display()
        );
        let mut w = Writer::new(NodeInfo::named("node-a"));
        w.configure(parse(std::path::Path::new("/cfg"), &config).unwrap());
        let counters = FlowLogCounters::default();
        for (v, p) in [
            (Verdict::Forwarded, "/ok"),
            (Verdict::Dropped, "/admin"),
            (Verdict::Forwarded, "/healthz"),
        ] {
            w.write(&record(v, p), SystemTime::now(), &counters);
        }
        drop(w);
        let drops = lines(&drops);
        assert!(!drops.is_empty());
        assert!(
            drops.iter().all(|l| l["flow"]["verdict"] == "DROPPED"),
            "{drops:?}"
        );
        assert!(drops.iter().all(
            |l| l["node_name"] == "node-a" && l["time"].as_str().is_some_and(|t| !t.is_empty())
        ));
        let masked = lines(&masked);
        let urls: Vec<&str> = masked
            .iter()
            .filter_map(|l| l["flow"]["l7"]["http"]["url"].as_str())
            .collect();
        assert!(
            urls.iter().any(|u| u.ends_with("/ok")) && urls.iter().any(|u| u.ends_with("/admin")),
            "{masked:?}"
        );
        assert!(
            !urls.iter().any(|u| u.ends_with("/healthz")),
            "excluded: {masked:?}"
        );
        assert!(
            masked.iter().all(|l| l["flow"].get("source").is_none()),
            "masked away: {masked:?}"
        );
        assert!(
            masked
                .iter()
                .all(|l| l["time"].as_str().is_some_and(|t| !t.is_empty())),
            "time kept"
        );
        assert!(
            lines(&ended).is_empty(),
            "an export past its end writes nothing"
        );
    }

    #[test]
    fn a_changed_file_reconfigures_and_a_bad_one_keeps_the_running_exports() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("flowlogs.yaml");
        let (one, two) = (dir.path().join("one.log"), dir.path().join("two.log"));
        let entry = |name: &str, p: &std::path::Path| {
            format!("  - name: {name}\n    filePath: {}\n", p.display())
        };
        std::fs::write(&cfg, format!("flowLogs:\n{}", entry("one", &one))).unwrap();
        let logs =
            FlowLogs::start(cfg.clone(), NodeInfo::named("n"), Duration::from_millis(50)).unwrap();
        let wait = |what: &str, ok: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !ok() {
                assert!(std::time::Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        logs.send(&record(Verdict::Forwarded, "/a"));
        wait("first export written", &|| !lines(&one).is_empty());
        std::fs::write(&cfg, "flowLogs:\n  - name: broken\n    filePth: /x\n").unwrap();
        wait("bad change refused", &|| {
            logs.counters.reload_errors.load(Ordering::Relaxed) == 1
        });
        logs.send(&record(Verdict::Forwarded, "/b"));
        wait("old export still runs", &|| lines(&one).len() >= 2);
        std::fs::write(
            &cfg,
            format!("flowLogs:\n{}{}", entry("one", &one), entry("two", &two)),
        )
        .unwrap();
        wait("good change taken", &|| {
            logs.counters.reloads.load(Ordering::Relaxed) == 1
        });
        logs.send(&record(Verdict::Forwarded, "/c"));
        wait("new export written", &|| !lines(&two).is_empty());
        assert!(lines(&one).len() >= 3, "the kept export appends");
    }

    #[test]
    fn a_bad_file_at_start_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("fl.yaml");
        std::fs::write(&cfg, "flowLogs:\n  - name: a\n").unwrap();
        let e = FlowLogs::start(cfg.clone(), NodeInfo::named("n"), Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(e.to_string().contains(&cfg.display().to_string()), "{e}");
        assert!(e.to_string().contains("flowLogs[0]"), "{e}");
        let missing = FlowLogs::start(
            dir.path().join("nope"),
            NodeInfo::named("n"),
            Duration::from_secs(1),
        )
        .err()
        .unwrap();
        assert!(
            missing
                .to_string()
                .contains("--hubble-flowlogs-config-path"),
            "{missing}"
        );
    }
}
