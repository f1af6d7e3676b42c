//! The dynamic flow-log configuration (`--hubble-flowlogs-config-path`), in the shape of Cilium's dynamic Hubble
//! exporter: a YAML file with a `flowLogs` list, each entry a named export with its own file, include and exclude
//! filters (Hubble `FlowFilter`s, field names as the Observer API's JSON spells them), a field mask and an optional
//! end time. Pure: parsing and compiling only; `flow_logs` runs the exports.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

use crate::field_mask::FieldMask;
use crate::flow_export::Rotation;
use crate::flow_filter::{Selection, verdict_by_name};
use crate::hubble::flow::{EventTypeFilter, FlowFilter, TrafficDirection};

/// Cilium's defaults: rotate at 10 MB, keep 5 rotated files.
const DEFAULT_MAX_SIZE_MB: u64 = 10;
const DEFAULT_MAX_BACKUPS: u32 = 5;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "flow-log config {file}: {path}: {reason}; the previous flow-log configuration stays in force"
)]
pub struct FlowLogsConfigError {
    pub file: PathBuf,
    /// Where in the file, e.g. `flowLogs[1].includeFilters[0].verdict[0]`.
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(rename = "flowLogs", default)]
    flow_logs: Vec<FlowLogSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FlowLogSpec {
    name: String,
    file_path: PathBuf,
    #[serde(default)]
    field_mask: Vec<String>,
    #[serde(default)]
    include_filters: Vec<FilterSpec>,
    #[serde(default)]
    exclude_filters: Vec<FilterSpec>,
    end: Option<String>,
    file_max_size_mb: Option<u64>,
    file_max_backups: Option<u32>,
}

/// A `FlowFilter` as Hubble's JSON writes it (snake_case field names; lowerCamelCase accepted too).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterSpec {
    #[serde(default, alias = "sourceIp")]
    source_ip: Vec<String>,
    #[serde(default, alias = "sourcePod")]
    source_pod: Vec<String>,
    #[serde(default, alias = "sourceLabel")]
    source_label: Vec<String>,
    #[serde(default, alias = "sourcePort")]
    source_port: Vec<String>,
    #[serde(default, alias = "destinationIp")]
    destination_ip: Vec<String>,
    #[serde(default, alias = "destinationPod")]
    destination_pod: Vec<String>,
    #[serde(default, alias = "destinationLabel")]
    destination_label: Vec<String>,
    #[serde(default, alias = "destinationPort")]
    destination_port: Vec<String>,
    #[serde(default)]
    verdict: Vec<String>,
    #[serde(default)]
    protocol: Vec<String>,
    #[serde(default, alias = "dnsQuery")]
    dns_query: Vec<String>,
    #[serde(default, alias = "httpMethod")]
    http_method: Vec<String>,
    #[serde(default, alias = "httpPath")]
    http_path: Vec<String>,
    #[serde(default, alias = "httpStatusCode")]
    http_status_code: Vec<String>,
    #[serde(default, alias = "trafficDirection")]
    traffic_direction: Vec<String>,
    #[serde(default, alias = "eventType")]
    event_type: Vec<EventTypeSpec>,
    #[serde(default)]
    reply: Vec<bool>,
    #[serde(default)]
    uuid: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventTypeSpec {
    #[serde(rename = "type")]
    kind: i32,
    #[serde(default, alias = "matchSubType")]
    match_sub_type: bool,
    #[serde(default, alias = "subType")]
    sub_type: i32,
}

/// One export, ready to run.
#[derive(Debug, Clone)]
pub struct FlowLogExport {
    pub name: String,
    pub rotation: Rotation,
    pub selection: Selection,
    pub mask: Option<FieldMask>,
    /// Nothing is written after this time.
    pub end: Option<SystemTime>,
}

impl FlowLogExport {
    pub fn active(&self, now: SystemTime) -> bool {
        self.end.is_none_or(|end| now < end)
    }
}

