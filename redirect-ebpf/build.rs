//! Compiles the C eBPF programs in bpf/ with clang-19 into OUT_DIR, and runs bpf/layout.c on the host so the layout
//! test can compare the C structs in bpf/lib/maps.h with src/maps.rs.
//!
//! Headers: the kernel uapi headers (package linux-libc-dev) and libbpf's bpf_helpers.h (package libbpf-dev); no
//! vmlinux.h, so bpftool is not needed at build time.

use std::path::{Path, PathBuf};
use std::process::Command;

const PROGRAMS: &[&str] = &[
    "sock_addr",
    "sockops",
    "sockopt",
    "tc_ingress",
    "udp_egress",
];

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bpf = manifest.join("bpf");
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=TOLLGATE_CLANG");

    let clang = std::env::var("TOLLGATE_CLANG").unwrap_or_else(|_| "clang-19".to_string());
    if Command::new(&clang).arg("--version").output().is_err() {
        fail(&format!(
            "`{clang}` not found: the eBPF programs in redirect-ebpf/bpf are C and need clang 19. \
             Install it with `apt-get install -y clang-19 llvm-19` (or run `./dev setup`)."
        ));
    }
    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        fail(
            "/usr/include/bpf/bpf_helpers.h is missing: install libbpf's headers with `apt-get install -y libbpf-dev`.",
        );
    }
    let multiarch = multiarch_include();

    for prog in PROGRAMS {
        let src = bpf.join(format!("{prog}.c"));
        let obj = out.join(format!("{prog}.o"));
        run(Command::new(&clang)
            .args([
                "-O2",
                "-g",
                "-target",
                "bpf",
                "-D__TARGET_ARCH_x86",
                "-Wall",
                "-Werror",
            ])
            .arg("-I")
            .arg(bpf.join("lib"))
            .arg("-I")
            .arg(&multiarch)
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj));
    }

    // The same header compiled for the host: sizes and offsets as the C compiler lays them out.
    let layout_bin = out.join("layout");
    run(Command::new(&clang)
        .args(["-O0", "-Wall", "-Werror"])
        .arg("-I")
        .arg(bpf.join("lib"))
        .arg("-I")
        .arg(&multiarch)
        .arg(bpf.join("layout.c"))
        .arg("-o")
        .arg(&layout_bin));
    let output = Command::new(&layout_bin).output().unwrap_or_else(|e| {
        fail(&format!("running {}: {e}", layout_bin.display()));
    });
    if !output.status.success() {
        fail(&format!(
            "{} failed: {}",
            layout_bin.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    std::fs::write(out.join("layout_c.rs"), &output.stdout)
        .expect("writing layout_c.rs to OUT_DIR");
}

/// The directory holding `asm/types.h` for this host (Debian multiarch layout).
fn multiarch_include() -> PathBuf {
    for dir in [
        "/usr/include/x86_64-linux-gnu",
        "/usr/include/aarch64-linux-gnu",
        "/usr/include",
    ] {
        if Path::new(dir).join("asm/types.h").exists() {
            return PathBuf::from(dir);
        }
    }
    fail(
        "asm/types.h not found: install the kernel uapi headers with `apt-get install -y linux-libc-dev`.",
    );
}

fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    let output = cmd
        .output()
        .unwrap_or_else(|e| fail(&format!("{shown}: {e}")));
    if !output.status.success() {
        fail(&format!(
            "{shown} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: redirect-ebpf build: {message}");
    panic!("redirect-ebpf build: {message}");
}
