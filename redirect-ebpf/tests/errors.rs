//! The errors a misconfigured node produces name the missing piece and the fix. Needs root (the privilege check
//! runs first and would otherwise be the error under test).

use std::path::Path;

use redirect_ebpf::{ProxyConfig, Redirect, RedirectError, RedirectOptions};
use tollgate_e2e::{Cgroup, require_root};

mod common;
use common::PinRoot;

#[test]
fn a_pin_root_outside_bpffs_names_the_mount_command() {
    require_root();
    let dir = std::env::temp_dir().join(format!("tollgate-not-bpffs-{}", std::process::id()));
    let err = Redirect::load(RedirectOptions {
        pin_root: dir.join("tollgate"),
        proxy: ProxyConfig::default(),
    })
    .unwrap_err();
    assert!(
        matches!(err, RedirectError::BpffsNotMounted { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("mount -t bpf bpf /sys/fs/bpf"), "{msg}");
    assert!(!dir.exists(), "nothing may be created outside bpffs");
}

#[test]
fn missing_cgroups_and_interfaces_are_named() {
    require_root();
    let root = PinRoot::new("errors");
    let mut redirect = Redirect::load(RedirectOptions {
        pin_root: root.0.clone(),
        proxy: ProxyConfig::default(),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let endpoint = redirect_ebpf::EndpointInfo {
        identity: 300,
        ipv4: None,
        ipv6: None,
    };

    let gone = Path::new("/sys/fs/cgroup/unified/tollgate-test/does-not-exist");
    let err = redirect.enroll(gone, endpoint).unwrap_err();
    assert!(
        matches!(err, RedirectError::CgroupMissing { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("does-not-exist"), "{err}");

    // A directory that is not on cgroup2 (the v1 hierarchy, or any other filesystem).
    let err = redirect
        .enroll(&std::env::temp_dir(), endpoint)
        .unwrap_err();
    assert!(err.to_string().contains("is not cgroup2"), "{err}");

    let err = redirect.attach_tc("tgnosuchif0", None).unwrap_err();
    assert!(
        matches!(err, RedirectError::InterfaceMissing { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("tgnosuchif0"), "{err}");

    // A real cgroup works, and unenrolling twice is harmless.
    let cg = Cgroup::new("errors").unwrap();
    redirect.enroll(cg.path(), endpoint).unwrap();
    redirect.unenroll(cg.path()).unwrap();
    redirect.unenroll(cg.path()).unwrap();
}

#[test]
fn bad_policy_ranges_are_refused_before_touching_the_map() {
    require_root();
    let root = PinRoot::new("ranges");
    let mut redirect = Redirect::load(RedirectOptions {
        pin_root: root.0.clone(),
        proxy: ProxyConfig::default(),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let bad = redirect_ebpf::L7Redirect {
        identity: 300,
        direction: redirect_ebpf::Direction::Ingress,
        port: 1,
        end_port: 65535,
        protocol: redirect_ebpf::Protocol::Tcp,
        kind: redirect_ebpf::L7Kind::Http,
        proxy_port: None,
    };
    let err = redirect.policy_sync(&[bad]).unwrap_err();
    assert!(matches!(err, RedirectError::Invalid(_)), "{err:?}");
    assert_eq!(redirect.policy_len(), 0);
}

#[test]
fn an_unprivileged_process_is_told_to_run_as_root() {
    require_root();
    let root = PinRoot::new("unpriv");
    let probe = env!("CARGO_BIN_EXE_redirect-probe");
    // nobody, no capabilities at all.
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(probe)
        .arg("load")
        .arg(&root.0)
        .output()
        .expect("setpriv (util-linux) is needed for this test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("load_error="))
        .unwrap_or_else(|| {
            panic!(
                "expected a load error, got: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(line.contains("CAP_BPF and CAP_NET_ADMIN"), "{line}");
    assert!(line.contains("run the proxy as root"), "{line}");
    assert!(!root.0.exists(), "nothing pinned by a refused load");

    // The same binary as root loads fine: the error above is about privileges, not the environment.
    let out = std::process::Command::new(probe)
        .arg("load")
        .arg(&root.0)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "loaded");
}
