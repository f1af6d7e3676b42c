//! Where a pod's cgroup lives, from its UID and QoS class: the eBPF enrollment attaches to it.
//!
//! The kubelet names pod cgroups by its cgroup driver. `systemd` (the default of kubeadm, k3s and most managed
//! clusters) nests slices whose names escape the UID's dashes as underscores; `cgroupfs` uses plain directories.
//! Guaranteed pods sit directly under `kubepods`, the others under a per-QoS child. The paths are relative to the
//! cgroup-v2 mount; `candidates` is pure and `find` only checks which candidate exists on this node.

use std::path::{Path, PathBuf};

/// The pod's QoS class as the API reports it in `status.qosClass`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// From `status.qosClass`; an absent or unknown class is taken as BestEffort, the kubelet's default.
    pub fn parse(s: Option<&str>) -> QosClass {
        match s {
            Some("Guaranteed") => QosClass::Guaranteed,
            Some("Burstable") => QosClass::Burstable,
            _ => QosClass::BestEffort,
        }
    }

    fn slice_part(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }
}

/// Every path (relative to the cgroup-v2 root) the kubelet may have given this pod, systemd driver first.
pub fn candidates(uid: &str, qos: QosClass) -> Vec<PathBuf> {
    let escaped = uid.replace('-', "_");
    let mut out = Vec::with_capacity(2);
    // systemd driver: kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice
    out.push(match qos.slice_part() {
        None => PathBuf::from(format!("kubepods.slice/kubepods-pod{escaped}.slice")),
        Some(q) => PathBuf::from(format!(
            "kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{escaped}.slice"
        )),
    });
    // cgroupfs driver: kubepods/burstable/pod<uid>
    out.push(match qos.slice_part() {
        None => PathBuf::from(format!("kubepods/pod{uid}")),
        Some(q) => PathBuf::from(format!("kubepods/{q}/pod{uid}")),
    });
    out
}

/// The first candidate that exists under `cgroup_root`, as an absolute path.
pub fn find(cgroup_root: &Path, uid: &str, qos: QosClass) -> Option<PathBuf> {
    candidates(uid, qos)
        .into_iter()
        .map(|rel| cgroup_root.join(rel))
        .find(|p| p.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b8e6b5c-91f0-4d6e-8a0e-6f1d2b3c4d5e";

    #[test]
    fn systemd_and_cgroupfs_names_per_qos() {
        assert_eq!(
            candidates(UID, QosClass::Burstable),
            vec![
                PathBuf::from(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b8e6b5c_91f0_4d6e_8a0e_6f1d2b3c4d5e.slice"
                ),
                PathBuf::from("kubepods/burstable/pod0b8e6b5c-91f0-4d6e-8a0e-6f1d2b3c4d5e"),
            ]
        );
        assert_eq!(
            candidates(UID, QosClass::BestEffort)[0],
            PathBuf::from(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b8e6b5c_91f0_4d6e_8a0e_6f1d2b3c4d5e.slice"
            )
        );
        assert_eq!(
            candidates(UID, QosClass::Guaranteed),
            vec![
                PathBuf::from(
                    "kubepods.slice/kubepods-pod0b8e6b5c_91f0_4d6e_8a0e_6f1d2b3c4d5e.slice"
                ),
                PathBuf::from("kubepods/pod0b8e6b5c-91f0-4d6e-8a0e-6f1d2b3c4d5e"),
            ]
        );
    }

    #[test]
    fn qos_parse_defaults_to_best_effort() {
        assert_eq!(QosClass::parse(Some("Guaranteed")), QosClass::Guaranteed);
        assert_eq!(QosClass::parse(Some("Burstable")), QosClass::Burstable);
        assert_eq!(QosClass::parse(Some("BestEffort")), QosClass::BestEffort);
        assert_eq!(QosClass::parse(None), QosClass::BestEffort);
        assert_eq!(QosClass::parse(Some("weird")), QosClass::BestEffort);
    }

    #[test]
    fn find_picks_the_existing_driver_layout() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(find(root.path(), UID, QosClass::Burstable), None);
        let cgroupfs = root
            .path()
            .join("kubepods/burstable")
            .join(format!("pod{UID}"));
        std::fs::create_dir_all(&cgroupfs).unwrap();
        assert_eq!(find(root.path(), UID, QosClass::Burstable), Some(cgroupfs));
        // A Guaranteed pod with the same UID is not looked for under the burstable slice.
        assert_eq!(find(root.path(), UID, QosClass::Guaranteed), None);
    }
}