/// Parses and checks a whole configuration: every error names the file, the place in it, and why.
pub fn parse(file: &Path, text: &str) -> Result<Vec<FlowLogExport>, FlowLogsConfigError> {
    let err = |path: String, reason: String| FlowLogsConfigError {
        file: file.to_path_buf(),
        path,
        reason,
    };
    let parsed: ConfigFile = if text.trim().is_empty() {
        ConfigFile { flow_logs: vec![] }
    } else {
        serde_yaml::from_str(text).map_err(|e| {
            let (path, reason) = split_yaml_error(&e.to_string());
            err(path, reason)
        })?
    };
    let mut out: Vec<FlowLogExport> = Vec::new();
    for (i, spec) in parsed.flow_logs.into_iter().enumerate() {
        let at = format!("flowLogs[{i}]");
        let export = compile(spec, &at).map_err(|(path, reason)| err(path, reason))?;
        if let Some(j) = out.iter().position(|o| o.name == export.name) {
            let why = format!("name {:?} is already used by flowLogs[{j}]", export.name);
            return Err(err(format!("{at}.name"), why));
        }
        if let Some(j) = out
            .iter()
            .position(|o| o.rotation.path == export.rotation.path)
        {
            let why = format!(
                "file {} is already written by flowLogs[{j}]",
                export.rotation.path.display()
            );
            return Err(err(format!("{at}.filePath"), why));
        }
        out.push(export);
    }
    Ok(out)
}

/// serde_yaml says `flowLogs[0].includeFilters[0]: unknown field ...`; the part before `: ` is the path when it
/// looks like one.
fn split_yaml_error(msg: &str) -> (String, String) {
    match msg.split_once(": ") {
        Some((path, reason)) if !path.contains(' ') => (path.to_string(), reason.to_string()),
        _ => ("(document)".to_string(), msg.to_string()),
    }
}

fn compile(spec: FlowLogSpec, at: &str) -> Result<FlowLogExport, (String, String)> {
    if spec.name.trim().is_empty() {
        return Err((format!("{at}.name"), "must not be empty".into()));
    }
    if spec.file_path.as_os_str().is_empty() || !spec.file_path.is_absolute() {
        let why = "must be an absolute file path".to_string();
        return Err((format!("{at}.filePath"), why));
    }
    let include = filters(&spec.include_filters, &format!("{at}.includeFilters"))?;
    let exclude = filters(&spec.exclude_filters, &format!("{at}.excludeFilters"))?;
    let selection = Selection::compile(&include, &exclude)
        .map_err(|e| (format!("{at}.includeFilters/excludeFilters"), e.to_string()))?;
    let mask = FieldMask::compile(&spec.field_mask)
        .map_err(|e| (format!("{at}.fieldMask"), e.to_string()))?;
    let end = spec
        .end
        .as_deref()
        .map(|t| {
            end_time(t).ok_or_else(|| {
                (
                    format!("{at}.end"),
                    format!("{t:?} is not an RFC 3339 time"),
                )
            })
        })
        .transpose()?;
    let max_mb = spec.file_max_size_mb.unwrap_or(DEFAULT_MAX_SIZE_MB);
    if max_mb == 0 {
        return Err((format!("{at}.fileMaxSizeMb"), "must be at least 1".into()));
    }
    Ok(FlowLogExport {
        name: spec.name,
        rotation: Rotation {
            path: spec.file_path,
            max_bytes: max_mb * 1_000_000,
            keep: spec.file_max_backups.unwrap_or(DEFAULT_MAX_BACKUPS),
        },
        selection,
        mask,
        end,
    })
}

fn end_time(text: &str) -> Option<SystemTime> {
    let t = crate::hubble::timestamp(text)?;
    let secs = u64::try_from(t.seconds).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::new(secs, u32::try_from(t.nanos).ok()?))
}

fn filters(specs: &[FilterSpec], at: &str) -> Result<Vec<FlowFilter>, (String, String)> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| flow_filter(s, &format!("{at}[{i}]")))
        .collect()
}

fn flow_filter(s: &FilterSpec, at: &str) -> Result<FlowFilter, (String, String)> {
    let verdict = named(&s.verdict, &format!("{at}.verdict"), |v| {
        verdict_by_name(v).map(|v| v as i32)
    })?;
    let traffic_direction = named(
        &s.traffic_direction,
        &format!("{at}.traffic_direction"),
        |d| TrafficDirection::from_str_name(&d.to_ascii_uppercase()).map(|d| d as i32),
    )?;
    Ok(FlowFilter {
        source_ip: s.source_ip.clone(),
        source_pod: s.source_pod.clone(),
        source_label: s.source_label.clone(),
        source_port: s.source_port.clone(),
        destination_ip: s.destination_ip.clone(),
        destination_pod: s.destination_pod.clone(),
        destination_label: s.destination_label.clone(),
        destination_port: s.destination_port.clone(),
        verdict,
        protocol: s.protocol.clone(),
        dns_query: s.dns_query.clone(),
        http_method: s.http_method.clone(),
        http_path: s.http_path.clone(),
        http_status_code: s.http_status_code.clone(),
        traffic_direction,
        event_type: s
            .event_type
            .iter()
            .map(|e| EventTypeFilter {
                r#type: e.kind,
                match_sub_type: e.match_sub_type,
                sub_type: e.sub_type,
            })
            .collect(),
        reply: s.reply.clone(),
        uuid: s.uuid.clone(),
    })
}

