//! The harness itself: pods on a node reach each other through the node, real nginx answers, and nothing is left
//! behind after drop.

use std::path::Path;
use std::process::Command;

use tollgate_e2e::{Nginx, Node, require_root, require_tool};

#[test]
fn pods_talk_through_the_node_and_everything_is_cleaned_up() {
    require_root();
    let curl = require_tool("curl");
    let (node_ns, pod_ns, cgroups) = {
        let mut node = Node::new("harness").unwrap();
        let client = node.add_pod("client", "10.0.1.10").unwrap();
        let server = node.add_pod("server", "10.0.1.20").unwrap();
        let _nginx = Nginx::start(&server, 8080, 8081).unwrap();

        let out = client
            .command(&curl)
            .args(["-sS", "--max-time", "5", "http://10.0.1.20:8080/hello"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "server GET /hello\n");

        let out = client
            .command(&curl)
            .args([
                "-sS",
                "--max-time",
                "5",
                "--http2-prior-knowledge",
                "http://10.0.1.20:8081/h2",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "h2c curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "server GET /h2\n");

        // The client process ran in the pod's cgroup: a shell that prints its own cgroup proves it.
        let out = client.sh("cat /proc/self/cgroup").unwrap();
        let rel = client
            .cgroup
            .path()
            .strip_prefix("/sys/fs/cgroup/unified")
            .unwrap()
            .display()
            .to_string();
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.starts_with("0::") && l.ends_with(&rel)),
            "process not in pod cgroup {rel}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        (
            node.netns.name().to_string(),
            vec![
                client.netns.name().to_string(),
                server.netns.name().to_string(),
            ],
            vec![
                client.cgroup.path().to_path_buf(),
                server.cgroup.path().to_path_buf(),
                node.proxy_cgroup.path().to_path_buf(),
            ],
        )
    };
    let listed = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .to_string();
    for ns in std::iter::once(&node_ns).chain(pod_ns.iter()) {
        assert!(!listed.contains(ns.as_str()), "netns {ns} left behind");
    }
    for cg in cgroups {
        assert!(
            !Path::new(&cg).exists(),
            "cgroup {} left behind",
            cg.display()
        );
    }
}
