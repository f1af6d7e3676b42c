//! JSON-lines export of flow records to a file with size-based rotation, for log shippers (Fluent Bit, Vector,
//! ...): `path` is the live file, `path.1` the newest rotated one, up to `path.<keep>`. Writes happen on a
//! dedicated thread fed by a bounded channel; a full channel counts the record as dropped instead of blocking the
//! data path.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use crate::flow::{FlowLog, FlowRecord, FlowTap};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "flow export {path}: {source}; check that the directory exists and is writable (--flow-export)"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--flow-export-max-bytes must be at least 1024 (got {0})")]
    TooSmall(u64),
}

/// Rotation settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub path: PathBuf,
    /// Rotate before a write would make the live file larger than this.
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` .. `path.<keep>`); 0 = the live file is truncated instead.
    pub keep: u32,
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl Rotation {
    /// Whether writing `next` bytes to a live file of `size` bytes must rotate first. A line larger than the limit
    /// still goes into a fresh file rather than being lost.
    pub fn must_rotate(&self, size: u64, next: u64) -> bool {
        size > 0 && size + next > self.max_bytes
    }

    /// The renames that rotate, in the order to perform them (oldest first, so nothing is overwritten).
    pub fn renames(&self) -> Vec<(PathBuf, PathBuf)> {
        let mut out = Vec::new();
        if self.keep == 0 {
            return out;
        }
        for n in (1..self.keep).rev() {
            out.push((numbered(&self.path, n), numbered(&self.path, n + 1)));
        }
        out.push((self.path.clone(), numbered(&self.path, 1)));
        out
    }

    fn rotate(&self) -> std::io::Result<()> {
        for (from, to) in self.renames() {
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Counters for the exporter.
#[derive(Debug, Default)]
pub struct ExportCounters {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub rotations: AtomicU64,
}

/// The running exporter.
#[derive(Debug)]
pub struct FlowExport {
    tx: SyncSender<Arc<FlowRecord>>,
    pub counters: Arc<ExportCounters>,
}

const QUEUE: usize = 65_536;

impl FlowExport {
    /// Opens (appends to) the live file and starts the writer thread.
    pub fn start(rotation: Rotation) -> Result<Self, ExportError> {
        if rotation.max_bytes < 1024 {
            return Err(ExportError::TooSmall(rotation.max_bytes));
        }
        let out = RotatingFile::open(rotation)?;
        let (tx, rx) = sync_channel(QUEUE);
        let counters = Arc::new(ExportCounters::default());
        let c = counters.clone();
        std::thread::Builder::new()
            .name("flow-export".into())
            .spawn(move || write_loop(out, rx, &c))
            .map_err(|source| ExportError::Io {
                path: PathBuf::from("<thread>"),
                source,
            })?;
        Ok(FlowExport { tx, counters })
    }

    pub fn send(&self, rec: &FlowRecord) {
        crate::flow::offer(&self.tx, Arc::new(rec.clone()), &self.counters.dropped);
    }

    /// Registers with the flow log so every record is exported.
    pub fn attach(self: &Arc<Self>, flows: &FlowLog) {
        let me = self.clone();
        flows.add_tap(FlowTap(Box::new(move |r| me.send(r))));
    }
}

fn open(path: &Path) -> Result<(std::fs::File, u64), ExportError> {
    let err = |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    let size = f.metadata().map_err(err)?.len();
    Ok((f, size))
}

/// A live file and its rotation: lines are appended, the file rotated first when a line would take it past the
/// size limit. Shared by the static export and every dynamic flow log.
#[derive(Debug)]
pub struct RotatingFile {
    rotation: Rotation,
    file: std::fs::File,
    size: u64,
}

impl RotatingFile {
    pub fn open(rotation: Rotation) -> Result<Self, ExportError> {
        let (file, size) = open(&rotation.path)?;
        Ok(RotatingFile {
            rotation,
            file,
            size,
        })
    }

    pub fn path(&self) -> &Path {
        &self.rotation.path
    }

    /// Appends one line (its newline included); `Ok(true)` when the file was rotated first.
    pub fn write_line(&mut self, line: &[u8]) -> std::io::Result<bool> {
        let mut rotated = false;
        if self.rotation.must_rotate(self.size, line.len() as u64) {
            let reopened = if self.rotation.keep == 0 {
                std::fs::File::create(&self.rotation.path)
            } else {
                self.rotation
                    .rotate()
                    .and_then(|()| std::fs::File::create(&self.rotation.path))
            };
            match reopened {
                Ok(f) => {
                    self.file = f;
                    self.size = 0;
                    rotated = true;
                }
                Err(e) => {
                    tracing::warn!(path = %self.rotation.path.display(), "flow export rotation failed: {e}");
                }
            }
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(rotated)
    }
}

fn write_loop(mut out: RotatingFile, rx: Receiver<Arc<FlowRecord>>, counters: &ExportCounters) {
    while let Ok(rec) = rx.recv() {
        let mut line = match serde_json::to_vec(&*rec) {
            Ok(l) => l,
            Err(_) => continue,
        };
        line.push(b'\n');
        match out.write_line(&line) {
            Ok(rotated) => {
                if rotated {
                    counters.rotations.fetch_add(1, Ordering::Relaxed);
                }
                counters.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %out.path().display(), "flow export write failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{FlowEndpoint, Verdict};

    #[test]
    fn rotation_decisions() {
        let r = Rotation {
            path: "/x/f.json".into(),
            max_bytes: 100,
            keep: 3,
        };
        assert!(!r.must_rotate(0, 500), "an empty file takes any line");
        assert!(!r.must_rotate(50, 50));
        assert!(r.must_rotate(50, 51));
        assert_eq!(
            r.renames(),
            vec![
                ("/x/f.json.2".into(), "/x/f.json.3".into()),
                ("/x/f.json.1".into(), "/x/f.json.2".into()),
                ("/x/f.json".into(), "/x/f.json.1".into()),
            ]
        );
        let none = Rotation { keep: 0, ..r };
        assert!(none.renames().is_empty());
    }

    #[test]
    fn exports_rotate_and_keep_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.json");
        let exp = FlowExport::start(Rotation {
            path: path.clone(),
            max_bytes: 2048,
            keep: 2,
        })
        .unwrap();
        let a = "10.0.0.1:1".parse().unwrap();
        for _ in 0..100 {
            exp.send(&FlowRecord::new(
                Verdict::Forwarded,
                FlowEndpoint::new(a, 256),
                FlowEndpoint::new(a, 257),
                "HTTP",
            ));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while exp.counters.written.load(Ordering::Relaxed) < 100 {
            assert!(std::time::Instant::now() < deadline, "exporter stalled");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut lines = 0;
        for p in [path.clone(), numbered(&path, 1), numbered(&path, 2)] {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(
                text.len() as u64 <= 2048,
                "{} is {} bytes",
                p.display(),
                text.len()
            );
            for l in text.lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(v["verdict"], "FORWARDED");
                lines += 1;
            }
        }
        assert!(
            !numbered(&path, 3).exists(),
            "only 2 rotated files are kept"
        );
        assert!(exp.counters.rotations.load(Ordering::Relaxed) >= 3);
        // The oldest records were rotated away; the newest are all here.
        assert!(lines < 100 && lines > 10, "{lines}");
        assert_eq!(exp.counters.dropped.load(Ordering::Relaxed), 0);
    }
}