/// Enum names to their numbers; the error names the element that is not a known name.
fn named(
    names: &[String],
    at: &str,
    by_name: impl Fn(&str) -> Option<i32>,
) -> Result<Vec<i32>, (String, String)> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            by_name(n).ok_or_else(|| (format!("{at}[{i}]"), format!("{n:?} is not a known value")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
flowLogs:
  - name: drops
    filePath: /var/log/tollgate/drops.log
    includeFilters:
      - verdict: [DROPPED]
    fileMaxSizeMb: 1
    fileMaxBackups: 2
  - name: ledger-http
    filePath: /var/log/tollgate/ledger.log
    fieldMask: [time, verdict, source.pod_name, l7.http.url]
    includeFilters:
      - destination_pod: ["default/ledger"]
        event_type: [{type: 129}]
    excludeFilters:
      - http_path: ["/healthz"]
    end: "2030-01-01T00:00:00Z"
"#;

    #[test]
    fn cilium_shaped_config_compiles() {
        let exports = parse(Path::new("/etc/fl.yaml"), GOOD).unwrap();
        assert_eq!(exports.len(), 2);
        assert_eq!(exports[0].name, "drops");
        assert_eq!(exports[0].rotation.max_bytes, 1_000_000);
        assert_eq!(exports[0].rotation.keep, 2);
        assert!(exports[0].mask.is_none());
        assert_eq!(exports[1].rotation.keep, DEFAULT_MAX_BACKUPS);
        assert!(exports[1].mask.is_some());
        let end = exports[1].end.unwrap();
        assert!(exports[1].active(end - std::time::Duration::from_secs(1)));
        assert!(!exports[1].active(end));
        assert!(parse(Path::new("/x"), "").unwrap().is_empty());
    }

    fn error(text: &str) -> FlowLogsConfigError {
        parse(Path::new("/etc/fl.yaml"), text).unwrap_err()
    }

    #[test]
    fn errors_name_the_file_the_place_and_the_reason() {
        let e = error(
            "flowLogs:\n  - name: a\n    filePath: /a\n    includeFilters:\n      - verdicts: [DROPPED]\n",
        );
        assert_eq!(e.path, "flowLogs[0].includeFilters[0]", "{e}");
        assert!(e.reason.contains("unknown field `verdicts`"), "{e}");
        assert!(
            e.to_string().starts_with("flow-log config /etc/fl.yaml: "),
            "{e}"
        );
        assert!(
            e.to_string()
                .ends_with("the previous flow-log configuration stays in force")
        );

        let e = error(
            "flowLogs:\n  - name: a\n    filePath: /a\n    includeFilters:\n      - verdict: [DROPPED, MAYBE]\n",
        );
        assert_eq!(e.path, "flowLogs[0].includeFilters[0].verdict[1]");
        assert!(e.reason.contains("\"MAYBE\""), "{e}");

        let e = error("flowLogs:\n  - name: a\n    filePath: /a\n  - name: a\n    filePath: /b\n");
        assert_eq!(e.path, "flowLogs[1].name");
        let e = error("flowLogs:\n  - name: a\n    filePath: /a\n  - name: b\n    filePath: /a\n");
        assert_eq!(e.path, "flowLogs[1].filePath");
        let e = error("flowLogs:\n  - name: a\n    filePath: relative.log\n");
        assert_eq!(e.path, "flowLogs[0].filePath");
        let e = error("flowLogs:\n  - name: a\n    filePath: /a\n    fieldMask: [nonsense]\n");
        assert_eq!(e.path, "flowLogs[0].fieldMask");
        let e = error("flowLogs:\n  - name: a\n    filePath: /a\n    end: tomorrow\n");
        assert_eq!(e.path, "flowLogs[0].end");
        let e = error(
            "flowLogs:\n  - name: a\n    filePath: /a\n    includeFilters:\n      - source_ip: [not-an-ip]\n",
        );
        assert_eq!(e.path, "flowLogs[0].includeFilters/excludeFilters");
    }

    #[test]
    fn camel_case_filter_names_are_accepted() {
        let text = "flowLogs:\n  - name: a\n    filePath: /a\n    includeFilters:\n      - sourcePod: [default/]\n        trafficDirection: [ingress]\n";
        assert_eq!(parse(Path::new("/x"), text).unwrap().len(), 1);
    }
}
